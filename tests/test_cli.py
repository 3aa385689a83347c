"""The command line explains itself: every command's --help works; usage errors are one message, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import typer

from camelid.cli import app, main


def all_commands() -> list[list[str]]:
    """Every command path in the CLI tree, e.g. ['data', 'validate']."""
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd, path):
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    walk(root, [])
    return out


def test_every_command_and_subcommand_has_help_that_explains_it(capsys):
    paths = all_commands()
    names = {" ".join(p) for p in paths}
    for expected in ("ask", "data validate", "data convert", "data stats", "data show", "data render", "data dedup",
                     "data clean", "data split", "generate", "train", "export", "weights diff", "weights apply",
                     "model check", "chat", "serve", "eval answer", "eval judge", "eval report", "eval bench",
                     "arena", "run", "tokenizer extend", "tokenizer stats"):
        assert expected in names, f"missing command: camelid {expected}"
    for path in paths:
        assert main(path + ["--help"]) == 0, path
        text = capsys.readouterr().out
        assert "Usage:" in text
        if path:  # a leaf or group says what it is for
            assert len(text.split()) > 12, f"camelid {' '.join(path)} --help says too little"


def test_a_missing_argument_is_a_usage_error_not_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "camelid", "ask"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Missing argument" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unknown_model_spec_is_one_line_and_exit_1():
    proc = subprocess.run([sys.executable, "-m", "camelid", "ask", "--model", "banana", "hi"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "model spec 'banana'" in proc.stderr
