"""ViT backbone forward / forward+backward: microact's VideoMAE vs Hugging Face VideoMAE (sdpa, eager).

Thin wrapper over ``microact bench backbone`` (same options), e.g.
``python bench/backbone.py --batch 1 --precision fp32 bf16 --repeats 2``.
"""
import sys

from microact.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "backbone", *sys.argv[1:]]))
