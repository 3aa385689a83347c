"""`camelid generate` for real: the embedded teacher, a llama.cpp server with many requests in flight, and
kill -9 followed by a rerun. Token budgets are tiny; the small model writes poor tasks, but every step runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.generate import alpaca
from camelid.generate.filters import INSTANCE_REASONS, INSTRUCTION_REASONS
from camelid.generate.generator import GenerateConfig, generate, sidecar_paths
from camelid.generate.prompts import default_seeds, load_seeds, prompt_file
from camelid.generate.quality import OUTPUT_REASONS

ROW_KEYS = {"instruction", "input", "output", "most_similar_instructions", "avg_similarity_score"}
REASONS = set(INSTRUCTION_REASONS) | set(INSTANCE_REASONS) | set(OUTPUT_REASONS) | {
    "malformed", "truncated", "empty_output", "no_valid_instances"}
# greedy decoding and a seed under which the embedded model's first replies hold well-formed tasks
GREEDY = dict(temperature=0.0, max_tokens=128, seed=1, request_batch_size=1)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def check_outputs(out: Path, seeds: set[str]) -> list[dict]:
    """Every file is whole JSONL; kept rows are Alpaca rows with Stanford's fields; nothing kept twice."""
    rows = jsonl(out)
    rejected_path, requests_path = sidecar_paths(out)
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["instruction"].strip() and row["output"].strip() and isinstance(row["input"], str)
        assert 0 < len(row["most_similar_instructions"]) <= 10
        assert all(0 <= s <= 0.7 for s in row["most_similar_instructions"].values())
        assert 0 <= row["avg_similarity_score"] <= 0.7
        assert row["instruction"] not in seeds
    assert len({(r["instruction"], r["input"], r["output"]) for r in rows}) == len(rows)
    for rej in jsonl(rejected_path):
        assert rej["reason"] in REASONS and isinstance(rej["request"], int)
    for req in jsonl(requests_path):
        assert req["prompt"] and ("error" in req or (isinstance(req["reply"], str) and req["finish_reason"]))
    return rows


@pytest.mark.slow
def test_alpaca_mode_with_the_embedded_teacher_writes_valid_alpaca_rows(tmp_path, embedded):
    out = tmp_path / "out.jsonl"
    rep = generate(GenerateConfig(output=out, num=1, max_requests=8, **GREEDY), model=embedded, show_progress=False)
    seeds = {t.instruction for t in load_seeds(default_seeds("en"))}
    rows = check_outputs(out, seeds)
    assert rep.kept == len(rows) == 1
    requests = jsonl(sidecar_paths(out)[1])
    assert rep.requests == len(requests) >= 1
    first = requests[0]
    # the logged prompt is Stanford's encode_prompt over 3 seed tasks drawn with random.Random("<seed>:<k>")
    expected = alpaca.sample_prompt(prompt_file("alpaca_en"), load_seeds(default_seeds("en")), random.Random("1:0"))
    assert (first["request"], first["step"], first["prompt"]) == (0, "alpaca", expected)
    assert first["usage"]["prompt_tokens"] > 300 and 0 < first["usage"]["completion_tokens"] <= 128
    assert rep.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in requests)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_prompts(tmp_path, embedded):
    def prompts(name: str, seed: int) -> list[str]:
        cfg = GenerateConfig(output=tmp_path / name, num=50, max_requests=3, max_tokens=1, seed=seed)
        generate(cfg, model=embedded, show_progress=False)
        return [r["prompt"] for r in jsonl(sidecar_paths(tmp_path / name)[1])]

    a, b, c = prompts("a.jsonl", 7), prompts("b.jsonl", 7), prompts("c.jsonl", 8)
    assert a == b and len(a) == 3 and len(set(a)) == 3
    assert c != a


@pytest.mark.slow
def test_self_instruct_mode_runs_the_four_steps(tmp_path, embedded):
    out = tmp_path / "si.jsonl"
    cfg = GenerateConfig(output=out, mode="self-instruct", num=1, max_requests=6, max_tokens=64,
                         instance_max_tokens=96, temperature=0.0, seed=1, request_batch_size=1)
    rep = generate(cfg, model=embedded, show_progress=False)
    rows = check_outputs(out, {t.instruction for t in load_seeds(default_seeds("en"))})
    steps = [r["step"] for r in jsonl(sidecar_paths(out)[1])]
    assert {"bootstrap", "classify", "instances"} <= set(steps)
    first = jsonl(sidecar_paths(out)[1])[0]
    assert first["prompt"].startswith("Come up with a series of tasks:\n1. ") and first["prompt"].endswith("\n9.")
    assert rep.kept == len({r["instruction"] for r in rows}) == 1
    assert 1 <= len(rows) <= cfg.max_instances


@pytest.mark.slow
def test_concurrent_requests_against_a_real_openai_compatible_server(tmp_path, llama_server):
    out = tmp_path / "out.jsonl"
    cfg = GenerateConfig(output=out, model="openai:smollm2", base_url=[llama_server.url], num=50, max_requests=4,
                         concurrency=4, max_tokens=24, seed=3)
    rep = generate(cfg, show_progress=False)
    assert rep.kept == len(check_outputs(out, set())) and rep.failed_requests == 0
    requests = jsonl(sidecar_paths(out)[1])
    assert sorted(r["request"] for r in requests) == [0, 1, 2, 3]
    # all four were in flight at once: each started before the first one finished
    first_done = min(r["time"] + r["latency_s"] for r in requests)
    assert all(r["time"] < first_done for r in requests)
    assert all(r["usage"]["completion_tokens"] > 0 for r in requests)


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(tmp_path, llama_server):
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "camelid", "generate", "-o", str(out), "--num", "3", "--model", "openai:smollm2",
            "--base-url", llama_server.url, "--concurrency", "2", "--temperature", "0", "--max-tokens", "128",
            "--seed", "1", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 900
    try:
        while not jsonl_lines(out) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = jsonl_lines(out)
    assert before, f"nothing kept before the deadline: {proc.stderr.read().decode()[-2000:]}"
    with open(out, "a", encoding="utf-8") as f:  # as if the kill had landed in the middle of a write
        f.write('{"instruction": "torn wri')
    n_requests = len(jsonl(sidecar_paths(out)[1]))

    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    rows = check_outputs(out, {t.instruction for t in load_seeds(default_seeds("en"))})
    assert len(rows) == 3
    assert out.read_text(encoding="utf-8").splitlines()[: len(before)] == before  # nothing kept was lost
    requests = jsonl(sidecar_paths(out)[1])
    assert len(requests) > n_requests
    assert len({r["request"] for r in requests}) == len(requests)  # the rerun asked new prompts, not old ones

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)  # target reached: nothing to do
    assert again.returncode == 0 and len(jsonl(out)) == 3 and len(jsonl(sidecar_paths(out)[1])) == len(requests)


def jsonl_lines(path: Path) -> list[str]:
    """Complete lines only (a line still being written has no newline yet)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return text.splitlines()[: text.count("\n")]


def test_generate_command_reports_user_errors(tmp_path, capsys):
    assert main(["generate", "--num", "1"]) == 1
    assert "no output file" in capsys.readouterr().err
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"question": "not an alpaca row"}\n')
    assert main(["generate", "-o", str(foreign), "--num", "1"]) == 1
    assert f"{foreign}:1: field 'instruction'" in capsys.readouterr().err
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("mode: alpaca\nnum: -3\n")
    assert main(["generate", "--config", str(cfg), "-o", str(tmp_path / "x.jsonl")]) == 1
    assert "field 'num'" in capsys.readouterr().err
