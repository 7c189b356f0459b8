"""Recognise micro-actions in any video: person crop, the test pipeline, the model, top-k classes.

For each video: one static person box (the offline crop of SEED.md §5.1, via :mod:`microact.data.crop`),
``eval.test_clips`` uniformly sampled test clips of the cropped frames, the recipe's test views
(:class:`~microact.data.transforms.TestTransform`), clip-averaged probabilities (SEED.md §4), then the top-k
fine classes and the body part (both the seed's g(top-1) and the sum of fine probabilities per part).

The class names come from the :class:`~microact.taxonomy.Taxonomy` the weights record (a run's weights carry their
classes), else from the recipe's ``data.classes`` file, else MA-52's. A taxonomy with groups other than MA-52's
gets a ``"group"`` entry where MA-52 has ``"body_part"``; a flat one (no groups) gets neither.

MA-52's clips are trimmed around one micro-action. A longer, untrimmed video (an interview, a session) is read as
a timeline instead (``--window SECONDS``): sliding windows, each predicted like a trimmed clip, consecutive
windows with the same top-1 merged into segments, and a timeline plot.

Example::

    microact predict clip.mp4 --config configs/tiny_synth.yaml --checkpoint runs/tiny/model_final.safetensors \\
        --json pred.json --annotate pred.mp4
    microact predict interview.mp4 --checkpoint model.safetensors --window 2 --stride 1 --timeline timeline.png
"""
from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from microact.errors import MicroactError
from microact.taxonomy import MA52, Taxonomy, taxonomy_of

DEFAULT_PRESET = "videomae_b_k710_frame_coarse_tsn"


class PredictError(MicroactError):
    """A video cannot be predicted (unreadable, no frames) or the options do not fit together."""


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def build_predictor_config(model: Optional[str] = None, config: Optional[str] = None,
                           overrides: Sequence[str] = (), checkpoint: Optional[str] = None):
    """The run configuration of a prediction: the recipe's; without one, the recipe ``checkpoint`` records (the
    one it was trained with); else a preset's defaults (its frames and input size).

    Args:
        model: preset name; overrides the recipe's (or the recorded recipe's) ``model.preset``.
        config: YAML recipe the checkpoint was trained with.
        overrides: more ``key=value`` overrides.
        checkpoint: trained weights; a recipe recorded in them is used when ``config`` is not given.
    """
    from microact.config import ConfigError, config_from_yaml, load_config
    from microact.engine.builders import describe_input
    from microact.engine.evaluate import recorded_recipe
    from microact.models.presets import get_preset

    def preset_keys(name: str) -> list[str]:
        # a preset that sees optical flow needs data.flow_dir set (prediction computes the flow itself); RGB: unset
        return [f"model.preset={name}", f"data.flow_dir={'flow' if 'flow' in get_preset(name).streams else 'null'}"]

    recorded = recorded_recipe(checkpoint) if checkpoint and config is None else None
    if recorded is not None:
        # the recorded frames, size and input mode stay with --model; the recipe comparison warns about the preset
        extra = (preset_keys(model) if model is not None else []) + list(overrides)
        source = f"{checkpoint} (recorded recipe)"
        try:
            trained = config_from_yaml(recorded, source)
            cfg = config_from_yaml(recorded, source, extra) if extra else trained
        except ConfigError as e:  # e.g. recorded by another microact version: fall back to the preset's defaults
            print(f"warning: cannot use the recipe recorded in the weights ({e}); using the preset's defaults",
                  file=sys.stderr)
        else:
            instead = (f" (--model instead of the recorded {trained.model.preset})"
                       if cfg.model.preset != trained.model.preset else "")
            changed = "".join(f", {k}={v}" for k, v in cfg.model.overrides.items())  # e.g. a smaller backbone
            print(f"using the recipe recorded in {checkpoint}: {cfg.model.preset}{instead}{changed}, "
                  f"{cfg.data.clip_len} frames at {cfg.data.img_size} px, input {describe_input(cfg)} (pass "
                  "--config to use another)", file=sys.stderr)
            return cfg
    extra = list(overrides)
    if config is None:
        preset = get_preset(model or DEFAULT_PRESET)
        extra = preset_keys(preset.name) + [f"data.clip_len={preset.num_frames}",
                                            f"data.img_size={preset.img_size}"] + extra
    elif model is not None:
        extra = preset_keys(model) + extra
    return load_config(config, extra)


