"""`camelid generate` stopped by SIGINT, SIGTERM or SIGKILL at random moments, with many requests in flight, ends
after resumes byte-identical to a run that was never stopped; one writer per output; counters that hold across
resumes; sidecars that are checked, not trusted."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.generate.journal import rounds_path
from camelid.generate.generator import GenerateConfig, generate, sidecar_paths
from tests.models.servers import TeacherServer


@pytest.fixture(scope="module")
def teacher():
    server = TeacherServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(teacher, tmp_path_factory):
    """The output of a run never stopped, per (num, concurrency), made once."""
    made: dict = {}

    def get(num: int, concurrency: int) -> Path:
        if (num, concurrency) not in made:
            out = tmp_path_factory.mktemp("reference") / "out.jsonl"
            finish(argv(out, teacher.url, num, concurrency))
            assert lines(out) == num
            made[num, concurrency] = out
        return made[num, concurrency]

    return get


def argv(out: Path, url: str, num: int = 120, concurrency: int = 16, *extra: str) -> list[str]:
    return [sys.executable, "-m", "camelid", "generate", "-o", str(out), "--num", str(num), "--model", "openai:teacher",
            "--base-url", url, "--concurrency", str(concurrency), "--seed", "1", "--quiet", *extra]


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def finish(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def stop_at_random(args: list[str], out: Path, sig: int, rng: random.Random, num: int) -> subprocess.Popen:
    """Start a run and send `sig` once OUT has a random number of lines (or after a random time)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # once the command runs (its lock is taken; a signal during Python's own start-up is Python's business), and in
    # most tries once the requests go out (importing the OpenAI client takes longer than generating here)
    started = out.with_name(f".{out.name}.lock") if rng.random() < 0.3 else sidecar_paths(out)[1]
    while proc.poll() is None and not started.exists():
        time.sleep(0.002)
    want = rng.randrange(0, num)
    deadline = time.time() + rng.uniform(0.5, 8.0)
    while proc.poll() is None and lines(out) < want and time.time() < deadline:
        time.sleep(0.002)
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(120)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [16, 1])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_run_stopped_at_random_moments_ends_byte_identical(tmp_path, teacher, reference, sig, concurrency):
    num = 120 if concurrency > 1 else 40
    ref = reference(num, concurrency)

    rng = random.Random(f"{sig}:{concurrency}")
    out = tmp_path / "cut" / "out.jsonl"
    out.parent.mkdir()
    for _ in range(3):
        proc = stop_at_random(argv(out, teacher.url, num, concurrency), out, sig, rng, num)
        err = proc.stderr.read()
        assert "Traceback" not in err, err
        if proc.returncode == 0:
            continue
        if proc.returncode in (-signal.SIGTERM, -signal.SIGINT) and not err:  # before camelid ran: nothing to say
            continue
        if sig != signal.SIGKILL:  # it says so, and what it kept
            # 130/143, or death by the signal itself (Python's own way out of an uncaught Ctrl-C): a shell sees 130/143
            assert proc.returncode in ((130, -signal.SIGINT) if sig == signal.SIGINT else (143, -signal.SIGTERM)), err
            said = err[err.find("camelid: interrupted"):]  # a resumed run first says what it resumes
            assert err[:len(err) - len(said)] in ("", *([err[:len(err) - len(said)]] if err.startswith("resuming ")
                                                        else [])), err
            assert re.fullmatch(r"camelid: interrupted(; kept \d+ instructions in .*|; .* is as it was; .*| while "
                                r"starting; nothing was written)\n", said), err
    finish(argv(out, teacher.url, num, concurrency))

    assert out.read_bytes() == ref.read_bytes()
    assert sidecar_paths(out)[0].read_bytes() == sidecar_paths(ref)[0].read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    # a reply logged before a stop was used, not asked again
    replies: dict = {}
    for row in map(json.loads, sidecar_paths(out)[1].read_text().splitlines()):
        if "reply" in row:
            replies[row["request"]] = replies.get(row["request"], 0) + 1
    assert set(replies.values()) == {1}


