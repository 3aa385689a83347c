"""Real HTTP servers on loopback for backend tests: llama.cpp's OpenAI server and a fault-injecting one."""

from __future__ import annotations

import hashlib
import json
import random
import re
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


WORDS = ("explain describe compare summarize classify list suggest rewrite translate evaluate estimate name choose "
         "the a an of for with about between two three several common simple short long modern ancient local "
         "healthy quiet famous useful strange river mountain city garden kitchen school market library bridge "
         "winter summer history science music poetry weather travel budget recipe language habit friendship "
         "planet ocean forest desert village engine bicycle letter story question answer reason method plan").split()


class TeacherServer:
    """A fast, deterministic OpenAI-compatible teacher (/v1/completions and /v1/chat/completions) for `generate`:
    each reply is a numbered Alpaca task list drawn from a hash of the prompt, so the same prompt always gets the
    same reply whatever the order or the concurrency. A few tasks repeat an earlier one (near-duplicates), a few
    are malformed, and replies come back after a small random delay, out of order."""

    def __init__(self, tasks: int = 5, max_delay: float = 0.02):
        self.tasks, self.max_delay = tasks, max_delay
        self.hits = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = json.dumps({"object": "list", "data": [{"id": "teacher", "object": "model"}]}).encode()
                self._send(body)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with server.lock:
                    server.hits += 1
                prompt = req.get("prompt") or "".join(m["content"] for m in req.get("messages", []))
                text = server.reply(prompt)
                time.sleep(server.max_delay * (int(hashlib.sha256(prompt.encode()).hexdigest()[:4], 16) / 65535))
                usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                         "total_tokens": (len(prompt) + len(text)) // 4}
                if "messages" in req:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    body = {"id": "t", "object": "chat.completion", "created": 0, "model": "teacher",
                            "choices": [choice], "usage": usage}
                else:
                    body = {"id": "t", "object": "text_completion", "created": 0, "model": "teacher",
                            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                            "usage": usage}
                try:
                    self._send(json.dumps(body).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, body: bytes) -> None:
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

    def reply(self, prompt: str) -> str:
        """The continuation of an Alpaca prompt (which ends with `4. Instruction:`): tasks 4, 5, ..."""
        rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
        m = re.search(r"(\d+)\. Instruction:\s*$", prompt)
        n = int(m.group(1)) if m else 1
        pieces, earlier = [], []
        for j in range(self.tasks):
            if earlier and rng.random() < 0.15:
                inst = earlier[0]  # a near-duplicate of an earlier task
            else:
                inst = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
                earlier.append(inst)
            if rng.random() < 0.1:
                pieces.append(f" {inst}\n{n + j}. Output:\nmissing its input label\n")  # malformed
            else:
                pieces.append(f" {inst}\n{n + j}. Input:\n<noinput>\n{n + j}. Output:\n"
                              + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + "\n")
        return "###\n".join(p if i == 0 else f"{n + i}. Instruction:{p}" for i, p in enumerate(pieces)) + "###\n"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
