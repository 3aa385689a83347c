"""Near-duplicate filtering: camelid's indexed filter against Stanford's loop and camelid's previous filter.

Part 1 (real data, 1,392 candidates): the 175 self-instruct seed tasks form the pool, then the user-oriented
set, AlpacaEval, MT-bench and Vicuna-bench instructions (under ../shared/data) are offered in that order. The
reference is Stanford's generate_instruction.py loop verbatim, run SINGLE-PROCESS (Stanford wraps every candidate
in a fresh multiprocessing.Pool, which on this machine only adds process start-up): rouge_score tokenizer,
rouge_scorer._score_lcs(new, existing) for every pool member, `max > 0.7` rejects, np.argsort top 10, np.mean.
Asserts identical decisions, identical top-10 scores and avg_similarity_score, then prints the speed ratio of
the Deduper in this process and of `camelid data dedup` as a command, start-up included. (Top-10 *keys* can
differ only among equally scored instructions: numpy's default argsort is unstable.)

Part 2 (scale): synthetic instructions (seeded Zipf word sampler over a 20K-word made-up vocabulary, 6-30 words
each, 15% deliberate near-duplicates of earlier ones) against the same 175 seeds, each configuration in a fresh
process (time and peak RSS): the previous filter (tests/data/dedup_reference.py, a cdist of every candidate
against the pool), the indexed filter with Stanford's similarity fields and without them (decisions only).
Decisions must be identical wherever more than one configuration runs on a set.

    python bench/dedup.py [--limit N] [--synthetic 52000] [--million 1000000] [--no-reference]

Wall and CPU seconds are both printed: on a shared machine the wall time mostly measures the others' load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from camelid.data.dedup import Deduper

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_real() -> tuple[list[str], list[str]]:
    seeds = [json.loads(line)["instruction"] for line in open(DATA / "self-instruct/seed_tasks.jsonl")]
    cands = [json.loads(line)["instruction"] for line in open(DATA / "self-instruct/user_oriented_instructions.jsonl")]
    cands += [r["instruction"] for r in json.load(open(DATA / "alpaca_eval/example_outputs.json"))]
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        for line in open(DATA / "fastchat" / name):
            cands += json.loads(line)["turns"]
    return seeds, cands


def stanford(seeds: list[str], cands: list[str], threshold: float = 0.7) -> list[dict | None]:
    """generate_instruction.py's filtering loop (Pool removed); None for a rejected candidate."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    all_instructions = list(seeds)
    all_instruction_tokens = [scorer._tokenizer.tokenize(inst) for inst in all_instructions]
    out: list[dict | None] = []
    for inst in cands:
        new_instruction_tokens = scorer._tokenizer.tokenize(inst)
        rouge_scores = [rouge_scorer._score_lcs(new_instruction_tokens, t) for t in all_instruction_tokens]
        rouge_scores = [score.fmeasure for score in rouge_scores]
        most_similar_instructions = {
            all_instructions[i]: rouge_scores[i] for i in np.argsort(rouge_scores)[-10:][::-1]
        }
        if max(rouge_scores) > threshold:
            out.append(None)
            continue
        out.append({"most_similar_instructions": most_similar_instructions,
                    "avg_similarity_score": float(np.mean(rouge_scores))})
        all_instructions.append(inst)
        all_instruction_tokens.append(new_instruction_tokens)
    return out


def camelid(seeds: list[str], cands: list[str], threshold: float = 0.7, similarity: bool = True,
            cls=Deduper) -> list[dict | None]:
    dd = cls(threshold, "en") if cls is not Deduper else cls(threshold, "en", similarity=similarity)
    seed_tokens, tokens = dd.tokenize(seeds), dd.tokenize(cands)
    dd.intern(seed_tokens + tokens)
    dd.add(seeds, seed_tokens)
    return [v.fields() if v.keep else None for v in dd.offer_many(cands, tokens)]


