"""`camelid data validate|convert|stats|show` through the real entry point: output lines, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.cli import main

FIX = Path(__file__).parent / "fixtures"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_validate_lists_each_problem_then_a_summary_and_exits_1(capsys):
    code, out, _ = run(capsys, "validate", str(FIX / "wrong_type.jsonl"), str(FIX / "alpaca.json"))
    assert code == 1
    assert out.splitlines() == [
        f"{FIX / 'wrong_type.jsonl'}:2: field 'input': expected a string, got list",
        f"{FIX / 'wrong_type.jsonl'}:2: field 'output': expected a string, got number",
        f"{FIX / 'wrong_type.jsonl'}: alpaca, 2 records, 2 problems",
        f"{FIX / 'alpaca.json'}: alpaca, 8 records, ok",
        "2 files, 10 records: 2 problems",
    ]


@pytest.mark.parametrize("name, line", [
    ("malformed.jsonl", ":3: malformed JSON"),
    ("malformed_list.json", ":3: malformed JSON"),
    ("missing_field.json", ":7: field 'output': missing"),
    ("empty.jsonl", ": file is empty"),
    ("non_utf8.jsonl", ":2: not valid UTF-8"),
    ("roles_not_alternating.json", ":15: field 'conversations[1].from': 'human' out of turn"),
    ("unknown_format.jsonl", ":1: cannot tell the format"),
])
def test_validate_exits_1_on_each_broken_fixture(capsys, name, line):
    code, out, _ = run(capsys, "validate", str(FIX / name))
    assert code == 1
    assert out.startswith(f"{FIX / name}{line}")


def test_validate_accepts_every_reference_dataset(capsys, shared_data):
    files = ["self-instruct/seed_tasks.jsonl", "self-instruct/user_oriented_instructions.jsonl",
             "kullm/user_oriented_instructions_eval_ko.jsonl", "fastchat/dummy_conversation.json",
             "alpaca_eval/example_outputs.json", "fastchat/mt_bench_question.jsonl",
             "fastchat/vicuna_bench_question.jsonl"]
    code, out, _ = run(capsys, "validate", *(str(shared_data / f) for f in files))
    assert code == 0, out
    assert out.splitlines()[-1] == "7 files, 2,144 records: ok"


def test_validate_with_a_forced_or_unknown_format(capsys):
    code, out, _ = run(capsys, "validate", "--format", "openai", str(FIX / "openai.jsonl"))
    assert code == 0 and out.strip().endswith("openai, 2 records, ok")
    code, _, err = run(capsys, "validate", "--format", "csv", str(FIX / "openai.jsonl"))
    assert code == 1
    assert err.strip() == "camelid: error: unknown format 'csv': choose one of alpaca, seed-tasks, sharegpt, openai, " \
                          "mt-bench"


def test_convert_round_trip_through_the_cli(capsys, tmp_path):
    code, _, err = run(capsys, "convert", str(FIX / "alpaca.jsonl"), str(tmp_path / "sg.json"), "--to", "sharegpt")
    assert code == 0 and "wrote 8 records" in err
    code, _, _ = run(capsys, "convert", str(tmp_path / "sg.json"), str(tmp_path / "back.jsonl"), "--to", "alpaca",
                     "--from", "sharegpt")
    assert code == 0
    assert (tmp_path / "back.jsonl").read_bytes() == (FIX / "alpaca.jsonl").read_bytes()


def test_a_failed_convert_prints_one_error_line_and_writes_nothing(capsys, tmp_path):
    dst = tmp_path / "out.json"
    code, _, err = run(capsys, "convert", str(FIX / "sharegpt.json"), str(dst), "--to", "alpaca")
    assert code == 1
    assert err.startswith(f"camelid: error: {FIX / 'sharegpt.json'}:15: conversation 'conv_1' has 5 messages")
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    for argv in (["convert", str(FIX / "non_utf8.jsonl"), str(dst), "--to", "openai"],
                 ["convert", str(FIX / "alpaca.json"), str(dst), "--to", "vicuna"],
                 ["convert", str(tmp_path / "missing.json"), str(dst), "--to", "openai"]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and err.startswith("camelid: error: ")
    assert list(tmp_path.iterdir()) == []


def test_stats_json_and_plot(capsys, tmp_path):
    code, out, err = run(capsys, "stats", str(FIX / "generated.json"), "--json", "--plot", str(tmp_path / "s.png"))
    assert code == 0
    s = json.loads(out)
    assert s["rejected"]["total"] == 3 and s["similarity"]["records"] == 2
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_table_and_token_counts_with_a_model(capsys):
    code, out, _ = run(capsys, "stats", str(FIX / "openai.jsonl"), "--model", "embedded")
    assert code == 0
    assert "tokens: assistant" in out and "words: user" in out and "conversations" in out


def test_stats_and_show_fail_cleanly_on_broken_files(capsys):
    for cmd in ("stats", "show"):
        code, _, err = run(capsys, cmd, str(FIX / "unknown_format.jsonl"))
        assert code == 1 and err.startswith(f"camelid: error: {FIX / 'unknown_format.jsonl'}:1: cannot tell")


def test_show_prints_n_records(capsys):
    code, out, _ = run(capsys, "show", str(FIX / "seed_tasks.jsonl"), "-n", "2")
    assert code == 0
    assert "seed_task_0#0" in out and "seed_task_0#1" in out and "seed_task_1#0" not in out


@pytest.mark.parametrize("cmd", ["validate", "convert", "stats", "show"])
def test_every_command_explains_itself(capsys, cmd):
    code, out, _ = run(capsys, cmd, "--help")
    assert code == 0 and f"Usage: camelid data {cmd}" in out and ("--format" in out or "--from" in out)


def test_the_installed_command_runs(tmp_path):
    argv = [sys.executable, "-m", "camelid", "data", "validate", str(FIX / "conversation_problems.jsonl")]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("openai, 5 records, 4 problems")