def predictor_taxonomy(cfg, checkpoint: Optional[str]) -> Taxonomy:
    """The classes of a prediction: those the weights record (they were trained on them), else the recipe's
    ``data.classes`` file, else MA-52. ``cfg``'s class counts are set to match.

    When the weights record their classes, the recipe's classes file is only compared with them: when it lists
    other classes (e.g. it was edited since training, even to another count) or cannot be read, a warning names
    the file and the difference and the weights' classes win (the head was trained on the recorded names). A
    ``data.classes`` file that is not on this machine is fine then.

    Raises:
        microact.config.ConfigError: no recorded classes and the recipe's classes file is missing or does not fit.
        microact.data.annotations.AnnotationError: no recorded classes and the recipe's classes file is broken.
    """
    from microact.taxonomy import classes_path, differences, load_classes, read_recorded_taxonomy, resolve_taxonomy

    recorded = read_recorded_taxonomy(checkpoint) if checkpoint else None
    path = classes_path(cfg)
    if recorded is None:
        return resolve_taxonomy(cfg)
    use = f"using the {recorded.num_fine} classes recorded in the weights"
    if path is not None and path.is_file():
        # load_classes, not resolve_taxonomy: the recipe (often the one recorded in the weights) states the trained
        # count in data.num_classes, which resolve_taxonomy would hold against an edited file as the user's mistake
        try:
            current = load_classes(path)
        except MicroactError as e:
            problems = getattr(e, "problems", None) or [str(e)]
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            print(f"WARNING: {problems[0]}{more}: data.classes={cfg.data.classes} cannot be read; {use} "
                  f"({checkpoint}: {recorded.describe(False)})", file=sys.stderr)
        else:
            if current != recorded:
                print(f"WARNING: {checkpoint}: the weights were trained on other classes than {path} now lists "
                      f"({differences(recorded, current)}; trained: {recorded.describe(False)}, file: "
                      f"{current.describe(False)}); {use} (restore data.classes={cfg.data.classes} as it was "
                      "when training to silence this)", file=sys.stderr)
    elif path is not None:  # e.g. the recorded recipe of a run made on another machine
        print(f"using the classes recorded in {checkpoint}: {recorded.describe(False)} "
              f"(data.classes={cfg.data.classes} is not on this machine)", file=sys.stderr)
    elif not recorded.is_ma52:
        print(f"note: the recipe names no classes file (data.classes); using the classes recorded in {checkpoint}: "
              f"{recorded.describe(False)}", file=sys.stderr)
    cfg.data.num_classes = cfg.model.num_classes = recorded.num_fine
    if not recorded.has_coarse:
        cfg.predict.coarse_rule = "map_top1"  # no groups to predict (the only rule that needs none)
    return recorded


def flow_views(path: Path, cfg, num_frames: int, box: Sequence[int], transform) -> np.ndarray:
    """Test views of a video's optical flow, computed on the fly as ``microact flow`` writes it (SEED.md §2.9).

    The flow video ``microact flow`` would write has ``num_frames - 1`` frames, frame ``i`` being the flow from
    frame ``i`` to ``i + 1``; it is sampled like a flow video in testing (over its own frame count), and each
    sampled flow frame is computed from its two source frames, cropped like the RGB frames.

    Returns:
        ``[V, 3, T, S, S]`` uint8, the views of ``transform`` (the RGB views' order).
    """
    from microact.data.decode import read_frames
    from microact.data.flow import flow_image, grey
    from microact.data.sampling import uniform_sample

    if num_frames < 2:
        raise PredictError(f"{path}: one frame only, no optical flow for the {cfg.model.preset} model")
    clips = cfg.eval.test_clips
    indices = uniform_sample(num_frames - 1, cfg.data.clip_len, clips, test_mode=True)
    needed = np.unique(np.concatenate([indices, indices + 1]))
    decoded = read_frames(path, needed, decoder=cfg.data.decoder, timeout=cfg.data.decode_timeout)
    greys = {int(i): grey(f) for i, f in zip(needed, crop_frames(decoded, box, cfg.crop.short_side))}
    images = np.stack([flow_image(greys[int(i)], greys[int(i) + 1]) for i in indices])
    return transform.views(images, clips)


def load_model(cfg, checkpoint: Optional[str], device: torch.device, taxonomy: Optional[Taxonomy] = None):
    """Build the recipe's model, load ``checkpoint`` (strict) or warn loudly that it is untrained.

    Args:
        taxonomy: the classes (:func:`predictor_taxonomy`); ``None``: the recipe's (``data.classes`` or MA-52).
    """
    from microact.engine.evaluate import load_trained_weights, warn_if_recipe_differs
    from microact.models.presets import create_model_from_config

    model = create_model_from_config(cfg, pretrained=False, taxonomy=taxonomy)
    if checkpoint:
        warn_if_recipe_differs(cfg, checkpoint)
        load_trained_weights(model, checkpoint)
    else:
        print("WARNING: no --checkpoint given: the model has RANDOM, UNTRAINED weights and its predictions are "
              "meaningless. Pass --checkpoint model_final.safetensors (and the --config it was trained with).",
              file=sys.stderr)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


