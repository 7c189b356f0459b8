"""Full recognizer training step: clips/s, peak memory, MFU; HF VideoMAE as the peer.

Thin wrapper over ``microact bench train`` (same options), e.g.
``python bench/train.py --preset videomae_b_k710_frame_coarse_tsn --precision bf16 --steps 10``.
"""
import sys

from microact.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
