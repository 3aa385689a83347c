"""Stopping local generations: Ctrl-C ends a running llama.cpp generation at its next token (not after
max_tokens), later requests run as usual, and closing a model under a running decode does not crash the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from camelid.models import Sampling, embedded_gguf, load_model
from camelid.models.base import Cancelled
from tests.train.conftest import embedded_dir, tiny_model, tokenizer  # noqa: F401 (fixtures)

END_TOKENS = {0: -100.0, 2: -100.0}  # SmolLM2's <|endoftext|> and <|im_end|>: a reply that cannot end by itself
LONG = Sampling(temperature=0, max_tokens=2000, stop=[], logit_bias=END_TOKENS)
PROMPT = "Count from 1 to 1000, one number per line.\n1\n2\n3\n"


def run_in_thread(model, sampling=LONG):
    box: dict = {}

    def go():
        try:
            box["text"] = "".join(c.text for c in model.stream(PROMPT, sampling))
        except BaseException as e:  # noqa: BLE001 (what the thread ended with is the result)
            box["error"] = e

    t = threading.Thread(target=go)
    t.start()
    return t, box


def test_interrupt_stops_a_running_generation_at_its_next_token_and_the_next_one_runs(embedded):
    t, box = run_in_thread(embedded)
    time.sleep(1.0)
    t0 = time.perf_counter()
    embedded.interrupt()
    t.join(30)
    assert not t.is_alive() and time.perf_counter() - t0 < 5
    assert isinstance(box.get("error"), Cancelled), box
    again = embedded.complete(PROMPT, Sampling(temperature=0, max_tokens=4))
    assert again.completion_tokens == 4  # the interruption ended only what was running


def test_closing_a_model_under_a_running_generation_waits_for_it_and_does_not_crash():
    # in a child process: a crash (use after free in llama.cpp) would take the test runner with it
    code = ("import threading, time\n"
            "from camelid.models import Sampling, load_model\n"
            "m = load_model('embedded', n_ctx=2048)\n"
            "err = []\n"
            "def go():\n"
            "    try:\n"
            f"        list(m.stream({PROMPT!r}, Sampling(temperature=0, max_tokens=2000, stop=[], "
            f"logit_bias={END_TOKENS!r})))\n"
            "    except BaseException as e:\n"
            "        err.append(type(e).__name__)\n"
            "t = threading.Thread(target=go); t.start(); time.sleep(1.0)\n"
            "m.close(); t.join(30)\n"
            "print('ended', err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ended ['Cancelled']" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_embedded_generation_ends_the_command_within_seconds(tmp_path, sig):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "camelid", "generate", "-o", str(out), "--num", "20",
                             "--max-tokens", "1500", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    maps, gguf = f"/proc/{proc.pid}/maps", embedded_gguf().name
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and gguf not in open(maps).read():
        time.sleep(0.1)  # llama.cpp maps the model once it has loaded it: the first request starts then
    time.sleep(2.0)
    assert proc.poll() is None
    t0 = time.perf_counter()
    os.kill(proc.pid, sig)
    proc.wait(60)
    took = time.perf_counter() - t0
    err = proc.stderr.read()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert err.strip().splitlines()[-1].startswith("camelid: interrupted; kept 0 instructions in"), err
    print(f"stopped in {took:.2f} s")
    assert took < 30, f"{took:.1f} s to stop"  # not the minutes 1,500 tokens take on a busy CPU


def test_interrupt_stops_a_transformers_generation_too(tiny_model):
    model = load_model(f"hf:{tiny_model}")
    try:
        t, box = run_in_thread(model, Sampling(temperature=0, max_tokens=100_000, stop=[], logit_bias=END_TOKENS))
        time.sleep(1.0)
        model.interrupt()
        t.join(60)
        assert not t.is_alive() and isinstance(box.get("error"), Cancelled), box
        assert model.complete(PROMPT, Sampling(temperature=0, max_tokens=3)).completion_tokens == 3
    finally:
        model.close()
