"""Person detectors for the offline crop: one small protocol, several backends.

Every backend answers ``detect(frame_rgb) -> list[Box]`` (pixel boxes with a score, best first):

- ``mediapipe``: MediaPipe pose (``model_complexity=1``, the only bundled pose model; others download at run
  time). The box spans all 33 landmarks, clipped to the image and padded a little (landmarks sit on joints,
  not on the silhouette). When pose finds nobody, MediaPipe face detection (full range, then short range)
  runs and a body box is extrapolated from the face.
- ``haar``: OpenCV's frontal-face Haar cascade (ships with opencv-python < 5), face -> extrapolated body box.
- ``yolo``: an Ultralytics YOLO model file (``--weights``), class 0 "person".
- ``onnx``: a YOLO-style ONNX export run by onnxruntime (``--weights``); output parsed and NMS'd in numpy.
- ``none``: the full frame.

``auto`` is mediapipe when it imports, else Haar (ENVIRONMENT.md §5).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple, Optional, Protocol

import numpy as np

from microact.errors import MicroactError


class DetectorError(MicroactError):
    """A detector cannot be created (missing package or weights file)."""


class Box(NamedTuple):
    """A person box in pixels: ``[x1, y1, x2, y2]`` and a confidence score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


class PersonDetector(Protocol):
    name: str

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        """Person boxes in an RGB uint8 ``[H, W, 3]`` frame, best first (empty when nobody is found)."""
        ...

    def close(self) -> None:
        ...


def face_to_body(x: float, y: float, w: float, h: float, width: int, height: int, score: float) -> Box:
    """A seated person's box extrapolated from their face box ``(x, y, w, h)``, clipped to the image.

    A seated, frontal interviewee spans about 1.6 face widths to each side (shoulders and elbows), from
    about half a face above the face box (hair) to about 6 face heights below it (lap and feet).
    """
    return Box(max(0.0, x - 1.6 * w), max(0.0, y - 0.6 * h), min(float(width), x + 2.6 * w),
               min(float(height), y + 7.0 * h), float(score))


class FullFrameDetector:
    """``--detector none``: the whole frame is the person."""

    name = "none"

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        h, w = frame_rgb.shape[:2]
        return [Box(0.0, 0.0, float(w), float(h), 1.0)]

    def close(self) -> None:
        pass


class HaarFaceDetector:
    """OpenCV frontal-face Haar cascade; each face becomes an extrapolated body box (largest first)."""

    name = "haar"

    def __init__(self, min_neighbors: int = 5):
        import cv2

        data = getattr(cv2, "data", None)
        path = Path(data.haarcascades) / "haarcascade_frontalface_default.xml" if data else None
        if path is None or not path.exists():
            raise DetectorError("the Haar detector needs OpenCV's cascade files (opencv-python-headless < 5); "
                                "they are missing from this OpenCV install")
        self._cascade = cv2.CascadeClassifier(str(path))
        self._min_neighbors = min_neighbors

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        import cv2

        h, w = frame_rgb.shape[:2]
        gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
        # The cascade's smallest window is 24 px: upscale small frames so faces of ~12 px are found too.
        up = max(1.0, 400.0 / min(h, w))
        if up > 1.0:
            gray = cv2.resize(gray, (int(round(w * up)), int(round(h * up))), interpolation=cv2.INTER_LINEAR)
        min_side = max(24, int(min(h, w) * up) // 20)
        faces = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self._min_neighbors,
                                               minSize=(min_side, min_side))
        faces = np.asarray(faces, dtype=np.float64).reshape(-1, 4) / up  # back to frame pixels
        boxes = [face_to_body(fx, fy, fw, fh, w, h, 1.0) for fx, fy, fw, fh in faces]
        return sorted(boxes, key=lambda b: -b.area)

    def close(self) -> None:
        pass


_STDERR_REDIRECT_LOCK = threading.Lock()  # fd 2 is per process: two threads must not swap it at the same time


