"""Person crop: box rules, detectors on real people and on the synthetic figures, and the folder runner."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from microact.config import CropConfig
from microact.data import synth
from microact.data.crop import boxes as B
from microact.data.crop.detectors import (Box, DetectorError, HaarFaceDetector, create_detector, face_to_body, nms,
                                          parse_yolo_output)
from microact.data.crop.run import compute_box, crop_encoding, crop_video, run_crop
from microact.data.decode import read_frames
from microact.data.video_writer import write_video


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def mp_detector():
    det = create_detector("mediapipe")
    yield det
    det.close()


# ---------------------------------------------------------------------------------------------- box rules


def test_union_and_margins_hand_computed():
    assert B.union_boxes([]) is None
    assert B.union_boxes([[10, 20, 30, 40], [5, 25, 35, 38], (12, 10, 20, 50, 0.9)]) == [5, 10, 35, 50]
    assert B.scale_margins((-60, -100, 80, 60), 1080) == (-60, -100, 80, 60)
    assert B.scale_margins((-60, -100, 80, 60), 540) == (-30, -50, 40, 30)
    assert B.apply_margins([100, 120, 200, 300], (-60, -100, 80, 60), 1920, 1080) == [40, 20, 280, 360]
    assert B.apply_margins([30, 50, 1900, 1050], (-60, -100, 80, 60), 1920, 1080) == [0, 0, 1920, 1080]


def test_aspect_padding_shift_and_seed_clamp():
    # w=40, h=200: pad = int((0.6*200 - 40) / 2) = 40 on each side.
    assert B.pad_to_aspect([100, 0, 140, 200], 0.6, 300, 200) == [60, 0, 180, 200]
    # Near the left border: the seed clamps (w/h = 0.45), microact shifts right (w/h = 0.6).
    assert B.pad_to_aspect([10, 0, 50, 200], 0.6, 300, 200, shift=False) == [0, 0, 90, 200]
    assert B.pad_to_aspect([10, 0, 50, 200], 0.6, 300, 200) == [0, 0, 120, 200]
    assert B.pad_to_aspect([250, 0, 290, 200], 0.6, 300, 200) == [180, 0, 300, 200]
    # Image narrower than 0.6 h: the whole width is all there is.
    assert B.pad_to_aspect([40, 0, 60, 200], 0.6, 100, 200) == [0, 0, 100, 200]
    # Already wide enough: untouched.
    assert B.pad_to_aspect([0, 0, 100, 100], 0.6, 300, 200) == [0, 0, 100, 100]


def test_even_integer_box_and_full_pipeline():
    assert B.to_even_int_box([1.2, 2.7, 10.1, 11.0], 100, 100) == [1, 2, 11, 12]
    assert B.to_even_int_box([0, 0, 99, 99], 99, 99) == [0, 0, 98, 98]
    assert B.crop_box(None, 177, 144) == [0, 0, 176, 144]
    # 1080p: margins unscaled; box [900, 300, 1000, 700] -> [840, 200, 1080, 760]: w=240, h=560 -> pad 48.
    assert B.crop_box([900, 300, 1000, 700], 1920, 1080) == [792, 200, 1128, 760]
    # 540p: margins halved -> [420, 100, 540, 380]: w=120, h=280 -> pad int((168-120)/2) = 24.
    box = B.crop_box([450, 150, 500, 350], 960, 540)
    assert box == [396, 100, 564, 380]
    w, h = box[2] - box[0], box[3] - box[1]
    assert w % 2 == 0 and h % 2 == 0 and w / h >= 0.6


def test_final_box_keeps_the_aspect_after_truncation_and_rounding():
    """w/h >= 0.6 must survive the padding's int() and the rounding to even integers wherever the frame is wide
    enough, at the cost of a pixel pair or two of width; the box stays even and inside the frame."""
    rng = np.random.default_rng(0)
    width, height = 1920, 1080
    for _ in range(3000):
        x1, y1 = rng.uniform(0, 1800), rng.uniform(0, 900)
        raw = [x1, y1, min(x1 + rng.uniform(20, 400), width), y1 + rng.uniform(20, height - y1)]
        box = B.crop_box(raw, width, height)
        w, h = box[2] - box[0], box[3] - box[1]
        assert w % 2 == 0 and h % 2 == 0 and 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        assert w / h >= 0.6 - 1e-12, (raw, box)
        # The padded box before rounding, computed here from the rule (margins at 1080p, pad int((0.6h - w)/2)).
        m = [max(raw[0] - 60, 0), max(raw[1] - 100, 0), min(raw[2] + 80, width), min(raw[3] + 60, height)]
        pw, ph = m[2] - m[0], m[3] - m[1]
        pad = int((0.6 * ph - pw) / 2) if pw / ph < 0.6 else 0
        assert h <= ph + 3 and pw + 2 * pad - 1 <= w <= pw + 2 * pad + 6  # -1: evenness at the border
    # A frame narrower than 0.6 h: the box spans its even width.
    assert B.crop_box([40, 10, 60, 190], 101, 200) == [0, 0, 100, 200]


def test_short_side_and_iou():
    assert B.short_side_size(640, 1080, 320) == (320, 540)
    assert B.short_side_size(200, 300, 320) == (200, 300)
    assert B.short_side_size(201, 301, None) == (200, 300)
    assert B.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert B.box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_yolo_parsing_and_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5) == [0, 2]
    assert nms(boxes, np.array([0.6, 0.8, 0.7]), 0.5) == [1, 2]
    # YOLOv8 layout [1, 4 + C, N] (N > 4 + C): 8 anchors, 2 classes; only the first is a confident person.
    v8 = np.zeros((1, 6, 8), np.float32)
    v8[0, :, 0] = [50, 40, 10, 20, 0.9, 0.05]
    v8[0, :, 1] = [20, 30, 4, 6, 0.1, 0.95]
    b, s = parse_yolo_output(v8, 0.25)
    np.testing.assert_allclose(b, [[45, 30, 55, 50]])
    np.testing.assert_allclose(s, [0.9])
    # YOLOv5 layout [1, N, 5 + C] with N > 5 + C: score = objectness x person probability.
    v5 = np.zeros((1, 9, 7), np.float32)
    v5[0, 3] = [50, 40, 10, 20, 0.8, 0.5, 0.1]
    v5[0, 5] = [10, 10, 4, 4, 0.9, 0.1, 0.9]
    b, s = parse_yolo_output(v5, 0.25)
    np.testing.assert_allclose(b, [[45, 30, 55, 50]])
    np.testing.assert_allclose(s, [0.4])


def test_detector_errors_name_what_is_missing(tmp_path):
    with pytest.raises(DetectorError, match="--weights"):
        create_detector("yolo")
    with pytest.raises(DetectorError, match="nothing.onnx"):
        create_detector("onnx", str(tmp_path / "nothing.onnx"))
    with pytest.raises(DetectorError, match="unknown detector"):
        create_detector("hog")
    assert create_detector("none").detect(np.zeros((10, 20, 3), np.uint8)) == [Box(0, 0, 20, 10, 1.0)]
    assert face_to_body(100, 50, 20, 20, 200, 300, 0.5) == Box(68, 38, 152, 190, 0.5)


# ---------------------------------------------------------------------------------------------- real people


def _astronaut_clip(num_frames: int = 6) -> tuple[np.ndarray, list[list[float]]]:
    """The astronaut photo (160 px) sliding across a 480x320 textured frame; returns frames and face boxes."""
    import cv2
    from skimage import data

    face = np.array([177, 66, 177 + 95, 66 + 95]) * 160 / 512  # Haar face of the 512 px photo (ENVIRONMENT.md §5)
    person = cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    background = cv2.resize(rng.integers(40, 120, (20, 30, 3)).astype(np.uint8), (480, 320))
    frames, faces = [], []
    for t in range(num_frames):
        x, y = 60 + 30 * t, 120
        frame = background.copy()
        frame[y:y + 160, x:x + 160] = person
        frames.append(frame)
        faces.append([face[0] + x, face[1] + y, face[2] + x, face[3] + y])
    return np.stack(frames), faces


@pytest.mark.parametrize("name", ["mediapipe", "haar"])
def test_moving_astronaut_box_contains_face_and_is_small(name, mp_detector):
    frames, faces = _astronaut_clip()
    det = mp_detector if name == "mediapipe" else HaarFaceDetector()
    info = compute_box(frames, det)
    assert info["frames_with_person"] >= 5
    x1, y1, x2, y2 = info["box"]
    face_union = B.union_boxes(faces)
    assert x1 <= face_union[0] and y1 <= face_union[1] and x2 >= face_union[2] and y2 >= face_union[3]
    assert (x2 - x1) * (y2 - y1) < 0.75 * 480 * 320
    assert (x2 - x1) / (y2 - y1) >= 0.6


def test_carphone_box_contains_haar_face(carphone_path, mp_detector):
    frames = read_frames(carphone_path, [0, 40, 80, 119])
    info = compute_box(frames, mp_detector)
    assert info["frames_with_person"] >= 3 and info["source_size"] == [176, 144]
    x1, y1, x2, y2 = info["box"]
    # The face found by an independent detector (Haar) lies inside the crop.
    haar = HaarFaceDetector()
    for frame in frames:
        import cv2

        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        for fx, fy, fw, fh in np.asarray(haar._cascade.detectMultiScale(gray, 1.1, 5, minSize=(20, 20))).reshape(-1, 4):
            assert x1 <= fx + 2 and y1 <= fy + 2 and x2 >= fx + fw - 2 and y2 >= fy + fh - 2


def test_detector_box_matches_synthetic_ground_truth(tmp_path, mp_detector):
    out = tmp_path / "syn"
    synth.synthesize(out, num_classes=7, clips_per_class=1, seed=11, frames=6, workers=1, progress=False,
                     val_fraction=0, test_fraction=0)
    gt = json.loads((out / "boxes.json").read_text())
    ious = []
    for name, gt_box in gt.items():
        info = compute_box(read_frames(out / name, [0, 3, 5]), mp_detector)
        ious.append(B.box_iou(info["raw_box"], gt_box) if info["raw_box"] else 0.0)
    assert np.mean(ious) >= 0.5, ious


# ---------------------------------------------------------------------------------------------- runner


def test_crop_video_single_file(carphone_path, tmp_path, mp_detector):
    entry = crop_video(carphone_path, tmp_path / "c.mp4", mp_detector,
                       CropConfig(sample_frames=3, short_side=64))
    x1, y1, x2, y2 = entry["box"]
    frames = _decode(tmp_path / "c.mp4")
    assert frames.shape[0] == 120 == entry["frames"]
    assert (frames.shape[2], frames.shape[1]) == tuple(entry["output_size"]) == B.short_side_size(x2 - x1, y2 - y1, 64)
    assert min(frames.shape[1:3]) == 64


def _x264_settings(path: Path) -> str:
    """The option string x264 writes into every stream it encodes (an SEI message: "... options: cabac=1 ...")."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    return data[start:data.index(b"\x00", start)].decode("ascii", "replace")


