"""Real HTTP servers on loopback for backend tests: llama.cpp's OpenAI server and a fault-injecting one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class LlamaCppServer:
    """`python -m llama_cpp.server` with the embedded GGUF on a free loopback port."""

    def __init__(self, gguf: str, n_ctx: int = 2048, n_threads: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port",
             str(self.port), "--n_ctx", str(n_ctx), "--model_alias", "smollm2"]
            + (["--n_threads", str(n_threads)] if n_threads else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/models", self.proc)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


OK_CHAT = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class FaultServer:
    """Answers /v1/chat/completions from a script of faults, then succeeds. Each step is one of:
    ("status", code, headers) | ("sleep", seconds) | ("garbage",) | ("ok",)."""

    def __init__(self, script: list[tuple] | None = None, default: tuple = ("ok",)):
        self.script = list(script or [])
        self.default = default
        self.hits: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with server.lock:
                    server.hits.append(time.monotonic())
                    step = server.script.pop(0) if server.script else server.default
                try:
                    self._answer(step)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _answer(self, step):
                kind = step[0]
                if kind == "sleep":
                    time.sleep(step[1])
                    step = ("ok",)
                    kind = "ok"
                if kind == "status":
                    body = json.dumps({"error": {"message": f"injected {step[1]}", "type": "test"}}).encode()
                    self.send_response(step[1])
                    for k, v in (step[2] if len(step) > 2 else {}).items():
                        self.send_header(k, v)
                elif kind == "garbage":
                    body = b"<html>502 bad gateway from a proxy</html>"
                    self.send_response(200)
                else:
                    body = json.dumps(OK_CHAT).encode()
                    self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
