"""`microact info`: what this installation can do (versions, devices, decoders, detectors)."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check(module: str, attr_check=None) -> tuple[bool, str]:
    """Import ``module`` and optionally run ``attr_check(mod)``; return (ok, note)."""
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable", reported as such
        return False, f"{type(e).__name__}: {e}".splitlines()[0][:120]
    if attr_check is not None:
        try:
            note = attr_check(mod)
        except Exception as e:  # noqa: BLE001
            return False, f"{type(e).__name__}: {e}".splitlines()[0][:120]
        return True, note or ""
    return True, ""


def _haar_note(cv2) -> str:
    if not (hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "data")):
        raise RuntimeError("this OpenCV has no Haar cascades (OpenCV 5 removed them; install opencv-python-headless<5)")
    return "frontal face cascade"


def collect_info() -> dict:
    """Gather versions, devices and optional capabilities as a plain dict."""
    import torch

    from microact import __version__
    from microact.engine.train import cpu_has_native_bf16
    from microact.models.videomae import sdpa_kernel_in_use

    cuda = torch.cuda.is_available()
    devices = [{"type": "cpu", "threads": torch.get_num_threads(),
                "capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")(),
                "hardware_bf16": cpu_has_native_bf16()}]
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"type": "cuda", "index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                            "bf16": torch.cuda.is_bf16_supported(),
                            # what SDPA picks for ViT-B training in bf16 under model.sdpa_kernel=auto
                            "attention_kernel": sdpa_kernel_in_use(f"cuda:{i}", torch.bfloat16)})

    decoders = {
        "pyav": _check("av", lambda m: f"{m.__version__} (libavcodec {'.'.join(map(str, m.library_versions.get('libavcodec', ())))})"),
        "decord": _check("decord", lambda m: getattr(m, "__version__", "")),
        "opencv": _check("cv2", lambda m: m.__version__),
    }
    detectors = {
        "mediapipe": _check("mediapipe", lambda m: f"{_version('mediapipe')} pose: {'yes' if hasattr(m, 'solutions') else 'no (needs 0.10.21)'}"),
        "haar": _check("cv2", _haar_note),
        "yolo (ultralytics)": _check("ultralytics", lambda m: m.__version__),
        "onnx (onnxruntime)": _check("onnxruntime", lambda m: m.__version__),
    }
    packages = {name: _version(name) for name in
                ("torch", "numpy", "av", "opencv-python-headless", "safetensors", "decord", "mediapipe", "transformers",
                 "scikit-learn", "matplotlib", "tensorboard", "onnx", "onnxruntime", "onnxscript")}
    return {
        "microact": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "devices": devices,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "decoders": {k: {"available": ok, "note": note} for k, (ok, note) in decoders.items()},
        "detectors": {k: {"available": ok, "note": note} for k, (ok, note) in detectors.items()},
        "packages": packages,
    }


def cli_main(args) -> int:
    info = collect_info()
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
        return 0
    print(f"microact {info['microact']}  python {info['python']}  torch {info['torch']}  ({info['platform']})")
    for d in info["devices"]:
        if d["type"] == "cpu":
            print(f"  device cpu: {d['threads']} threads, SIMD {d['capability']}, "
                  + ("hardware bf16" if d["hardware_bf16"] else "no hardware bf16 (training on it runs fp32)"))
        else:
            print(f"  device cuda:{d['index']}: {d['name']}, {d['memory_gib']} GiB, bf16 {'yes' if d['bf16'] else 'no'}, "
                  f"ViT-B attention kernel {d['attention_kernel']}")
    if info["cuda"] is None:
        print("  no CUDA device: training and tests run on the CPU")
    for title in ("decoders", "detectors"):
        print(f"{title}:")
        for name, entry in info[title].items():
            mark = "yes" if entry["available"] else "no "
            print(f"  [{mark}] {name:20s} {entry['note']}")
    missing = [k for k, v in info["packages"].items() if v is None]
    if missing:
        print("not installed (optional): " + ", ".join(missing))
    return 0