@pytest.mark.parametrize("fast_decode", [True, False])
def test_crop_encoding_is_chosen_for_decoding_speed(tmp_path, fast_decode):
    src = tmp_path / "in.mp4"
    rng = np.random.default_rng(0)
    write_video(src, rng.integers(0, 255, size=(6, 96, 160, 3), dtype=np.uint8), fps=12)
    out = tmp_path / "out.mp4"
    cfg = CropConfig(detector="none", short_side=None, crf=21, fast_decode=fast_decode)
    entry = crop_video(src, out, create_detector("none"), cfg)
    settings = _x264_settings(out)
    # tune=fastdecode is exactly: no CABAC, no deblocking filter (x264's --tune help).
    assert ("cabac=0" in settings) == ("deblock=0" in settings) == fast_decode, settings
    assert ("cabac=1" in settings) == (not fast_decode) and "crf=21.0" in settings
    # ... and B-frames nothing refers to (no B-pyramid), up to 8 in a row; x264's defaults otherwise (3, pyramid).
    assert ("bframes=8 b_pyramid=0" in settings) == fast_decode and ("bframes=3 b_pyramid=2" in settings) != fast_decode
    options = {"tune": "fastdecode", "x264-params": "b-pyramid=none:bframes=8"} if fast_decode else {}
    assert entry["encoding"] == {"codec": "libx264", "preset": "veryfast", "crf": 21, "fast_decode": fast_decode,
                                 "options": options}  # boxes.json tells crops made with other settings apart
    assert _decode(out).shape == (6, 96, 160, 3)