def person_box(path: Path, cfg, detector: str, num_frames: int) -> tuple[tuple[int, int, int, int], str, int]:
    """Static person box ``(x0, y0, x1, y1)`` (pixels, exclusive ends) of a video, as ``microact crop`` computes it.

    The crop module's library function runs with the recipe's ``crop`` settings (margins, minimum aspect, frames
    given to the detector), so prediction sees the framing the model was trained on. ``detector="none"`` gives
    the full frame through the same rules, like ``microact crop --detector none``.

    Returns:
        ``(box, detector name, frames in which a person was found)``.
    """
    from microact.data.crop.detectors import create_detector
    from microact.data.crop.run import compute_box
    from microact.data.decode import read_frames

    det = create_detector(detector, cfg.crop.weights)
    try:
        idx = np.unique(np.linspace(0, num_frames - 1, max(1, cfg.crop.sample_frames)).round().astype(np.int64))
        entry = compute_box(read_frames(path, idx, decoder=cfg.data.decoder), det, cfg.crop.margins,
                            cfg.crop.min_aspect)
    finally:
        det.close()
    if entry["frames_with_person"] == 0:
        print(f"warning: {path}: no person found by the {det.name} detector; using the full frame", file=sys.stderr)
    return tuple(int(v) for v in entry["box"]), det.name, int(entry["frames_with_person"])


def crop_frames(frames: np.ndarray, box: Sequence[int], short_side: Optional[int]) -> np.ndarray:
    """Cut ``box`` out of ``[T, H, W, 3]`` frames and downscale exactly like ``microact crop``."""
    from microact.data.crop.run import crop_frame

    return np.stack([crop_frame(f, box, short_side) for f in frames])


def _ranked(probs: np.ndarray, names: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probs.astype(np.float64), kind="stable")[:k]
    return [{"id": int(i), "name": names[i], "prob": float(probs[i])} for i in order]


def predict_video(model, cfg, path: str | os.PathLike, device: torch.device, *, detector: str = "auto",
                  top_k: int = 5, taxonomy: Optional[Taxonomy] = None) -> dict:
    """Predict one video.

    Args:
        taxonomy: the classes (default: ``model.taxonomy``, else MA-52).

    Returns:
        ``{"video", "box" ([x0, y0, x1, y1]), "detector", "frames_with_person", "num_frames", "num_views", "top_k": [{"id",
        "name", "prob"}], "body_part": {"map_top1": {"id", "name"}, "sum_probs": [{"id", "name", "prob"}] (all 7,
        best first)}, "probs": [K floats]}``; other taxonomies with groups have ``"group"`` in place of
        ``"body_part"``, flat ones neither.
    """
    from microact.data.decode import count_frames, read_frames
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TestTransform
    from microact.engine.builders import input_statistics, input_streams
    from microact.engine.evaluate import score_views

    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: video not found")
    num_frames = count_frames(path, timeout=cfg.data.decode_timeout)
    box, used, found = person_box(path, cfg, detector, num_frames)
    clips = cfg.eval.test_clips
    transform = TestTransform(cfg.eval, cfg.data.img_size, cfg.aug.resize_backend)
    streams = []  # RGB then flow channels, as the loader gives them: [V, 3 or 6, T, S, S]
    if "rgb" in input_streams(cfg):
        indices = uniform_sample(num_frames, cfg.data.clip_len, clips, test_mode=True)
        frames = read_frames(path, indices, decoder=cfg.data.decoder, timeout=cfg.data.decode_timeout)
        streams.append(transform.views(crop_frames(frames, box, cfg.crop.short_side), clips))  # [V,3,T,S,S]
    if "flow" in input_streams(cfg):
        streams.append(flow_views(path, cfg, num_frames, box, transform))
    views = np.concatenate(streams, axis=1)
    video = torch.from_numpy(views)[None]  # [V, C, T, S, S] -> [1, V, C, T, S, S]
    probs = score_views(model, video, device, average=cfg.eval.average,
                        input_stats=input_statistics(cfg))[0].numpy().astype(np.float64)
    return {
        "video": str(path),
        "box": list(box),
        "detector": used,
        "frames_with_person": found,
        "num_frames": int(num_frames),
        "num_views": int(views.shape[0]),
        **_scores(probs, top_k, taxonomy_of(model, taxonomy)),
    }


