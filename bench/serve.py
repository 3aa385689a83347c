"""Throughput and time to first token of `camelid serve` at 1, 4 and 16 concurrent clients, and the server's overhead
against calling the backend directly (same prompts, same max_tokens, greedy), in one process, one run.

    python bench/serve.py [--requests 32] [--max-tokens 16] [--clients 1,4,16] [--model embedded]

The server runs in-process (uvicorn in a thread, real HTTP on 127.0.0.1) over the same model object as the direct
calls, so the ratio isolates HTTP + SSE + queueing. Clients stream (SSE) with httpx, one connection per request.
llama.cpp generates one request at a time, so requests/s should stay flat with more clients while time to first token
grows with the queue: the point is that the server adds little and loses nothing under load.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time

import httpx

# before llama_cpp loads: with OpenMP's default spinning, the direct baseline on the main thread ran 15-20x slower
# than the same calls on a worker thread on a busy machine, which would flatter the server (see the report)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from camelid.models import Sampling, load_model
from camelid.serve.server import BackgroundServer, create_app


def prompts(n: int) -> list[list[dict]]:
    topics = ["the sea", "a cat", "winter", "coffee", "a robot", "the moon", "trains", "bread"]
    return [[{"role": "user", "content": f"Write one sentence about {topics[i % len(topics)]} (#{i})."}]
            for i in range(n)]


def direct(model, convs: list[list[dict]], max_tokens: int) -> dict:
    """The backend alone, sequentially: the floor the server is measured against."""
    ttft, texts, tokens = [], [], 0
    t0 = time.perf_counter()
    for messages in convs:
        start, first, parts = time.perf_counter(), None, []
        for c in model.stream_chat(messages, Sampling(temperature=0, max_tokens=max_tokens)):
            if c.text and first is None:
                first = time.perf_counter() - start
            parts.append(c.text)
            tokens += c.completion_tokens
        ttft.append(first or 0.0)
        texts.append("".join(parts))
    wall = time.perf_counter() - t0
    return {"wall": wall, "ttft": ttft, "texts": texts, "tokens": tokens, "errors": 0}


def over_http(url: str, model_name: str, convs: list[list[dict]], max_tokens: int, clients: int) -> dict:
    """`clients` threads stream requests from a shared list until it is empty."""
    todo: queue.Queue = queue.Queue()
    for i, m in enumerate(convs):
        todo.put((i, m))
    ttft: list[float] = [0.0] * len(convs)
    texts: list[str] = [""] * len(convs)
    tokens, errors = [0], [0]
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                try:
                    i, messages = todo.get_nowait()
                except queue.Empty:
                    return
                body = {"model": model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}
                start, first, parts = time.perf_counter(), None, []
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
                            with lock:
                                tokens[0] += ev["usage"]["completion_tokens"]
                        for ch in ev.get("choices", []):
                            piece = ch["delta"].get("content")
                            if piece:
                                if first is None:
                                    first = time.perf_counter() - start
                                parts.append(piece)
                ttft[i], texts[i] = first or 0.0, "".join(parts)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "ttft": ttft, "texts": texts, "tokens": tokens[0],
            "errors": errors[0]}


def retry_after(model, convs: list[list[dict]], max_tokens: int, max_queue: int) -> tuple[int, float, float]:
    """Fill the gate (1 running + max_queue waiting, distinct prompts after one warm-up measurement), send one more:
    (its 429's Retry-After, seconds the admitted requests then took to drain, the gate's service-time estimate)."""
    app = create_app(model, max_queue=max_queue, page=False)
    gate = app.state.gate
    with BackgroundServer(app) as srv:
        def post(messages):
            return httpx.post(srv.url + "/v1/chat/completions", timeout=300, json={
                "messages": messages, "max_tokens": max_tokens, "temperature": 0})

        post(convs[-1])
        while gate.measured < 1:
            time.sleep(0.01)
        threads = [threading.Thread(target=post, args=(convs[i],)) for i in range(max_queue + 1)]
        for t in threads:
            t.start()
        while gate.admitted < max_queue + 1:
            time.sleep(0.005)
        t0 = time.perf_counter()
        r = post(convs[0])
        assert r.status_code == 429, r.text
        estimate = gate.service_s
        for t in threads:
            t.join()
        return int(r.headers["Retry-After"]), time.perf_counter() - t0, estimate


def merge(runs: list[dict]) -> dict:
    """The median round (by wall time) of repeated runs: this machine's load drifts, so conditions interleave."""
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]


def row(name: str, r: dict, n: int, base: dict, reference: list[str]) -> str:
    rps = n / r["wall"]
    same = sum(a == b for a, b in zip(r["texts"], reference))
    p50 = statistics.median(r["ttft"]) * 1000
    p95 = sorted(r["ttft"])[max(0, int(0.95 * len(r["ttft"])) - 1)] * 1000
    overhead = (r["wall"] - base["wall"]) / n * 1000
    return (f"{name:<18} {rps:>7.2f} {r['tokens'] / r['wall']:>8.1f} {p50:>9.0f} {p95:>9.0f} "
            f"{base['wall'] / r['wall']:>8.2f} {overhead:>+9.1f} {same:>4}/{n:<3} {r['errors']:>4}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median round is shown")
    ap.add_argument("--queues", default="4,8", help="queue lengths for the Retry-After check ('' to skip)")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]

    model = load_model(args.model, n_ctx=2048)
    convs = prompts(args.requests)
    app = create_app(model, max_queue=max(levels))  # room for every client: measure queueing, not 429s
    results: dict[str, list[dict]] = {"direct": [], **{str(c): [] for c in levels}}
    with BackgroundServer(app) as srv:
        direct(model, convs[:2], args.max_tokens)  # warm up
        over_http(srv.url, app.state.served_name, convs[:2], args.max_tokens, 1)
        for _ in range(args.rounds):
            results["direct"].append(direct(model, convs, args.max_tokens))
            for c in levels:
                results[str(c)].append(over_http(srv.url, app.state.served_name, convs, args.max_tokens, c))
    queues = [int(x) for x in args.queues.split(",") if x]
    checks = [(q, *retry_after(model, convs, args.max_tokens, q)) for q in queues]
    model.close()

    n, base = args.requests, merge(results["direct"])
    print(f"{n} requests x {args.rounds} rounds, max_tokens={args.max_tokens}, greedy, model={args.model} "
          f"({app.state.served_name})")
    print(f"{'':<18} {'req/s':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} {'x direct':>8} "
          f"{'ms/req +':>9} {'same':>8} {'errs':>4}")
    print(row("direct", base, n, base, base["texts"]))
    for c in levels:
        print(row(f"server, {c} client{'s' if c > 1 else ''}", merge(results[str(c)]), n, base, base["texts"]))
    ratios = [d["wall"] / s["wall"] for d, s in zip(results["direct"], results[str(levels[0])])]
    print(f"per-round x direct at {levels[0]} client(s): " + ", ".join(f"{x:.2f}" for x in ratios))
    print("x direct: requests/s relative to the backend called directly (1.00 = no overhead); ms/req +: wall time "
          "added per request; same: answers identical to the direct greedy ones; ttft in ms.")
    for q, after, drained, service in checks:
        print(f"queue full (1 running + {q} waiting): Retry-After {after} s, drained in {drained:.1f} s "
              f"(ratio {after / drained:.2f}; service-time estimate {service:.2f} s)")


if __name__ == "__main__":
    main()
