"""Video data: annotations, decoding, temporal sampling, transforms, dataset and loader.

Heavy modules (torch, cv2, av) are imported on first use of a name, so ``import microact.data`` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "AnnotationError": "annotations", "VideoRecord": "annotations", "load_list": "annotations",
    "load_lists": "annotations", "load_label_names": "annotations", "scan_list": "annotations",
    "VideoDecodeError": "decode", "DecodeTimeout": "decode", "VideoInfo": "decode", "read_frames": "decode",
    "probe_video": "decode", "count_frames": "decode",
    "uniform_sample": "sampling", "sample_frames": "sampling",
    "TrainTransform": "transforms", "TestTransform": "transforms", "ColorJitter": "transforms",
    "normalize_batch": "transforms",
    "VideoDataset": "dataset", "collate": "dataset", "build_loader": "dataset", "ResumableSampler": "dataset",
    "EpochBatchSampler": "dataset",
    "write_video": "video_writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"microact.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'microact.data' has no attribute {name!r}")
