"""`camelid generate` against a teacher that costs nothing (or a fixed tokens/s): what generation itself costs.

The teacher is an in-process Model (generate takes one as a library call) that answers each Alpaca prompt with 16
tasks in Stanford's format, its instructions taken in request order from bench/dedup.py's synthetic set (Zipf
words over a 20K-word made-up vocabulary, 15% near-duplicates of earlier ones), so every run sees the same
replies. Each run happens in a fresh process whose PYTHONPATH is either this tree's src or a baseline commit's
(default: main before this work), side by side:

1. Instant teacher: time at which 2K / 10K / 52K records were kept, and kept/s in each stretch (the pool grows,
   and with it the cost of each candidate: Stanford's fields score every kept row against the whole pool).
2. Simulated teacher of 3,200 and 16,000 tokens/s (one server: a lock held tokens/rate seconds per reply, whatever
   the concurrency), resuming the instant run's output cut to 48K kept rows and generating 1,500 more: overhead =
   wall time / the teacher time of the replies the data needs - 1 (those up to the reply holding the last kept
   task; the same replies in both trees). 0% would be a teacher that never waits for camelid; replies asked past
   the target (in flight when it is met) are teacher time spent but not needed, shown as `busy`.

Both trees must write the same records: the kept rows and the rejected rows of the instant runs are compared byte
for byte.

    python bench/generate.py [--num 52000] [--baseline-ref e5db128] [--no-baseline] [--sim-extra 1500] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS_PER_REPLY = 16  # Stanford's prompt asks for 20; 3 come from the prompt, and "\n20" stops the list
CONCURRENCY = 8
BASELINE = "e5db128"  # main when issue 23's items 3-4 began


def teacher_class():
    from camelid.models.base import Completion, Model

    sys.path.insert(0, str(ROOT / "bench"))
    from dedup import synthetic  # noqa: E402  (bench/dedup.py)

    class SyntheticTeacher(Model):
        """Stanford-format replies; instructions in request order from the synthetic set."""

        name = "synthetic"
        max_concurrency = CONCURRENCY

        def __init__(self, n_texts: int, rate: float | None = None):
            self.texts = synthetic(n_texts, seed=1)
            self.rate = rate  # tokens/s of the simulated server; None: instant
            self.busy = 0.0
            self.lock = threading.Lock()
            self.k_of_seed: dict[int, int] = {}
            self.asked: list[int] = []

        def reply(self, k: int) -> str:
            parts = []
            for j in range(TASKS_PER_REPLY):
                n = 4 + j
                inst = self.texts[(k * TASKS_PER_REPLY + j) % len(self.texts)]
                words = inst.rstrip(".").split()
                out = " ".join(words[::-1]) + ". " + " ".join(words) + "."  # an output about as long as two
                parts.append(f"{'' if j == 0 else f'{n}. Instruction:'} {inst}\n{n}. Input:\n<noinput>\n"
                             f"{n}. Output:\n{out}\n")
            return "###\n".join(parts)

        def complete(self, prompt: str, sampling=None) -> Completion:
            # the request number, read back from generate's per-request seed (a hash of "seed:k")
            k = self.k_of_seed[sampling.seed]
            self.asked.append(k)
            text = self.reply(k)
            tokens = len(text) // 4
            if self.rate:
                with self.lock:
                    t0 = time.perf_counter()
                    time.sleep(tokens / self.rate)
                    self.busy += time.perf_counter() - t0
            return Completion(text, "stop", len(prompt) // 4, tokens, self.name, 0.0)

    return SyntheticTeacher


def run_one(args: argparse.Namespace) -> dict:
    """One run in this process (whichever camelid PYTHONPATH gives)."""
    import camelid
    from camelid.generate.generator import GenerateConfig, Generator

    milestones = [int(m) for m in args.milestones.split(",")] if args.milestones else []
    times: dict[int, float] = {}

    class Timed(Generator):
        def _keep(self, rows):
            super()._keep(rows)
            if self.kept in milestones:
                times[self.kept] = time.perf_counter() - t0

    teacher = teacher_class()(args.texts, args.rate)
    cfg = GenerateConfig(output=Path(args.out), num=args.num, seed=0, concurrency=CONCURRENCY,
                         request_batch_size=CONCURRENCY)
    gen = Timed(cfg, model=teacher, show_progress=False)
    teacher.k_of_seed = {gen._request_seed(k): k for k in range(args.texts // TASKS_PER_REPLY + 1000)}
    t0 = time.perf_counter()
    c0 = time.process_time()
    rep = gen.run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # the teacher time the data needs: the replies from this run's first request to the one holding the last kept task
    last = json.loads(Path(args.out).read_text(encoding="utf-8").splitlines()[-1])["instruction"]
    first = min(teacher.asked)
    k_last = next(k for k in sorted(set(teacher.asked)) if f" {last}\n" in teacher.reply(k))
    needed = sum(len(teacher.reply(k)) // 4 for k in range(first, k_last + 1)) / args.rate if args.rate else 0.0
    return {"camelid": camelid.__file__, "kept": rep.kept, "resumed_from": rep.resumed_from, "wall": wall,
            "cpu": cpu, "busy": teacher.busy, "needed": needed, "milestones": times,
            "rejected": dict(rep.rejected), "requests": rep.requests}


def spawn(src: Path, **kw) -> dict:
    cmd = [sys.executable, __file__, "--_run"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()
                                                  if v is not None]
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"run failed ({src}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cut(src: Path, dst: Path, rows: int, k_of: dict[str, int]) -> None:
    """The first `rows` kept rows and the request log up to the reply holding the last of them (no journal:
    generate continues after the last logged request), for a resume with a big pool: both trees resume at the
    same request whatever they asked past their target."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
    dst.write_text("".join(lines), encoding="utf-8")
    k_last = k_of[json.loads(lines[-1])["instruction"]]
    suffix = ".requests.jsonl"
    log = src.with_suffix(suffix).read_text(encoding="utf-8").splitlines(keepends=True)
    dst.with_suffix(suffix).write_text("".join(x for x in log if json.loads(x)["request"] <= k_last), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=52000)
    ap.add_argument("--baseline-ref", default=BASELINE)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--sim-extra", type=int, default=1500, help="records generated on top of the 48K resume")
    ap.add_argument("--sim-pool", type=int, default=48000)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--_run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--milestones", default="", help=argparse.SUPPRESS)
    ap.add_argument("--texts", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        print(json.dumps(run_one(args)))
        return
    texts = int(args.num * 1.6) + 16000
    milestones = sorted({m for m in (2000, 10000, args.num) if m <= args.num})
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "num": args.num,
                    "load_before": os.getloadavg(), "instant": {}, "simulated": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"camelid (this tree)": ROOT / "src"}
        if not args.no_baseline:
            base = tmp / "baseline"
            base.mkdir()
            subprocess.run(f"git -C {ROOT} archive {args.baseline_ref} src | tar -x -C {base}", shell=True, check=True)
            trees[f"baseline {args.baseline_ref}"] = base / "src"
        inst: dict[str, dict] = {}
        for name, src in trees.items():
            out = tmp / f"{len(inst)}.jsonl"
            inst[name] = spawn(src, out=out, num=args.num, texts=texts, milestones=",".join(map(str, milestones)))
            inst[name]["out"] = out
        outs = [(v["out"].read_bytes(), v["out"].with_suffix(".rejected.jsonl").read_bytes()) for v in inst.values()]
        same = all(o == outs[0] for o in outs)
        print(f"instant teacher, {args.num:,} kept (kept and rejected rows identical across trees: {same}):")
        print(f"  {'':<24}" + "".join(f"{f'to {m:,}':>10} {'kept/s':>8}" for m in milestones) + f"{'CPU s':>8}")
        for name, r in inst.items():
            cells, prev_t, prev_m = "", 0.0, 0
            for m in milestones:
                t = r["milestones"][str(m)]
                cells += f"{t:>9.1f}s {(m - prev_m) / (t - prev_t):>8.0f}"
                prev_t, prev_m = t, m
            print(f"  {name:<24}{cells}{r['cpu']:>8.1f}")
            report["instant"][name] = {k: v for k, v in r.items() if k != "out"}
        if len(inst) == 2:
            a, b = (list(inst.values())[i]["milestones"][str(args.num)] for i in range(2))
            print(f"  speed-up to {args.num:,}: {b / a:.1f}x")
            report["speedup"] = b / a
        report["identical"] = same
        if not same:
            sys.exit("the trees wrote different records")

        pool = min(args.sim_pool, args.num)
        sys.path.insert(0, str(ROOT / "bench"))
        from dedup import synthetic

        k_of: dict[str, int] = {}
        for i, text in enumerate(synthetic(texts, seed=1)):  # the teacher's tasks, TASKS_PER_REPLY per request
            k_of.setdefault(text, i // TASKS_PER_REPLY)
        print(f"simulated teacher, resuming at {pool:,} kept, +{args.sim_extra:,} records:")
        print(f"  {'':<24}{'tok/s':>8}{'wall s':>9}{'needed s':>10}{'busy s':>9}{'overhead':>10}")
        for rate in (3200, 16000):
            for i, (name, src) in enumerate(trees.items()):
                out = tmp / f"sim{i}-{rate}.jsonl"
                cut(inst[name]["out"], out, pool, k_of)
                r = spawn(src, out=out, num=pool + args.sim_extra, texts=texts, rate=rate)
                r["overhead"] = r["wall"] / r["needed"] - 1
                print(f"  {name:<24}{rate:>8,}{r['wall']:>9.1f}{r['needed']:>10.1f}{r['busy']:>9.1f}"
                      f"{r['overhead']:>10.1%}")
                report["simulated"][f"{name} @ {rate}"] = r
    report["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