def _frames_referenced(path: Path) -> int:
    """Frames FFmpeg still decodes when told to drop every frame no other frame references (skip_frame=NONREF)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        return sum(1 for _ in c.decode(stream))


def test_fast_decode_crops_of_static_footage_are_mostly_droppable_b_frames(tmp_path):
    # A seated person in front of a static background, with sensor noise: what MA-52 looks like to an encoder.
    rng = np.random.default_rng(0)
    background = rng.integers(60, 200, size=(256, 160, 3)).astype(np.float32)
    frames = []
    for t in range(48):
        frame = background.copy()
        top = 85 + int(round(6 * np.sin(t / 4)))
        frame[top:top + 40, 30:66] = (200, 150, 120)
        frames.append(np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8))
    referenced = {}
    for fast in (True, False):
        out = tmp_path / f"fast{fast}.mp4"
        write_video(out, frames, fps=24, **crop_encoding(CropConfig(fast_decode=fast)))  # as crop_video encodes
        referenced[fast] = _frames_referenced(out)
        assert len(_decode(out)) == 48
    # Without a B-pyramid and with up to 8 B-frames in a row, most frames need no decoding unless sampled
    # (x264's defaults leave about half of them referenced).
    assert referenced[True] <= 48 // 4 < referenced[False], referenced
    # ... and read_frames gives the pixels a full decode gives, frame for frame.
    out = tmp_path / "fastTrue.mp4"
    np.testing.assert_array_equal(read_frames(out, range(0, 48, 3)), _decode(out)[::3])


def test_crop_crf_out_of_range_is_rejected():
    from microact.config import ConfigError

    with pytest.raises(ConfigError, match=r"crop.crf: must be in \[0, 51\]"):
        CropConfig(crf=60).validate()


def test_run_crop_resumable_and_survives_corrupt_files(tmp_path, capsys):
    src = tmp_path / "in"
    synth.synthesize(src, num_classes=3, clips_per_class=1, seed=5, frames=6, width=192, height=144, workers=1,
                     progress=False, val_fraction=0, test_fraction=0)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    shutil.copy(src / "train_list_videos.txt", src / "val_list_videos.txt")
    dst = tmp_path / "out"
    cfg = CropConfig(detector="haar", sample_frames=3, short_side=None)
    first = run_crop(src, dst, cfg, workers=1, preview=2, progress=False)
    assert first["done"] == 3 and first["failed"] == 1 and first["skipped"] == 0
    assert "broken.mp4" in first["errors"][0] and "broken.mp4" in (dst / "crop_errors.txt").read_text()
    recorded = json.loads((dst / "boxes.json").read_text())
    assert sorted(recorded) == sorted(p.name for p in src.glob("0*.mp4"))
    for name, entry in recorded.items():
        x1, y1, x2, y2 = entry["box"]
        frames = _decode(dst / name)
        assert frames.shape == (6, y2 - y1, x2 - x1, 3)
        assert entry["source_size"] == [192, 144] and entry["detector"] == "haar"
        assert (x2 - x1) % 2 == 0 and (y2 - y1) % 2 == 0
        src_frame = _decode(src / name)[0]
        # The crop is the same pixels as the source box (up to H.264 re-encoding).
        assert np.abs(frames[0].astype(int) - src_frame[y1:y2, x1:x2].astype(int)).mean() < 6
    assert (dst / "train_list_videos.txt").read_text() == (src / "train_list_videos.txt").read_text()
    assert (dst / "label_name.txt").exists() and (dst / "val_list_videos.txt").exists()
    assert (dst / "crop_preview.png").stat().st_size > 1000

    # Second run: everything done is skipped; the corrupt file is tried again and still reported.
    second = run_crop(src, dst, cfg, workers=1, preview=0, progress=False)
    assert second["done"] == 0 and second["skipped"] == 3 and second["failed"] == 1

    # A killed run leaves finished videos in the journal only: they are merged and skipped too.
    victim = sorted(recorded)[0]
    (dst / "boxes.json").write_text(json.dumps({k: v for k, v in recorded.items() if k != victim}))
    (dst / ".boxes.partial.jsonl").write_text(json.dumps([victim, recorded[victim]]) + "\n{\"cut")
    third = run_crop(src, dst, cfg, workers=1, preview=0, progress=False)
    assert third["done"] == 0 and third["skipped"] == 3
    assert json.loads((dst / "boxes.json").read_text())[victim] == recorded[victim]
    assert not (dst / ".boxes.partial.jsonl").exists()


def test_cli_crop_parallel_overwrite_and_missing_folder(tmp_path, capsys):
    from microact.cli import main

    src = tmp_path / "in"
    src.mkdir()
    frames = np.full((4, 96, 160, 3), 90, np.uint8)
    for i in range(2):
        write_video(src / f"000{i}_01_0001.mp4", frames, fps=12)
    dst = tmp_path / "out"
    args = ["crop", str(src), str(dst), "--detector", "none", "--workers", "2", "--preview", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cropped 2" in out and out.rstrip().endswith("; detector none")
    entry = json.loads((dst / "boxes.json").read_text())["0000_01_0001.mp4"]
    assert entry["box"] == [0, 0, 160, 96] and entry["detector"] == "none"
    assert main(args) == 0 and "skipped 2" in capsys.readouterr().out
    assert main(args + ["--overwrite"]) == 0 and "cropped 2" in capsys.readouterr().out
    assert main(["crop", str(tmp_path / "nope"), str(dst)]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_crop_names_the_detector_auto_picked(tmp_path, capsys):
    from microact.cli import main
    from microact.data.crop.detectors import mediapipe_available

    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "0000_01_0001.mp4", np.full((4, 96, 160, 3), 90, np.uint8), fps=12)
    assert main(["crop", str(src), str(tmp_path / "out"), "--workers", "1", "--preview", "0"]) == 0  # auto
    used = json.loads((tmp_path / "out" / "boxes.json").read_text())["0000_01_0001.mp4"]["detector"]
    assert used == ("mediapipe" if mediapipe_available() else "haar")
    why = "mediapipe is installed" if used == "mediapipe" else "mediapipe is not installed"
    assert f"; detector {used} (picked by --detector auto: {why})" in capsys.readouterr().out


def test_mediapipe_native_logging_stays_out_of_the_terminal(carphone_path):
    """mediapipe's C++ side (absl, TFLite) logs about a dozen lines when its graphs start and on their first
    inference, in the middle of progress bars; the detector silences them, and only them."""
    import subprocess
    import sys

    code = ("import sys; from microact.data.crop.detectors import MediaPipeDetector; "
            "from microact.data.decode import read_frames; "
            f"frames = read_frames({str(carphone_path)!r}, [0, 60]); d = MediaPipeDetector(); "
            # the graphs' threads log on their own time: give them a moment outside any call of ours
            "import time; time.sleep(1.0); "
            "boxes = [d.detect(f) for f in frames]; d.close(); "
            "print('found', sum(len(b) for b in boxes)); print('our stderr', file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "found 2" in p.stdout  # the person is still detected in both frames
    assert p.stderr.strip() == "our stderr", p.stderr


def test_silenced_native_output_comes_back_when_the_call_fails():
    """What native code writes inside the silenced window is dropped, unless an exception escapes: then its
    explanation is written out after all."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from microact.data.crop.detectors import _native_stderr_silenced\n"
            "with _native_stderr_silenced():\n"
            "    os.write(2, b'routine native log\\n')\n"
            "try:\n"
            "    with _native_stderr_silenced():\n"
            "        os.write(2, b'native check failed: bad model\\n')\n"
            "        raise RuntimeError('graph failed')\n"
            "except RuntimeError:\n"
            "    pass\n"
            "print('after', file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "native check failed: bad model\nafter\n"
