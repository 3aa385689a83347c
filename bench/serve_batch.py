"""Aggregate tokens/s and time to first token of `camelid serve` at 1, 4, 8 and 16 concurrent clients: camelid's
continuous batching against the one-at-a-time path and against llama-cpp-python's own server, in one run
(bench/serve.py measures the server's overhead over calling the backend directly).

    python bench/serve_batch.py [--requests 32] [--max-tokens 32] [--clients 1,4,8,16] [--threads 2]

Contenders (same GGUF, same threads, same prompts, greedy, streaming clients over real HTTP on 127.0.0.1):
- `batched`: `camelid serve` over the llama.cpp backend (several sequences per decode step, joining and leaving
  between steps);
- `sequential`: the same server over the same model with generation through llama-cpp-python's `create_completion`,
  one request at a time (what `camelid serve` did before batching);
- `llama_cpp.server`: `python -m llama_cpp.server` (llama-cpp-python's bundled OpenAI server) in a subprocess.
Also `direct`: the backend called sequentially without HTTP, whose greedy answers the `same` column compares against
(tokens equal up to the first difference / tokens; batched float paths differ from single-sequence ones).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Iterator

import httpx

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama_cpp loads (see models/llamacpp.py)

from camelid.models import Chunk, Model, Sampling, embedded_gguf, load_model
from camelid.serve.server import BackgroundServer, create_app


class Sequential(Model):
    """The same llama.cpp model generating through create_completion, one request at a time (the old path)."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.template, self.context_length = inner.name, inner.template, inner.context_length
        self.eos_token, self.bos_token, self.max_concurrency = inner.eos_token, inner.bos_token, 1

    def _stream(self, prompt: str, sampling: Sampling) -> Iterator[Chunk]:
        return self.inner.stream_sequential(prompt, sampling)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def prompts(n: int) -> list[list[dict]]:
    topics = ["the sea", "a cat", "winter", "coffee", "a robot", "the moon", "trains", "bread"]
    return [[{"role": "user", "content": f"Write two sentences about {topics[i % len(topics)]} (#{i})."}]
            for i in range(n)]


def direct(model, convs: list[list[dict]], max_tokens: int) -> list[str]:
    s = model.chat_sampling(Sampling(temperature=0, max_tokens=max_tokens))
    return ["".join(c.text for c in model.stream_sequential(model.chat_prompt(m), s)) for m in convs]


def over_http(url: str, model_name: str, convs: list[list[dict]], max_tokens: int, clients: int,
              count_tokens=None) -> dict:
    """`clients` threads stream requests from a shared list until it is empty. Completion tokens: the stream's usage,
    else (llama_cpp.server sends none) `count_tokens` of the text."""
    todo: queue.Queue = queue.Queue()
    for i, m in enumerate(convs):
        todo.put((i, m))
    ttft: list[float] = [0.0] * len(convs)
    texts: list[str] = [""] * len(convs)
    tokens, errors = [0], [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                try:
                    i, messages = todo.get_nowait()
                except queue.Empty:
                    return
                body = {"model": model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}
                start, first, parts, n = time.perf_counter(), None, [], 0
                with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        with lock:
                            errors[0] += 1
                        r.read()
                        continue
                    for line in r.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        ev = json.loads(line[6:])
                        if ev.get("usage"):
                            n = ev["usage"]["completion_tokens"]
                        for ch in ev.get("choices", []):
                            piece = ch["delta"].get("content")
                            if piece:
                                if first is None:
                                    first = time.perf_counter() - start
                                parts.append(piece)
                text = "".join(parts)
                if not n and count_tokens is not None and text:
                    n = count_tokens(text)
                with lock:
                    tokens[0] += n
                ttft[i], texts[i] = first or 0.0, text

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "ttft": ttft, "texts": texts, "tokens": tokens[0], "errors": errors[0]}


def llama_cpp_server(gguf: str, threads: int, n_ctx: int):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                             "--n_threads_batch", str(threads),
                             # its default ends a streaming request whenever another arrives: queue them instead
                             "--interrupt_requests", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited with {proc.returncode} (pip install 'llama-cpp-python[server]')")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start within 120 s")