def command(seeds: list[str], cands: list[str], tmp: Path) -> tuple[float, float, list[bool]]:
    """`camelid data dedup` in a fresh process, start-up included; returns (seconds, CPU seconds, kept flags)."""
    seed_file, src, out = tmp / "seeds.jsonl", tmp / "cands.jsonl", tmp / "out.jsonl"
    seed_file.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in seeds))
    src.write_text("".join(json.dumps({"instruction": x, "n": i}) + "\n" for i, x in enumerate(cands)))
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-m", "camelid", "data", "dedup", str(src), "-o", str(out), "--lang", "en",
                    "--seeds", str(seed_file)], check=True, stdout=subprocess.DEVNULL)
    t, c = time.perf_counter() - t0, _children_cpu() - c0
    kept = {json.loads(x)["n"] for x in out.read_text().splitlines()}
    return t, c, [i in kept for i in range(len(cands))]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def compare(ref: list[dict | None], ours: list[dict | None]) -> int:
    """Assert identical decisions and scores; return how many top-10 dicts differ only in tied keys."""
    assert [r is None for r in ref] == [o is None for o in ours], "keep/reject decisions differ"
    tie_diffs = 0
    for i, (r, o) in enumerate(zip(ref, ours)):
        if r is None:
            continue
        assert abs(r["avg_similarity_score"] - o["avg_similarity_score"]) <= 1e-12, f"candidate {i}: avg differs"
        rs, os_ = list(r["most_similar_instructions"].values()), list(o["most_similar_instructions"].values())
        assert rs == os_, f"candidate {i}: top-10 scores differ\n{rs}\n{os_}"
        if r["most_similar_instructions"] != o["most_similar_instructions"]:
            # only allowed among ties: every differing key must carry a score that occurs more than once
            for k in set(r["most_similar_instructions"]) ^ set(o["most_similar_instructions"]):
                s = r["most_similar_instructions"].get(k, o["most_similar_instructions"].get(k))
                assert rs.count(s) > 1 or s == rs[-1], f"candidate {i}: key {k!r} differs without a tie"
            tie_diffs += 1
    return tie_diffs


def synthetic(n: int, seed: int = 0, dup_share: float = 0.15) -> list[str]:
    """Instruction-like strings: Zipf-distributed words from a made-up vocabulary, plus near-duplicates."""
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = list(dict.fromkeys("".join(r.choices(letters, k=r.randint(2, 9))) for _ in range(22000)))[:20000]
    probs = 1.0 / np.arange(1, len(vocab) + 1) ** 1.07
    probs /= probs.sum()
    lengths = np.clip(rng.normal(13, 5, n).round().astype(int), 6, 30)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=probs)
    out: list[str] = []
    pos = 0
    for i, length in enumerate(lengths):
        if out and r.random() < dup_share:  # perturb an earlier instruction by one or two words
            w = out[r.randrange(len(out))].split()
            for _ in range(r.randint(1, 2)):
                op, j = r.random(), r.randrange(len(w))
                if op < 0.4:
                    w[j] = vocab[words[r.randrange(len(words))]]
                elif op < 0.7 and len(w) > 3:
                    del w[j]
                else:
                    w.insert(j, vocab[words[r.randrange(len(words))]])
            out.append(" ".join(w).capitalize() + ".")
        else:
            out.append(" ".join(vocab[k] for k in words[pos:pos + length]).capitalize() + ".")
        pos += length
    return out