def group_key(taxonomy: Taxonomy) -> Optional[str]:
    """The key of a prediction's coarse entry: ``"body_part"`` (MA-52), ``"group"`` (other groups), ``None`` (flat)."""
    if not taxonomy.has_coarse:
        return None
    return taxonomy.coarse_label.replace(" ", "_")


def _scores(probs: np.ndarray, top_k: int, taxonomy: Taxonomy = MA52) -> dict:
    """A video's ``top_k``, its group (``body_part`` for MA-52: g(top-1) and the summed probabilities per part;
    none for a flat taxonomy) and ``probs``."""
    from microact.metrics import coarse_scores

    out = {"top_k": _ranked(probs, taxonomy.fine_names, top_k)}
    key = group_key(taxonomy)
    if key is not None:
        g = taxonomy.fine_to_coarse[int(np.argmax(probs))]
        out[key] = {"map_top1": {"id": g, "name": taxonomy.coarse_names[g]},
                    "sum_probs": _ranked(coarse_scores(probs[None], taxonomy)[0], taxonomy.coarse_names,
                                         taxonomy.num_coarse)}
    out["probs"] = [float(p) for p in probs]
    return out


def window_ranges(num_frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of sliding windows ``window`` frames long, one every ``stride`` frames.

    The last window ends at the video's last frame, so the tail is never left out; a video no longer than
    ``window`` is one window.
    """
    if window < 1 or stride < 1:
        raise PredictError(f"window and stride must be at least one frame, got {window} and {stride}")
    if num_frames <= window:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return [(start, start + window) for start in starts]


def segments_of(windows: list[dict]) -> list[dict]:
    """Consecutive windows with the same top-1 class merged: ``[{"start_s", "end_s", "id", "name",
    "mean_prob", "windows"}]`` (overlapping windows: a segment ends where the next segment's first window starts;
    windows with a gap between them are never merged)."""
    segments: list[dict] = []
    for w in windows:
        top = w["top_k"][0]
        # a gap between windows (a stride longer than the window) ends a segment: nothing was seen there
        if segments and segments[-1]["id"] == top["id"] and w["start_s"] <= segments[-1]["end_s"]:
            seg = segments[-1]
            seg["end_s"] = w["end_s"]
            seg["probs"].append(top["prob"])
        else:
            if segments:
                segments[-1]["end_s"] = min(segments[-1]["end_s"], w["start_s"])
            segments.append({"start_s": w["start_s"], "end_s": w["end_s"], "id": top["id"], "name": top["name"],
                             "probs": [top["prob"]]})
    for seg in segments:
        probs = seg.pop("probs")
        seg["mean_prob"] = float(np.mean(probs))
        seg["windows"] = len(probs)
    return segments


def frame_times(path: str | os.PathLike, num_frames: int, fps: float) -> np.ndarray:
    """Seconds at which each frame (display order) starts, from the first frame, plus the end of the last:
    ``[num_frames + 1]``.

    From the stream's timestamps (:func:`microact.data.decode.frame_times`) when they are unevenly spaced (a
    variable frame rate: phones, screen recordings), where ``i / fps`` with the average rate would misplace frames by
    seconds; else ``i / fps``.
    """
    from microact.data import decode

    even = np.arange(num_frames + 1) / fps
    t = decode.frame_times(path)
    if len(t) != num_frames or num_frames < 2:
        return even
    steps = np.diff(t)
    if np.allclose(steps, steps[0], rtol=1e-9, atol=0):  # evenly spaced: the average rate says the same
        return even
    t = t - t[0]
    return np.append(t, t[-1] + (t[-1] - t[-2]))


def predict_timeline(model, cfg, path: str | os.PathLike, device: torch.device, *, window_s: float,
                     stride_s: Optional[float] = None, detector: str = "auto", top_k: int = 5,
                     taxonomy: Optional[Taxonomy] = None) -> dict:
    """Predict an untrimmed video window by window.

    Every window gets what a trimmed clip gets in :func:`predict_video` (``eval.test_clips`` uniformly sampled
    clips inside the window, the test views, clip-averaged probabilities), within one static person box for the
    whole video. The video is decoded once, front to back, keeping only the sampled frames still needed, so its
    length is not limited by memory.

    Models that see optical flow (two-stream, flow alone) get each window's flow as :func:`flow_views` computes it
    for the window cut out as its own video: the window's ``n`` frames have ``n - 1`` flow frames (flow ``i``: frame
    ``i`` -> ``i + 1``), sampled over that count. Each flow frame any window samples is computed once, when its
    second frame is decoded, and kept only while an unscored window still needs it.

    Args:
        window_s: window length in seconds (MA-52's clips last about 1-4 s).
        stride_s: seconds between window starts (default: half a window).
        taxonomy: the classes (default: ``model.taxonomy``, else MA-52).

    Returns:
        :func:`predict_video`'s fields for the whole video (``top_k`` / ``probs``: the mean over windows) plus
        ``"fps"``, ``"window_s"``, ``"stride_s"`` (as used: whole frames), ``"window_frames"``, ``"stride_frames"``,
        ``"windows": [{"start_s", "end_s", "start_frame", "end_frame",
        "top_k", "body_part" (``"group"`` for other groups, none when flat), "probs"}]`` and ``"segments"``
        (:func:`segments_of`).
    """
    from microact.data.crop.run import crop_frame
    from microact.data.decode import iter_frames, probe_video
    from microact.data.flow import flow_image, grey
    from microact.data.sampling import uniform_sample
    from microact.data.transforms import TestTransform
    from microact.engine.builders import input_statistics, input_streams
    from microact.engine.evaluate import score_views

    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: video not found")
    if not window_s > 0 or (stride_s is not None and not stride_s > 0):
        raise PredictError(f"--window and --stride must be positive seconds, got {window_s} and {stride_s}")
    uses_rgb, uses_flow = "rgb" in input_streams(cfg), "flow" in input_streams(cfg)
    info = probe_video(path, timeout=cfg.data.decode_timeout)
    fps = float(info.fps) if info.fps and info.fps > 0 else 30.0
    stride_s = window_s / 2 if stride_s is None else stride_s
    # windows are whole frames: what is reported is what was used (1 s every 0.5 s at 15 fps: 15 frames every 8)
    window_frames, stride_frames = max(1, round(window_s * fps)), max(1, round(stride_s * fps))
    ranges = window_ranges(info.num_frames, window_frames, stride_frames)
    if uses_flow and min(end - start for start, end in ranges) < 2:
        raise PredictError(f"{path}: --window {window_s:g} s is {min(window_frames, info.num_frames)} frame(s) at "
                           f"{fps:g} fps; the {cfg.model.preset} model's optical flow needs at least 2 frames per "
                           "window: use a longer --window")
    box, used, found = person_box(path, cfg, detector, info.num_frames)
    clips = cfg.eval.test_clips
    indices = ([start + uniform_sample(end - start, cfg.data.clip_len, clips, test_mode=True)
                for start, end in ranges] if uses_rgb else [])
    # flow frame j of the video (frame j -> j + 1), sampled over each window's own flow count, as flow_views does
    flow_indices = ([start + uniform_sample(end - start - 1, cfg.data.clip_len, clips, test_mode=True)
                     for start, end in ranges] if uses_flow else [])
    flow_wanted = set().union(*(map(int, ix) for ix in flow_indices))
    pair_frames = flow_wanted | {j + 1 for j in flow_wanted}  # both frames of every sampled flow frame

    def span(k: int) -> tuple[int, int]:  # the first and last frame window k needs
        ends = []
        if uses_rgb:
            ends.append((int(indices[k].min()), int(indices[k].max())))
        if uses_flow:
            ends.append((int(flow_indices[k].min()), int(flow_indices[k].max()) + 1))
        return min(first for first, _ in ends), max(last for _, last in ends)

    first_needed, last_needed = zip(*(span(k) for k in range(len(ranges))))
    transform = TestTransform(cfg.eval, cfg.data.img_size, cfg.aug.resize_backend)
    taxonomy = taxonomy_of(model, taxonomy)
    probs = np.zeros((len(ranges), taxonomy.num_fine))
    # Windows not scored yet. Every window samples the same offsets from its start, so ordering by start orders
    # both their first and their last needed frames.
    pending = collections.deque(range(len(ranges)))
    batch: list[int] = []  # windows whose views wait in `views` for one forward pass
    views: list[np.ndarray] = []
    num_views = 0
    kept: dict[int, np.ndarray] = {}  # decoded frames some unscored window still needs, cropped
    greys: dict[int, np.ndarray] = {}  # flow models: those of the flow's frames in grey, its input
    flows: dict[int, np.ndarray] = {}  # flow models: flow frame j (j -> j + 1) some unscored window samples

    def score_batch():
        if batch:
            video = torch.from_numpy(np.stack(views))  # [B, V, C, T, S, S]
            probs[batch] = score_views(model, video, device, average=cfg.eval.average,
                                       input_stats=input_statistics(cfg)).numpy()
            batch.clear()
            views.clear()

    def flow_at(j: int, last: int) -> np.ndarray:
        if j not in flows:  # the file ended before frame j + 1: its last decoded frame stands in, as in read_frames
            flows[j] = flow_image(grey(kept[min(j, last)]), grey(kept[min(j + 1, last)]))
        return flows[j]

    def take_window(k: int):
        nonlocal num_views
        last = max(kept)  # a video that ends early repeats its last decoded frame, as read_frames does
        parts = []  # RGB then flow channels, as predict_video: [V, 3 or 6, T, S, S]
        if uses_rgb:
            parts.append(transform.views(np.stack([kept[min(int(i), last)] for i in indices[k]]), clips))
        if uses_flow:
            parts.append(transform.views(np.stack([flow_at(int(j), last) for j in flow_indices[k]]), clips))
        window = np.concatenate(parts, axis=1)
        views.append(window)
        num_views = window.shape[0]
        batch.append(k)
        if len(batch) == cfg.eval.batch_size:
            score_batch()

    for i, frame in iter_frames(path, set().union(*(map(int, ix) for ix in indices), pair_frames)):
        kept[i] = crop_frame(frame, box, cfg.crop.short_side)
        if i in pair_frames:
            greys[i] = grey(kept[i])
            if i - 1 in flow_wanted and i - 1 in greys:  # computed once, however many windows sample it
                flows[i - 1] = flow_image(greys[i - 1], greys[i])
        while pending and last_needed[pending[0]] <= i:
            take_window(pending.popleft())
            needed = first_needed[pending[0]] if pending else i
            for store in (kept, greys, flows):  # bounded memory: drop what no unscored window needs
                for j in [j for j in store if j < needed and j != i]:
                    del store[j]
    if not kept:
        raise PredictError(f"{path}: no frame could be decoded")
    for k in pending:  # the file ended before these windows' last frames (damaged or over-reported length)
        take_window(k)
    score_batch()

    windows = []
    times = frame_times(path, info.num_frames, fps)
    key = group_key(taxonomy)
    for (start, end), p in zip(ranges, probs):
        top1 = int(np.argmax(p))
        window = {"start_s": round(float(times[start]), 3), "end_s": round(float(times[end]), 3),
                  "start_frame": start, "end_frame": end, "top_k": _ranked(p, taxonomy.fine_names, top_k)}
        if key is not None:
            g = taxonomy.fine_to_coarse[top1]
            window[key] = {"id": g, "name": taxonomy.coarse_names[g]}
        window["probs"] = [float(v) for v in p]
        windows.append(window)
    return {
        "video": str(path), "box": list(box), "detector": used, "frames_with_person": found,
        "num_frames": int(info.num_frames), "num_views": num_views,
        # a window longer than the video is the whole video: what is reported is what was used
        "fps": fps, "window_s": min(window_frames, info.num_frames) / fps, "stride_s": stride_frames / fps,
        "window_frames": min(window_frames, info.num_frames), "stride_frames": stride_frames,
        **_scores(probs.mean(axis=0), top_k, taxonomy),
        "windows": windows,
        "segments": segments_of(windows),
    }


def format_prediction(pred: dict, taxonomy: Taxonomy = MA52) -> str:
    """A readable block: the video, its box, the top-k classes and the body part (the group, for taxonomies with
    groups other than MA-52's; nothing for a flat one)."""
    lines = [f"{pred['video']}  (person box {pred['box']} by {pred['detector']}, {pred['num_views']} views)"]
    width = max(len(r["name"]) for r in pred["top_k"])
    for rank, r in enumerate(pred["top_k"], start=1):
        part = taxonomy.group_name(r["id"])
        where = f"[{r['id']:>2}, {part}]" if part is not None else f"[{r['id']:>2}]"
        lines.append(f"  {rank}. {r['name']:<{width}}  {100 * r['prob']:6.2f}%  {where}")
    key = group_key(taxonomy)
    if key is not None:
        best = pred[key]["sum_probs"][0]
        lines.append(f"  {taxonomy.coarse_label}: {pred[key]['map_top1']['name']} (that of the top-1 class); "
                     f"by summed probability: {best['name']} {100 * best['prob']:.2f}%")
    if "windows" in pred:
        n = len(pred["windows"])
        if n == 1 and pred["window_frames"] >= pred["num_frames"]:
            layout = f"  1 window, the whole video ({pred['window_s']:.3g} s, {pred['window_frames']} frames):"
        else:
            layout = (f"  {n} window{'s' if n != 1 else ''} of {pred['window_s']:.3g} s ({pred['window_frames']} "
                      f"frames) every {pred['stride_s']:.3g} s ({pred['stride_frames']} frames); over the whole video:")
        lines[1:1] = [layout]
        lines.append("  segments (consecutive windows with the same top-1):")
        name_width = max(len(seg["name"]) for seg in pred["segments"])
        for seg in pred["segments"]:
            lines.append(f"    {seg['start_s']:8.2f} - {seg['end_s']:8.2f} s  {seg['name']:<{name_width}}  "
                         f"{100 * seg['mean_prob']:5.1f}% (mean of {seg['windows']} window(s))")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Annotated output
# --------------------------------------------------------------------------------------------


def _draw(frame: np.ndarray, pred: dict, top_k: Optional[list[dict]] = None) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(frame.copy())
    h = out.shape[0]
    scale = max(0.35, h / 480)
    if pred["box"] is not None:
        x0, y0, x1, y1 = pred["box"]
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), max(1, int(2 * scale)))
    y = int(18 * scale) + 2
    lines = [f"{r['name']} {100 * r['prob']:.0f}%" for r in (top_k or pred["top_k"])[:3]]
    if pred.get("untrained"):
        lines.append("(untrained model)")
    for text in lines:
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined text stays readable on any frame
            cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour,
                        max(1, int(thickness * scale)), cv2.LINE_AA)
        y += int(18 * scale) + 2
    return out