@pytest.mark.slow
def test_replies_in_flight_at_a_kill_are_processed_on_resume(tmp_path, teacher):
    out = tmp_path / "out.jsonl"
    ref = tmp_path / "ref.jsonl"
    finish(argv(ref, teacher.url, 200, 16, "--request-batch-size", "64"))
    proc = subprocess.Popen(argv(out, teacher.url, 200, 16, "--request-batch-size", "64"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and lines(sidecar_paths(out)[1]) < 20:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = {json.loads(x)["request"] for x in sidecar_paths(out)[1].read_text().splitlines()}
    finish(argv(out, teacher.url, 200, 16, "--request-batch-size", "64"))
    asked_again = [json.loads(x)["request"] for x in sidecar_paths(out)[1].read_text().splitlines()]
    assert len(asked_again) == len(set(asked_again))  # the logged ones were not asked twice
    assert logged <= set(asked_again)
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.slow
def test_a_second_writer_on_the_same_output_is_refused(tmp_path):
    slow = TeacherServer(max_delay=0.5)
    try:
        out = tmp_path / "out.jsonl"
        first = subprocess.Popen(argv(out, slow.url, 5000, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while not sidecar_paths(out)[1].exists() and time.time() < deadline:
                time.sleep(0.05)
            second = subprocess.run(argv(out, slow.url, 5000, 2), capture_output=True, text=True, timeout=120)
            assert second.returncode == 1
            assert f"camelid: error: {out}: another process (pid {first.pid}) is writing it" in second.stderr
        finally:
            first.send_signal(signal.SIGINT)
            first.wait(60)
        assert first.returncode == 130
    finally:
        slow.close()


def test_max_requests_and_the_counters_hold_across_resumes(tmp_path, teacher):
    out = tmp_path / "out.jsonl"
    cfg = dict(output=out, model="openai:teacher", base_url=[teacher.url], num=10_000, concurrency=4, seed=2)
    first = generate(GenerateConfig(**cfg, max_requests=6), show_progress=False)
    assert first.stopped and first.totals.requests == 6
    second = generate(GenerateConfig(**cfg, max_requests=10), show_progress=False)
    third = generate(GenerateConfig(**cfg, max_requests=10), show_progress=False)  # nothing left to ask
    log = [json.loads(x) for x in sidecar_paths(out)[1].read_text().splitlines()]
    assert sorted(r["request"] for r in log) == list(range(10))
    assert (second.requests, third.requests) == (4, 0)
    assert third.totals.requests == 10
    assert third.totals.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in log)
    assert third.total_seconds >= second.total_seconds > 0


@pytest.mark.parametrize("bad, where", [
    ('{"request": 0, "step": "alpaca", "prompt": "p", "reply": "r", "finish_reason": "stop", "usage": [1]}',
     "requests.jsonl:2: field 'usage'"),
    ('{"request": "zero", "step": "alpaca", "prompt": "p", "error": "x"}', "requests.jsonl:2: field 'request'"),
    ('[1, 2]', "requests.jsonl:2: expected an object"),
])
def test_a_hostile_request_log_row_is_a_located_error(tmp_path, capsys, teacher, bad, where):
    out = tmp_path / "out.jsonl"
    generate(GenerateConfig(output=out, model="openai:teacher", base_url=[teacher.url], num=3, max_requests=1),
             show_progress=False)
    log = sidecar_paths(out)[1]
    keep = log.read_text().splitlines()[0]
    log.write_text(keep + "\n" + bad + "\n")
    code = main(["generate", "-o", str(out), "--num", "5", "--model", "openai:teacher", "--base-url", teacher.url])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and where in err, err


def test_a_complete_line_that_is_not_json_is_reported_not_cut(tmp_path, capsys, teacher):
    out = tmp_path / "out.jsonl"
    generate(GenerateConfig(output=out, model="openai:teacher", base_url=[teacher.url], num=3, max_requests=1),
             show_progress=False)
    n = lines(out)
    with open(out, "a") as f:
        f.write("this line was typed by hand\n")
    code = main(["generate", "-o", str(out), "--num", "5", "--model", "openai:teacher", "--base-url", teacher.url])
    err = capsys.readouterr().err
    assert code == 1 and f"{out}:{n + 1}: malformed JSON" in err
    assert lines(out) == n + 1  # nothing cut without a word
    with open(out, "a") as f:
        f.write('{"instruction": "torn')  # a torn tail, without its newline, is cut silently
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:n]) + '{"instruction": "torn')
    assert main(["generate", "-o", str(out), "--num", "5", "--model", "openai:teacher", "--base-url",
                 teacher.url]) == 0
    assert rounds_path(out).exists()