def agreement(model, texts: list[str], reference: list[str]) -> tuple[int, int]:
    same = total = 0
    for a, b in zip(texts, reference):
        ta, tb = model.tokenize(a), model.tokenize(b)
        same += next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        total += max(len(ta), len(tb), 1)
    return same, total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]


LOAD0 = os.getloadavg()  # the machine is shared: the load is part of the figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("CAMELID_THREADS") or 2))
    ap.add_argument("--contenders", default="batched,sequential,llama_cpp.server")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    names = args.contenders.split(",")
    os.environ["CAMELID_THREADS"] = str(args.threads)

    model = load_model("embedded", n_ctx=2048)
    convs = prompts(args.requests)
    reference = direct(model, convs, args.max_tokens)
    servers, procs = {}, []
    try:
        for n in names:
            if n == "batched":
                app = create_app(model, max_queue=max(levels))
            elif n == "sequential":
                app = create_app(Sequential(model), max_queue=max(levels))
            else:
                proc, url = llama_cpp_server(str(embedded_gguf()), args.threads, 2048)
                procs.append(proc)
                servers[n] = (None, url, "x")
                continue
            srv = BackgroundServer(app).__enter__()
            servers[n] = (srv, srv.url, app.state.served_name)
        results: dict = {}
        for n, (_, url, name) in servers.items():  # warm up each
            over_http(url, name, convs[:2], 4, 1)
        for c in levels:  # interleaved: each client count runs every contender back to back
            for n, (_, url, name) in servers.items():
                r = results[(n, c)] = over_http(url, name, convs, args.max_tokens, c, model.count_tokens)
                print(f"  measured {n} at {c} client(s): {r['tokens'] / r['wall']:.1f} tokens/s", flush=True)
    finally:
        for srv, _, _ in servers.values():
            if srv is not None:
                srv.__exit__(None, None, None)
        for p in procs:
            p.terminate()
            p.wait(10)

    print(f"{args.requests} requests, max_tokens={args.max_tokens}, greedy, embedded model, {args.threads} threads, "
          f"{os.cpu_count()} CPUs; batched: {model.max_concurrency} sequences per decode")
    print(f"{'contender':<18} {'clients':>7} {'tok/s':>7} {'req/s':>6} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'x seq':>6} {'x l.c.s':>7} {'same':>6} {'errs':>4}")
    out = []
    for c in levels:
        for n in servers:
            r = results[(n, c)]
            tps = r["tokens"] / r["wall"]
            seq = results.get(("sequential", c))
            lcs = results.get(("llama_cpp.server", c))
            s, t = agreement(model, r["texts"], reference)
            row = {"contender": n, "clients": c, "tokens_per_s": tps, "requests_per_s": len(convs) / r["wall"],
                   "ttft_p50_ms": statistics.median(r["ttft"]) * 1000, "ttft_p95_ms": pct(r["ttft"], 0.95) * 1000,
                   "x_sequential": tps / (seq["tokens"] / seq["wall"]) if seq else None,
                   "x_llama_cpp_server": tps / (lcs["tokens"] / lcs["wall"]) if lcs else None,
                   "same_tokens": s / t, "errors": r["errors"]}
            out.append(row)
            f = lambda x: f"{x:.2f}" if x is not None else "-"
            print(f"{n:<18} {c:>7} {tps:>7.1f} {row['requests_per_s']:>6.2f} {row['ttft_p50_ms']:>9.0f} "
                  f"{row['ttft_p95_ms']:>9.0f} {f(row['x_sequential']):>6} {f(row['x_llama_cpp_server']):>7} "
                  f"{100 * s / t:>5.1f}% {r['errors']:>4}")
    print("tok/s: completion tokens of all requests / wall time; ttft in ms (queueing included); x seq / x l.c.s: "
          "tokens/s relative to the sequential path / llama_cpp.server at the same client count; same: greedy "
          "tokens equal to the sequential direct answers up to the first difference.")
    model.close()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(), "load_avg_start": LOAD0,
                       "load_avg_end": os.getloadavg(), "rows": out}, fh, indent=2)


if __name__ == "__main__":
    main()