@contextlib.contextmanager
def _native_stderr_silenced():
    """Keep what native code writes to file descriptor 2 off the terminal for the duration.

    mediapipe's C++ (absl, TFLite) logs a dozen lines per process when its graphs start and more on later
    inferences, before any of its log-level settings are read, and they land in the middle of our progress bars.
    The lines go to a temporary file; if an exception escapes (a broken model file, a failed check), they are
    written out after all, so a failure keeps its explanation. Only this process's descriptor changes (the crop
    workers are separate processes).
    """
    with _STDERR_REDIRECT_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            try:
                os.dup2(captured.fileno(), 2)
                yield
            except BaseException:
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)


class MediaPipeDetector:
    """MediaPipe pose (all-landmark box), falling back to MediaPipe face detection -> body box."""

    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.3, pad: float = 0.08):
        try:
            import mediapipe as mp
        except ImportError as e:
            raise DetectorError(f"--detector mediapipe needs the 'mediapipe' package (0.10.21, installed with "
                                f"--no-deps; see ENVIRONMENT.md §5): {e}") from None
        solutions = mp.solutions
        with _native_stderr_silenced():
            # Pose model_complexity 0 and 2 download weights at run time; 1 is bundled in the wheel.
            self._pose = solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                             min_detection_confidence=min_confidence)
            face = solutions.face_detection.FaceDetection
            self._faces = [face(model_selection=m, min_detection_confidence=min_confidence) for m in (1, 0)]
            # The graphs start their calculators on threads of their own, which log after the constructors have
            # returned; one inference each waits for them, so that their lines fall inside this window.
            blank = np.zeros((64, 48, 3), dtype=np.uint8)
            for graph in (self._pose, *self._faces):
                graph.process(blank)
        self._pad = pad

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        # Its graphs log on their first inference and again when a calculator first meets a new case (a non-square
        # frame, ...): silencing every call costs two dup2() calls against tens of milliseconds of inference.
        with _native_stderr_silenced():
            return self._detect(frame_rgb)

    def _detect(self, frame_rgb: np.ndarray) -> list[Box]:
        h, w = frame_rgb.shape[:2]
        frame = np.ascontiguousarray(frame_rgb)
        result = self._pose.process(frame)
        if result.pose_landmarks is not None:
            pts = np.array([(lm.x, lm.y) for lm in result.pose_landmarks.landmark]) * [w, h]  # [33, 2] pixels
            pts = np.clip(pts, [0, 0], [w, h])
            x1, y1 = pts.min(axis=0)
            x2, y2 = pts.max(axis=0)
            px, py = self._pad * (x2 - x1), self._pad * (y2 - y1)
            vis = np.mean([lm.visibility for lm in result.pose_landmarks.landmark])
            return [Box(max(0.0, x1 - px), max(0.0, y1 - py), min(float(w), x2 + px), min(float(h), y2 + py),
                        float(vis))]
        for faces in self._faces:
            found = faces.process(frame)
            if found.detections:
                boxes = []
                for det in found.detections:
                    rb = det.location_data.relative_bounding_box
                    boxes.append(face_to_body(rb.xmin * w, rb.ymin * h, rb.width * w, rb.height * h, w, h,
                                              float(det.score[0])))
                return sorted(boxes, key=lambda b: -b.score)
        return []

    def close(self) -> None:
        with _native_stderr_silenced():
            self._pose.close()
            for faces in self._faces:
                faces.close()


class YoloDetector:
    """An Ultralytics YOLO model (``.pt``/``.onnx`` weights the user supplies); person = class 0."""

    name = "yolo"

    def __init__(self, weights: Optional[str], min_confidence: float = 0.25):
        path = _weights_file(weights, "yolo")
        try:
            from ultralytics import YOLO
        except ImportError as e:
            raise DetectorError(f"--detector yolo needs the 'ultralytics' package (pip install ultralytics, in a "
                                f"separate environment: it pulls torchvision): {e}") from None
        self._model = YOLO(str(path))
        self._conf = min_confidence

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        # Ultralytics expects numpy images in BGR order (OpenCV convention).
        result = self._model.predict(np.ascontiguousarray(frame_rgb[..., ::-1]), classes=[0], conf=self._conf,
                                     verbose=False)[0]
        xyxy = result.boxes.xyxy.cpu().numpy().reshape(-1, 4)
        conf = result.boxes.conf.cpu().numpy().reshape(-1)
        return [Box(*map(float, b), float(c)) for b, c in sorted(zip(xyxy, conf), key=lambda bc: -bc[1])]

    def close(self) -> None:
        pass


