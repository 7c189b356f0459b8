"""Training data pipeline throughput: raw vs cropped clips, ours vs decord + numpy.

Thin wrapper over ``microact bench data`` (same options), e.g. ``python bench/dataloader.py --workers 0 2``.
"""
import sys

from microact.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
