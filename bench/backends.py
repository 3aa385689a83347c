"""Backend throughput: the embedded model through llama.cpp directly vs through an OpenAI-compatible HTTP server.

Both paths run the same GGUF with the same thread count, greedy, on the same prompts, interleaved in one run
(direct, http, direct, http, ...) so machine noise hits both alike. Reports completion tokens/s for each path,
the per-request overhead of HTTP (1-token requests), and the ratios.

    python bench/backends.py [--rounds 3] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from models.servers import LlamaCppServer  # noqa: E402

from camelid.models import Sampling, embedded_gguf, load_model  # noqa: E402
from camelid.models.llamacpp import LlamaCppModel, default_threads  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List ten ideas for a weekend trip with friends and say why each is fun.",
    "Describe the water cycle step by step.",
]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=default_threads(), help="llama.cpp threads, both paths")
    args = ap.parse_args()

    direct = LlamaCppModel(embedded_gguf(), n_ctx=2048, n_threads=args.threads)
    server = LlamaCppServer(str(embedded_gguf()), n_threads=args.threads)
    remote = load_model("openai:smollm2", base_urls=[server.url])
    paths = {"direct": direct, "http": remote}
    # a long answer for throughput; min_tokens is not portable, so count what each path really produced
    long = Sampling(temperature=0.0, max_tokens=args.max_tokens)
    one = Sampling(temperature=0.0, max_tokens=1)
    tokens = {k: 0 for k in paths}
    seconds = {k: 0.0 for k in paths}
    latency = {k: [] for k in paths}
    try:
        for name, m in paths.items():  # warm-up: load pages, fill caches
            m.chat([{"role": "user", "content": "Hi"}], one)
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                msgs = [{"role": "user", "content": prompt}]
                for name, m in paths.items():
                    dt, out = timed(lambda: m.chat(msgs, long))
                    tokens[name] += out.completion_tokens
                    seconds[name] += dt
                    dt1, _ = timed(lambda: m.chat(msgs, one))
                    latency[name].append(dt1)
    finally:
        server.close()
        direct.close()

    tps = {k: tokens[k] / seconds[k] for k in paths}
    lat = {k: statistics.median(v) * 1000 for k, v in latency.items()}
    print(f"llama.cpp threads: {args.threads} on both paths")
    print(f"{'path':8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'1-token request ms (median)':>28}")
    for k in paths:
        print(f"{k:8} {tokens[k]:7d} {seconds[k]:8.2f} {tps[k]:9.1f} {lat[k]:28.1f}")
    print(f"http/direct throughput ratio: {tps['http'] / tps['direct']:.3f}")
    print(f"http overhead per request: {lat['http'] - lat['direct']:+.1f} ms "
          f"(ratio {lat['http'] / lat['direct']:.2f}x on 1-token requests)")


if __name__ == "__main__":
    main()
