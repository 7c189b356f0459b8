"""filekind.sniff names what a file is from its first bytes (for "wrong file given" messages)."""
from __future__ import annotations

import pickle

import numpy as np
import torch
from safetensors.torch import save_file

from microact import filekind
from microact.filekind import sniff


def test_each_kind_is_named(tmp_path, make_video):
    save_file({"w": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    torch.save({"w": torch.zeros(3)}, tmp_path / "w.pth")
    np.savez(tmp_path / "r.npz", a=np.zeros(2))
    with open(tmp_path / "r.pkl", "wb") as f:
        pickle.dump([{"pred_score": [0.5, 0.5]}], f, protocol=4)
    (tmp_path / "r.yaml").write_text("data:\n  root: x\n")
    (tmp_path / "m.json").write_text('{"f1_mean": 0.5}')
    (tmp_path / "g.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    video = make_video("clip.mp4")
    assert sniff(tmp_path / "w.safetensors") == filekind.SAFETENSORS
    assert sniff(tmp_path / "w.pth") == filekind.ZIP  # torch.save writes a zip
    assert sniff(tmp_path / "r.npz") == filekind.ZIP
    assert sniff(tmp_path / "r.pkl") == filekind.PICKLE
    assert sniff(video) == filekind.VIDEO
    assert sniff(tmp_path / "g.onnx") == filekind.ONNX
    assert sniff(tmp_path / "r.yaml") == "a YAML file"
    assert sniff(tmp_path / "m.json") == "a JSON file"
    assert sniff(tmp_path) == filekind.FOLDER
    assert sniff(tmp_path / "missing.yaml") is None


def test_text_that_is_not_utf8_is_no_kind(tmp_path):
    # a recipe saved as Latin-1 keeps its own "not valid UTF-8" message; a multi-byte character cut at the end of
    # the sniffed sample is still text
    (tmp_path / "latin1.yaml").write_bytes("description: caf\xe9 recipe\n".encode("latin-1"))
    assert sniff(tmp_path / "latin1.yaml") is None
    (tmp_path / "long.yaml").write_bytes(b"a" * 1023 + "\u00e9".encode())  # byte 1024 is the 2nd byte of the e-acute
    assert sniff(tmp_path / "long.yaml") == "a YAML file"
    # a safetensors-looking header whose length exceeds the file is not safetensors
    (tmp_path / "fake.bin").write_bytes((10 ** 6).to_bytes(8, "little") + b"{}")
    assert sniff(tmp_path / "fake.bin") != filekind.SAFETENSORS