def annotate(path: str | os.PathLike, pred: dict, out_path: str | os.PathLike, max_frames: int = 300,
             gif_max_side: int = 480) -> Path:
    """Write the video with the person box and the top-3 classes drawn on it (``.mp4``, or ``.gif`` with Pillow).

    Args:
        path: source video.
        pred: :func:`predict_video`'s answer for it, or :func:`predict_timeline`'s (each frame then shows the
            window whose centre is nearest).
        out_path: ``.mp4`` (H.264 via PyAV) or ``.gif`` (needs Pillow).
        max_frames: at most this many frames (evenly spaced) are written.
        gif_max_side: a GIF's frames are downscaled to at most this many pixels on their longer side.
    """
    from microact.data.decode import count_frames, iter_frames, probe_video
    from microact.data.video_writer import write_video

    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise PredictError(f"--annotate {out_path}: use a .mp4 or .gif file name")
    if suffix == ".gif":
        try:
            from PIL import Image
        except ImportError:
            raise PredictError(f"--annotate {out_path}: writing a GIF needs Pillow (pip install pillow); "
                               "ask for an .mp4 instead") from None
    n = count_frames(path)
    indices = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))
    windows = pred.get("windows")
    centres = np.array([(w["start_frame"] + w["end_frame"]) / 2 for w in windows or []])

    def labels_at(i: int) -> Optional[list[dict]]:
        return windows[int(np.argmin(np.abs(centres - i)))]["top_k"] if windows else None

    # streamed: a long video's frames are drawn and encoded one at a time
    frames = (_draw(f, pred, labels_at(i)) for i, f in iter_frames(path, indices))
    try:
        fps = float(probe_video(path).fps or 15.0) * len(indices) / n
    except Exception:  # the fps only sets the playback speed
        fps = 15.0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        write_video(out_path, frames, fps=max(1.0, fps))
    else:
        # GIF frames are downscaled to gif_max_side and handed to Pillow one at a time: full-size frames of a long
        # or high-resolution video held in a list took gigabytes (and minutes of palette quantisation)
        def small(f: np.ndarray):
            image = Image.fromarray(f)
            scale = gif_max_side / max(image.size)
            if scale < 1:
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.Resampling.BILINEAR)
            return image

        images = (small(f) for f in frames)
        first = next(images)
        first.save(out_path, save_all=True, append_images=images, duration=int(1000 / max(1.0, fps)), loop=0)
    return out_path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _expand_videos(paths: list[Path]) -> list[Path]:
    """The given files, with each folder replaced by the videos directly inside it (sorted by name)."""
    from microact.data.crop.run import VIDEO_EXTENSIONS, list_videos

    videos: list[Path] = []
    missing = []
    for path in paths:
        if path.is_dir():
            found = list_videos(path)
            if not found:
                raise PredictError(f"{path}: no videos in this folder ({', '.join(VIDEO_EXTENSIONS)})")
            videos.extend(found)
        elif path.is_file():
            _refuse_non_video(path)
            videos.append(path)
        else:
            missing.append(str(path))
    if missing:
        raise PredictError(f"video(s) not found: {', '.join(missing)}")
    return videos


