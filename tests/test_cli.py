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