def part1(seeds: list[str], cands: list[str]) -> dict:
    print(f"real data: {len(seeds)} seeds + {len(cands)} candidates (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores: wall times measure the others' load too; CPU seconds are this work's own)")
    t0, c0 = time.perf_counter(), time.process_time()
    ref = stanford(seeds, cands)
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    ours = camelid(seeds, cands)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    ties = compare(ref, ours)
    with tempfile.TemporaryDirectory() as tmp:
        t_cmd, c_cmd, kept_cmd = command(seeds, cands, Path(tmp))
    assert kept_cmd == [r is not None for r in ref], "the command's decisions differ"
    kept = sum(r is not None for r in ref)
    print(f"  decisions identical: kept {kept}, rejected {len(cands) - kept}; avg_similarity_score equal to 1e-12; "
          f"top-10 scores identical ({ties} top-10 dicts order tied instructions differently)")
    print(f"  {'':<42}{'wall s':>10}{'ratio':>8}{'CPU s':>10}{'ratio':>8}")
    print(f"  {'Stanford loop (rouge_score, 1 process)':<42}{t_ref:>10.2f}{'':>8}{c_ref:>10.2f}")
    print(f"  {'camelid Deduper, in process':<42}{t_ours:>10.3f}{t_ref / t_ours:>7,.0f}x{c_ours:>10.3f}"
          f"{c_ref / c_ours:>7,.0f}x")
    print(f"  {'camelid data dedup, start-up included':<42}{t_cmd:>10.3f}{t_ref / t_cmd:>7,.0f}x{c_cmd:>10.3f}"
          f"{c_ref / c_cmd:>7,.0f}x")
    return {"seeds": len(seeds), "candidates": len(cands), "kept": kept, "identical": True, "tied_top10": ties,
            "stanford": {"wall": t_ref, "cpu": c_ref}, "deduper": {"wall": t_ours, "cpu": c_ours},
            "command": {"wall": t_cmd, "cpu": c_cmd}, "load": os.getloadavg()}


CONFIGS = {"previous": "previous filter (cdist, whole pool)", "fields": "indexed, with similarity fields",
           "decide": "indexed, decisions only"}


def run_config(config: str, n: int) -> dict:
    """One configuration on n synthetic instructions, in this (fresh) process."""
    seeds = load_real()[0]
    texts = synthetic(n)
    cls = Deduper
    if config == "previous":
        sys.path.insert(0, str(ROOT))
        from tests.data.dedup_reference import Deduper as cls
    t0, c0 = time.perf_counter(), time.process_time()
    res = camelid(seeds, texts, similarity=config != "decide", cls=cls)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    keep = bytes(r is not None for r in res)
    return {"wall": t, "cpu": c, "kept": sum(keep), "decisions": hashlib.sha1(keep).hexdigest(),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part2(n: int, configs: list[str]) -> dict:
    print(f"synthetic: {n:,} instructions + 175 seeds (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          f"cores; peak RSS includes the data set and the interpreter)")
    runs = {}
    for config in configs:
        res = subprocess.run([sys.executable, __file__, "--_run", config, str(n)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"})
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        runs[config] = r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {CONFIGS[config]:<38} kept {r['kept']:>9,}  {r['wall']:8.1f} s wall {r['cpu']:8.1f} s CPU  "
              f"peak RSS {r['rss_mb']:7,.0f} MB")
    if len(runs) > 1:
        same = len({r["decisions"] for r in runs.values()}) == 1
        first = next(iter(runs.values()))["wall"]
        ratios = ", ".join(f"{CONFIGS[k].split(',')[-1].strip()} {first / r['wall']:.1f}x"
                           for k, r in list(runs.items())[1:])
        print(f"  decisions identical: {same}; speed-up over the first: {ratios}")
        if not same:
            sys.exit("decisions differ")
    return {"n": n, "runs": runs, "identical": len({r["decisions"] for r in runs.values()}) == 1,
            "load": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="offer only the first N real candidates")
    ap.add_argument("--synthetic", type=int, default=52000, help="size of the synthetic set (0: skip)")
    ap.add_argument("--million", type=int, default=1000000, help="size of the decisions-only set (0: skip)")
    ap.add_argument("--no-reference", action="store_true", help="skip part 1 (the reference loop takes minutes)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--_run", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        print(json.dumps(run_config(args._run[0], int(args._run[1]))))
        return
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found")
    seeds, cands = load_real()
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    if not args.no_reference:
        report["real"] = part1(seeds, cands[: args.limit] if args.limit else cands)
    if args.synthetic:
        report["synthetic"] = part2(args.synthetic, ["previous", "fields", "decide"])
    if args.million:
        report["million"] = part2(args.million, ["decide"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
