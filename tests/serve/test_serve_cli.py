"""`camelid serve` as a user runs it: a subprocess on a loopback port, stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_with_its_key_and_name_and_stops_on_ctrl_c():
    port = free_port()
    env = {**os.environ, "CAMELID_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "camelid", "serve", "--port", str(port), "--model-name", "smol",
                             "--n-ctx", "1024"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"}).json()
        assert [m["id"] for m in models["data"]] == ["smol"]
        r = httpx.post(url + "/v1/completions", headers={"Authorization": "Bearer k3y"}, timeout=60,
                       json={"model": "smol", "prompt": "Hello", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["model"] == "smol"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err
    assert "POST /v1/completions 200 prompt_tokens=" in err  # the access log, on stderr
    assert "GET /v1/models 401 " in err