def _refuse_non_video(path: Path) -> None:
    """Weights, a recipe or a dump among the videos (``microact predict WEIGHTS VIDEO`` without ``--checkpoint``)
    is named as such: decoding it said only "not a readable video", after a warning about untrained weights."""
    from microact.filekind import ONNX, PICKLE, SAFETENSORS, TEXT_SUFFIXES, ZIP, sniff

    kind = sniff(path)
    if kind in (SAFETENSORS, PICKLE, ZIP, ONNX) or (kind is not None and path.suffix.lower() in TEXT_SUFFIXES):
        raise PredictError(f"{path}: {kind}, not a video: the videos come first, weights after --checkpoint and a "
                           "recipe after --config (microact predict VIDEO --checkpoint WEIGHTS)")


# file name endings that name a media file, never a folder: one of these that an option cannot write is refused
_MEDIA_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif", ".apng",
                   ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".svg", ".pdf", ".json")


def _output_targets(videos: list[Path], arg: Optional[str], option: str, suffixes: tuple[str, ...],
                    default_name: str) -> list[Optional[Path]]:
    """One output file per video: ``arg`` itself for one video when it has one of ``suffixes``, else
    ``arg/<video stem><default_name>`` (a folder); videos with the same stem (``a.mp4`` and ``a.mov``, or one name
    in two folders) get ``<stem>_2``, ``<stem>_3``, ... so that none overwrites another."""
    if not arg:
        return [None] * len(videos)
    target = Path(arg)
    if target.suffix.lower() in suffixes:
        if len(videos) > 1:
            raise PredictError(f"{option} {target}: several videos need a folder, not one file")
        return [target]
    if target.suffix.lower() in _MEDIA_SUFFIXES:
        raise PredictError(f"{option} {target}: use a {' or '.join(suffixes)} file name, or a folder")
    used: set[str] = set()
    out = []
    for v in videos:
        stem, k = v.stem, 1
        while stem.lower() in used:  # lower case: one file on case-insensitive file systems
            k += 1
            stem = f"{v.stem}_{k}"
        used.add(stem.lower())
        out.append(target / f"{stem}{default_name}")
    return out


