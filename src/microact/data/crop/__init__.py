"""Offline person crop: detectors, box rules and the folder runner (``microact crop``)."""
from microact.data.crop.boxes import box_iou, crop_box, union_boxes
from microact.data.crop.detectors import Box, DetectorError, PersonDetector, create_detector
from microact.data.crop.run import compute_box, crop_video, run_crop

__all__ = ["Box", "DetectorError", "PersonDetector", "box_iou", "compute_box", "create_detector", "crop_box",
           "crop_video", "run_crop", "union_boxes"]
