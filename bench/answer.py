"""`camelid eval answer` throughput: batched local backends against one-at-a-time generation, in one run.

    python bench/answer.py [--questions N] [--max-tokens 64] [--clients 1,4,8,16] [--backends llama,hf]

Each contender answers the same questions with `answer_questions` (what `camelid eval answer` and the pipeline's
before/after eval run) at 1, 4, 8 and 16 requests in flight, greedy. `batched` is the backend as shipped (llama.cpp:
continuous batching; transformers: the static batcher); `sequential` is the same loaded model generating one request
at a time (llama.cpp: `create_completion`; transformers: `model.generate` on one prompt), the path before batching;
`llama_cpp.server` is llama-cpp-python's bundled server reached through camelid's OpenAI client. Reported: aggregate
completion tokens/s, p50/p95 time to first token of a request (queueing included), and for greedy answers the tokens
equal to the sequential ones up to the first difference.

Questions: MT-bench's first turns (../shared/data/fastchat), else camelid's shipped seed instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama_cpp loads (see models/llamacpp.py)

from camelid.evaluate.answer import answer_questions
from camelid.evaluate.questions import Question, load_questions
from camelid.models import Chunk, Model, Sampling, embedded_gguf, load_model

ROOT = Path(__file__).resolve().parents[1]
MT_BENCH = ROOT.parent / "shared" / "data" / "fastchat" / "mt_bench_question.jsonl"
SEEDS = ROOT / "src" / "camelid" / "generate" / "seeds" / "seed_tasks_en.jsonl"


class Timed(Model):
    """Delegates to a model (batched, or its one-at-a-time path) and records each request's time to first token."""

    def __init__(self, inner, sequential: bool, concurrency: int):
        self.inner, self.sequential = inner, sequential
        self.name, self.template, self.context_length = inner.name, inner.template, inner.context_length
        self.eos_token, self.bos_token = inner.eos_token, inner.bos_token
        self.max_concurrency = concurrency
        self.ttft: list[float] = []
        self._lock = threading.Lock()

    def _timed(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        t0, first = time.perf_counter(), None
        for c in chunks:
            if first is None and c.text:
                first = time.perf_counter() - t0
                with self._lock:
                    self.ttft.append(first)
            yield c

    def stream(self, prompt: str, sampling: Sampling | None = None) -> Iterator[Chunk]:
        s = sampling or Sampling()
        return self._timed(self.inner.stream_sequential(prompt, s) if self.sequential else self.inner.stream(prompt, s))

    def stream_chat(self, messages: list[dict], sampling: Sampling | None = None) -> Iterator[Chunk]:
        if self.sequential:
            return self._timed(self.inner.stream_chat_sequential(messages, sampling))
        return self._timed(self.inner.stream_chat(messages, sampling))

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def questions(n: int) -> list[Question]:
    if MT_BENCH.is_file():
        qs = load_questions(MT_BENCH, n)
        return [Question(q.question_id, q.turns[:1], "math") for q in qs]  # one turn each, greedy (temperature 0)
    qs = load_questions(SEEDS, n)
    return [Question(q.question_id, q.turns, "math", q.input) for q in qs]


def run(model: Model, qs: list[Question], max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answers.jsonl"
        t0 = time.perf_counter()
        stats = answer_questions(model, qs, out, model_id="m", temperature=0.0, max_tokens=max_tokens, seed=0,
                                 concurrency=model.max_concurrency)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    texts = {str(r["question_id"]): r["choices"][0]["turns"][0] for r in rows}
    return {"wall": wall, "tokens": stats.completion_tokens, "failed": len(stats.failed),
            "texts": [texts.get(str(q.question_id), "") for q in qs]}


LOAD0 = os.getloadavg()  # the machine is shared: the load is part of the figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--backends", default="llama,hf")
    ap.add_argument("--hf-model", default="embedded", help="checkpoint directory for the transformers backend")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("CAMELID_THREADS") or 2))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ["CAMELID_THREADS"] = str(args.threads)
    levels = [int(x) for x in args.clients.split(",")]
    qs = questions(args.questions)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPUs"
    print(f"{len(qs)} questions, max_tokens={args.max_tokens}, greedy, {args.threads} threads, {device}")
    print(f"{'backend':<7} {'contender':<16} {'in flight':>9} {'tok/s':>7} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'x seq':>6} {'same':>6}")
    rows = []
    for backend in args.backends.split(","):
        if backend == "llama":
            model = load_model("embedded", n_ctx=2048)
        else:
            from camelid.models.hf import HFModel

            model = HFModel(args.hf_model)
        contenders = ["batched", "sequential"] + (["llama_cpp.server"] if backend == "llama" else [])
        proc = None
        results: dict = {}
        reference = None
        try:
            for c in levels:
                for name in contenders:
                    if name == "llama_cpp.server":
                        if proc is None:
                            sys.path.insert(0, str(Path(__file__).resolve().parent))
                            from serve_batch import llama_cpp_server

                            proc, url = llama_cpp_server(str(embedded_gguf()), args.threads, 2048)
                            remote = load_model("openai:x", base_urls=[url + "/v1"], concurrency=c)
                        remote.max_concurrency = c
                        m = Timed(remote, False, c)
                    else:
                        m = Timed(model, name == "sequential", c)
                    r = run(m, qs, args.max_tokens)
                    r["ttft"] = m.ttft or [0.0]
                    results[(name, c)] = r
                    if name == "sequential" and reference is None:
                        reference = r["texts"]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        for c in levels:
            seq = results[("sequential", c)]
            for name in contenders:
                r = results[(name, c)]
                tps = r["tokens"] / r["wall"]
                s, t = agreement(model, r["texts"], reference) if backend == "llama" else _hf_agreement(
                    model, r["texts"], reference)
                row = {"backend": backend, "contender": name, "in_flight": c, "tokens_per_s": tps,
                       "ttft_p50_ms": statistics.median(r["ttft"]) * 1000, "ttft_p95_ms": pct(r["ttft"], 0.95) * 1000,
                       "x_sequential": tps / (seq["tokens"] / seq["wall"]), "same_tokens": s / t,
                       "failed": r["failed"]}
                rows.append(row)
                print(f"{backend:<7} {name:<16} {c:>9} {tps:>7.1f} {row['ttft_p50_ms']:>9.0f} "
                      f"{row['ttft_p95_ms']:>9.0f} {row['x_sequential']:>6.2f} {100 * s / t:>5.1f}%", flush=True)
        model.close()
    print("tok/s: completion tokens / wall time of the whole answer run; ttft: ms from a request's start to its first "
          "text, queueing included; x seq: tokens/s over the sequential path at the same number in flight; same: "
          "greedy tokens equal to the sequential answers up to the first difference.")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
                                               "load_avg_start": LOAD0, "load_avg_end": os.getloadavg(),
                                               "rows": rows}, indent=2))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]


def agreement(model, texts: list[str], reference: list[str]) -> tuple[int, int]:
    """Greedy tokens equal to the reference answers up to the first difference, and tokens in all."""
    same = total = 0
    for a, b in zip(texts, reference):
        ta, tb = model.tokenize(a), model.tokenize(b)
        same += next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        total += max(len(ta), len(tb), 1)
    return same, total


def _hf_agreement(model, texts: list[str], reference: list[str]) -> tuple[int, int]:
    same = total = 0
    for a, b in zip(texts, reference):
        ta, tb = model.tokenizer(a).input_ids, model.tokenizer(b).input_ids
        same += next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        total += max(len(ta), len(tb), 1)
    return same, total


if __name__ == "__main__":
    main()