class OnnxYoloDetector:
    """A YOLO ONNX export run with onnxruntime on the CPU.

    Accepted outputs: YOLOv8/v11 ``[1, 4 + C, N]`` (cx, cy, w, h, class scores) and YOLOv5 ``[1, N, 5 + C]``
    (cx, cy, w, h, objectness, class scores), in input-image pixels of a letterboxed square input.
    """

    name = "onnx"

    def __init__(self, weights: Optional[str], min_confidence: float = 0.25, iou: float = 0.45):
        path = _weights_file(weights, "onnx")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DetectorError(f"--detector onnx needs the 'onnxruntime' package (pip install onnxruntime): "
                                f"{e}") from None
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        side = inp.shape[2] if len(inp.shape) == 4 and isinstance(inp.shape[2], int) else 640
        self._size = int(side)
        self._conf, self._iou = min_confidence, iou

    def detect(self, frame_rgb: np.ndarray) -> list[Box]:
        import cv2

        h, w = frame_rgb.shape[:2]
        s = self._size / max(h, w)
        nh, nw = int(round(h * s)), int(round(w * s))
        canvas = np.full((self._size, self._size, 3), 114, np.uint8)
        top, left = (self._size - nh) // 2, (self._size - nw) // 2
        canvas[top:top + nh, left:left + nw] = cv2.resize(frame_rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # [1, 3, S, S]
        out = np.asarray(self._session.run(None, {self._input_name: x})[0])
        boxes, scores = parse_yolo_output(out, self._conf)
        keep = nms(boxes, scores, self._iou)
        result = []
        for i in keep:
            x1, y1, x2, y2 = boxes[i]
            result.append(Box(float(np.clip((x1 - left) / s, 0, w)), float(np.clip((y1 - top) / s, 0, h)),
                              float(np.clip((x2 - left) / s, 0, w)), float(np.clip((y2 - top) / s, 0, h)),
                              float(scores[i])))
        return result

    def close(self) -> None:
        pass


def parse_yolo_output(out: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes ``[K, 4]`` (x1, y1, x2, y2) and scores ``[K]`` from a raw YOLO output tensor."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 3:
        out = out[0]
    if out.ndim != 2:
        raise DetectorError(f"unexpected YOLO output shape {out.shape}")
    # v5 layout is [N, 5 + C] with N >> 85; v8 layout is [4 + C, N]: put anchors on the first axis.
    if out.shape[0] < out.shape[1]:
        out = out.T  # [4 + C, N] -> [N, 4 + C]
        scores = out[:, 4]  # class 0 = person
    else:
        scores = out[:, 4] * out[:, 5]  # objectness x person probability
    keep = scores >= min_confidence
    cx, cy, bw, bh = out[keep, 0], out[keep, 1], out[keep, 2], out[keep, 3]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return boxes, scores[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    order = list(np.argsort(-np.asarray(scores)))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        iw = (np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])).clip(0)
        ih = (np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])).clip(0)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = [int(j) for j, o in zip(rest, iou) if o <= iou_threshold]
    return keep


def _weights_file(weights: Optional[str], kind: str) -> Path:
    if not weights:
        raise DetectorError(f"--detector {kind} needs a weights file: pass --weights PATH")
    path = Path(weights)
    if not path.is_file():
        raise DetectorError(f"--detector {kind}: weights file {path} does not exist")
    return path


def mediapipe_available() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


def create_detector(name: str = "auto", weights: Optional[str] = None) -> PersonDetector:
    """Build a detector by name: auto | mediapipe | haar | yolo | onnx | none.

    Raises:
        DetectorError: unknown name, a missing package or a missing weights file.
    """
    if name == "auto":
        name = "mediapipe" if mediapipe_available() else "haar"
    if name == "mediapipe":
        return MediaPipeDetector()
    if name == "haar":
        return HaarFaceDetector()
    if name == "yolo":
        return YoloDetector(weights)
    if name == "onnx":
        return OnnxYoloDetector(weights)
    if name == "none":
        return FullFrameDetector()
    raise DetectorError(f"unknown detector {name!r}; choose auto, mediapipe, haar, yolo, onnx or none")
