"""microact: micro-action recognition in PyTorch.

A clean reproduction of the first-place MAC 2024 solution (VideoMAE ViT backbones, frame-level and
coarse assisting heads, cosine-margin classifier, CE + soft-F1 losses) and a toolkit around it:
person cropping, robust video data, distributed mixed-precision training, multi-clip testing,
MAC submissions and ensembles.
"""
__version__ = "0.1.0"
