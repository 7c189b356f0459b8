"""The `microact` command line: every subcommand has help with defaults; info works; errors are one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from microact.cli import _HANDLERS, build_parser, main

COMMANDS = [key.split() for key in _HANDLERS]


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w) for w in COMMANDS])
def test_every_subcommand_has_help_with_defaults(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(words + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: microact " + " ".join(words) in out
    # options that take a value show their default, unless it is empty or the help states it already;
    # no help states a default twice
    parser = _subparser(words)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        shown = formatter._get_help_string(action)
        if action.nargs != 0 and action.default is not None and action.default is not False:  # 0 == False
            assert "default" in shown.lower(), action.option_strings
        assert shown.count("(default:") <= 1, action.option_strings
    assert "(default: None)" not in out and "(default: False)" not in out


def test_zero_default_is_shown(capsys):
    # 0 == False in Python: a default of 0 (--workers 0 = all cores) must still be shown as a default
    with pytest.raises(SystemExit):
        main(["crop", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "parallel processes (0 = all cores) (default: 0)" in out


def _subparser(words):
    parser = build_parser()
    for word in words:
        sub_action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub_action.choices[word]
    return parser


def test_every_handler_is_importable():
    import importlib

    for key, target in _HANDLERS.items():
        module_name, func = target.split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func)), key


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["decoders"]["pyav"]["available"] is True
    assert info["torch"]
    (cpu,) = [d for d in info["devices"] if d["type"] == "cpu"]
    from microact.engine.train import cpu_has_native_bf16

    assert cpu["hardware_bf16"] == cpu_has_native_bf16()


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "microact.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("microact ")


def test_config_error_is_one_clear_line(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope.yaml" in err and "Traceback" not in err


# ---- key=value overrides anywhere on the command line ----------------------------------------------

from microact.cli import parse_command_line  # noqa: E402


@pytest.mark.parametrize("argv, expected", [
    # an option's value that contains '=' stays the option's value
    (["train", "r.yaml", "--out", "a=b", "data.root=demo", "train.epochs=1"],
     {"out": "a=b", "overrides": ["data.root=demo", "train.epochs=1"]}),
    (["train", "r.yaml", "--out=a=b", "train.epochs=1"], {"out": "a=b", "overrides": ["train.epochs=1"]}),
    # overrides before and after options keep their order (the last one of a key wins)
    (["train", "r.yaml", "data.root=x", "--out", "runs/x", "--resume", "train.epochs=1"],
     {"out": "runs/x", "resume": True, "overrides": ["data.root=x", "train.epochs=1"]}),
    (["test", "r.yaml", "ckpt", "--split", "val", "data.root=x", "eval.test_clips=1"],
     {"checkpoint": "ckpt", "split": "val", "overrides": ["data.root=x", "eval.test_clips=1"]}),
    # "--" ends the options: what follows is overrides
    (["train", "r.yaml", "--out", "runs/x", "--", "train.epochs=1"], {"overrides": ["train.epochs=1"]}),
])
def test_overrides_are_taken_anywhere(argv, expected):
    args = parse_command_line(argv)
    for name, value in expected.items():
        assert getattr(args, name) == value, name


@pytest.mark.parametrize("argv, stray", [
    (["train", "r.yaml", "--out", "runs/x", "stray"], "stray"),
    (["train", "r.yaml", "--out", "runs/x", "--bogus=1"], "--bogus=1"),
    (["train", "r.yaml", "--out", "runs/x", "--", "stray"], "stray"),
    (["test", "r.yaml", "ckpt", "--split", "val", "stray"], "stray"),
    (["predict", "a.mp4", "--top-k", "3", "x=1"], "x=1"),  # predict takes no overrides
])
def test_unrecognised_arguments_show_the_subcommands_usage(argv, stray, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: microact {argv[0]} " in err and "usage: microact [-h]" not in err
    assert f"microact {argv[0]}: error: unrecognized arguments: {stray}" in err


@pytest.mark.parametrize("argv, missing", [
    (["export", "w.safetensors"], "out"),
    (["test", "r.yaml"], "checkpoint"),
    (["train", "--out", "runs/x"], "config"),
])
def test_a_missing_argument_is_named_without_the_optional_overrides(argv, missing, capsys):
    # the overrides are optional: argparse listed them as required next to the argument actually missing
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"microact {argv[0]}: error: the following arguments are required: {missing}\n" in err, err
    assert parse_command_line(argv[:1] + ["a", "b"] + (["--out", "x"] if argv[0] == "train" else [])).overrides == \
        (["b"] if argv[0] == "train" else [])


def test_late_override_reaches_the_config(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run"), "train.epoch=1"])
    assert code == 2 and "nope.yaml: config file not found" in capsys.readouterr().err


# ---- data.root and the list keys are checked before a run creates anything -------------------------


def _recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("description: cli test\n")
    return str(path)


def test_train_with_a_missing_data_root_names_it_and_creates_nothing(tmp_path, capsys):
    nope, run = tmp_path / "nope", tmp_path / "run"
    code = main(["train", _recipe(tmp_path), "--out", str(run), f"data.root={nope}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"data.root={nope}: no such folder" in err, err
    assert not run.exists()


def test_train_with_a_missing_list_names_the_key(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train_list_videos.txt").write_text("")
    code = main(["train", _recipe(tmp_path), "--out", str(tmp_path / "run"), f"data.root={tmp_path / 'data'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.train_lists: " in err and "val_list_videos.txt not found" in err, err
    assert "list files there: train_list_videos.txt" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split, key", [("test", "data.test_list"), ("val", "data.val_list")])
def test_test_with_a_missing_root_or_list_names_the_key(tmp_path, capsys, split, key):
    nope = tmp_path / "nope"
    argv = ["test", _recipe(tmp_path), str(tmp_path / "missing.safetensors"), "--split", split,
            "data.val_list=val_list_videos.txt"]
    assert main(argv + [f"data.root={nope}"]) == 2
    assert f"data.root={nope}: no such folder" in capsys.readouterr().err
    assert main(argv + [f"data.root={tmp_path}"]) == 2  # the folder exists, the list does not
    err = capsys.readouterr().err
    assert f"{key}: " in err and "not found" in err, err
