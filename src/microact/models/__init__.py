"""Models: VideoMAE backbones, the seed's heads, the recognizer and the seed-table presets.

Public API (stable): ``create_backbone``, ``list_backbones``, ``create_model``, ``list_models``,
``load_pretrained``.
"""
from microact.models.videomae import create_backbone, list_backbones  # noqa: F401
from microact.models.checkpoints import load_pretrained  # noqa: F401
from microact.models.presets import create_model, list_models  # noqa: F401