def cli_main(args) -> int:
    """``microact predict VIDEO... [--model] [--config] [--checkpoint] [--detector] [--top-k] [--json] [--annotate]
    [--window S [--stride S] [--timeline PNG]]``."""
    from microact.engine.distributed import resolve_device

    videos = _expand_videos([Path(v) for v in args.videos])
    if args.top_k < 1:
        raise PredictError(f"--top-k must be >= 1, got {args.top_k}")
    window, stride = getattr(args, "window", None), getattr(args, "stride", None)
    timeline_arg = getattr(args, "timeline", None)
    if window is None and (stride is not None or timeline_arg):
        raise PredictError("--stride and --timeline need --window SECONDS (the length of the sliding windows)")
    for name, value in (("--window", window), ("--stride", stride)):
        if value is not None and not value > 0:
            raise PredictError(f"{name} must be a positive number of seconds, got {value}")
    targets = _output_targets(videos, args.annotate, "--annotate", (".mp4", ".gif"), "_annotated.mp4")
    timelines = _output_targets(videos, timeline_arg, "--timeline", (".png",), "_timeline.png")
    cfg = build_predictor_config(args.model, args.config, checkpoint=args.checkpoint)
    taxonomy = predictor_taxonomy(cfg, args.checkpoint)
    device = resolve_device(args.device, option="--device")
    model = load_model(cfg, args.checkpoint, device, taxonomy)
    predictions = []
    failed = []  # videos that could not be read: with several videos, the others are still predicted
    for video, target, timeline in zip(videos, targets, timelines):
        top_k = min(args.top_k, taxonomy.num_fine)
        try:
            if window is None:
                pred = predict_video(model, cfg, video, device, detector=args.detector, top_k=top_k,
                                     taxonomy=taxonomy)
            else:
                pred = predict_timeline(model, cfg, video, device, window_s=window, stride_s=stride,
                                        detector=args.detector, top_k=top_k, taxonomy=taxonomy)
        except MicroactError as e:
            if len(videos) == 1:
                raise
            print(f"error: {e} (skipped)", file=sys.stderr)
            failed.append({"video": str(video), "error": str(e)})
            continue
        pred["untrained"] = not args.checkpoint
        predictions.append(pred)
        print(format_prediction(pred, taxonomy))
        if timeline is not None:
            from microact.plots.results import plot_timeline

            print(f"  wrote {plot_timeline(pred, timeline, taxonomy=taxonomy)}")
        if target is not None:
            # a timeline's annotation shows how the labels change: about 5 frames per second, up to 3000
            frames = 300 if window is None else max(300, min(3000, round(pred["num_frames"] / pred["fps"] * 5)))
            print(f"  wrote {annotate(video, pred, target, max_frames=frames)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {"model": cfg.model.preset, "checkpoint": args.checkpoint, "predictions": predictions, "failed": failed}
        if not taxonomy.is_ma52:  # the classes the ids mean (MA-52's files stay as they were)
            doc["taxonomy"] = taxonomy.to_dict()
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    if failed:
        print(f"{len(failed)} of {len(videos)} videos could not be predicted: "
              f"{', '.join(f['video'] for f in failed)}", file=sys.stderr)
        return 1
    return 0
