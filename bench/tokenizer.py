"""Vocabulary extension: tokens per character before/after, English unchanged, and the decoding speed that follows.

    python bench/tokenizer.py [--gen-tokens 64] [--repeats 3] [--threads N] [--json out.json]

All in one process, side by side:
1. Korean: extend the embedded tokenizer on src/camelid/train/data/ko_corpus.txt (+ the KS X 1001 syllables),
   measure tokens per character on bench/data/ko_heldout.txt (held out: written separately, other topics).
   Also: the same extension without charset coverage, and `tokenizer.add_tokens` with the same pieces
   (the alternative that vocab.py's docstring weighs), with encode throughput for both.
2. Chinese: extend on bench/data/zh_train.txt (+ GB 2312 level-1 hanzi), measure on bench/data/zh_heldout.txt.
3. English: bench/data/en_mixed.txt (prose, accents, emoji, code, punctuation) must tokenize identically.
4. Decoding: transformers greedy generation of a fixed number of tokens with the base model and with the model
   resized to the Korean vocabulary; chars/s = tokens/s / (tokens per Korean character on held-out text), since
   the same Korean text needs that many fewer decoding steps. (The resized model is untrained: only its speed
   is measured here, not its Korean.)
Chinese-LLaMA reported roughly half the tokens for Chinese text after extension.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
KO_CORPUS = ROOT / "src" / "camelid" / "train" / "data" / "ko_corpus.txt"


def encode_rate(tok, text: str, seconds: float = 1.0) -> float:
    """Characters encoded per second (single text, repeated)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tok(text, add_special_tokens=False)
        n += 1
    return n * len(text) / (time.perf_counter() - t0)


def gen_rates(models: list, ids: list[int], new_tokens: int, repeats: int) -> list[float]:
    """Greedy decoding tokens/s of each model, median of `repeats` runs interleaved so load drifts hit all alike."""
    import torch

    x = torch.tensor([ids])
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False, pad_token_id=0)
    rates: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            m.generate(input_ids=x, max_new_tokens=4, **kw)  # warm-up
        for _ in range(repeats):
            for m, r in zip(models, rates):
                t0 = time.perf_counter()
                out = m.generate(input_ids=x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
                assert out.shape[1] - x.shape[1] == new_tokens
                r.append(new_tokens / (time.perf_counter() - t0))
    return [statistics.median(r) for r in rates]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--add", type=int, default=8000)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (1 is steadier on a busy machine)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir
    from camelid.train.vocab import charset, extend_tokenizer, resize_embeddings, token_stats, token_text

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_dir = embedded_hf_dir()
    base = AutoTokenizer.from_pretrained(base_dir)
    text = {name: (DATA / f"{name}.txt").read_text(encoding="utf-8")
            for name in ("ko_heldout", "zh_heldout", "en_mixed")}
    results: dict = {"add": args.add}
    toks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, corpus, cs in (("ko", KO_CORPUS, "hangul"), ("ko_no_charset", KO_CORPUS, ""),
                                 ("zh", DATA / "zh_train.txt", "hanzi")):
            t0 = time.perf_counter()
            toks[name] = extend_tokenizer("embedded", [corpus], args.add, Path(tmp) / name,
                                          coverage=charset(cs) if cs else "")
            held = text["zh_heldout" if name == "zh" else "ko_heldout"]
            before, after = token_stats(base, held), token_stats(toks[name], held)
            results[name] = {
                "corpus_chars": len(corpus.read_text(encoding="utf-8")), "held_out_chars": len(held),
                "added_tokens": len(toks[name]) - len(base), "extend_s": round(time.perf_counter() - t0, 2),
                "tokens_per_char_before": round(before["tokens_per_char"], 3),
                "tokens_per_char_after": round(after["tokens_per_char"], 3),
                "tokens_per_word_before": round(before["tokens_per_word"], 3),
                "tokens_per_word_after": round(after["tokens_per_word"], 3),
                "token_cut": round(1 - after["tokens"] / before["tokens"], 3),
                "english_unchanged": toks[name](text["en_mixed"]).input_ids == base(text["en_mixed"]).input_ids,
            }

        # the alternative: the same pieces as added tokens (matched in raw text before pre-tokenization)
        added = AutoTokenizer.from_pretrained(base_dir)
        new_ids = range(len(base), len(toks["ko"]))
        added.add_tokens([token_text(t) for t in toks["ko"].convert_ids_to_tokens(list(new_ids))])
        held = text["ko_heldout"]
        results["ko_add_tokens"] = {
            "tokens_per_char_after": round(token_stats(added, held)["tokens_per_char"], 3),
            "english_unchanged": added(text["en_mixed"]).input_ids == base(text["en_mixed"]).input_ids,
            "round_trip": added.decode(added(held, add_special_tokens=False).input_ids) == held,
            "encode_chars_per_s": round(encode_rate(added, held)),
        }
        # ... and without their leading space, as SentencePiece pieces (`▁x` -> `x`) would be added
        bare = AutoTokenizer.from_pretrained(base_dir)
        bare.add_tokens(sorted({token_text(t).strip() for t in toks["ko"].convert_ids_to_tokens(list(new_ids))}
                               - {""}))
        results["ko_add_tokens"]["tokens_per_char_without_space"] = round(token_stats(bare, held)["tokens_per_char"], 3)
        results["ko"]["encode_chars_per_s"] = round(encode_rate(toks["ko"], held))
        results["base_encode_chars_per_s_ko"] = round(encode_rate(base, held))

        # decoding speed: same number of greedy steps, base vs resized model; chars/s via tokens per character
        prompt = base("<|im_start|>user\nTell me about Seoul.<|im_end|>\n<|im_start|>assistant\n").input_ids
        model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        resized = copy.deepcopy(model)
        resize_embeddings(resized, toks["ko"])
        base_tps, ext_tps = gen_rates([model, resized], prompt, args.gen_tokens, args.repeats)
        # load-independent: multiply-adds per decoded token (every Linear, the LM head included)
        macs = [sum(m.weight.numel() for m in x.modules() if isinstance(m, torch.nn.Linear)) for x in (model, resized)]
        tpc_b, tpc_a = results["ko"]["tokens_per_char_before"], results["ko"]["tokens_per_char_after"]
        results["generation"] = {
            "new_tokens": args.gen_tokens, "threads": torch.get_num_threads(),
            "vocab_before": len(base), "vocab_after": len(toks["ko"]),
            "tokens_per_s_before": round(base_tps, 2), "tokens_per_s_after": round(ext_tps, 2),
            "korean_chars_per_s_before": round(base_tps / tpc_b, 2),
            "korean_chars_per_s_after": round(ext_tps / tpc_a, 2),
            "tokens_per_s_ratio": round(ext_tps / base_tps, 3),
            "korean_chars_per_s_ratio": round((ext_tps / tpc_a) / (base_tps / tpc_b), 2),
            "macs_per_token_before": macs[0], "macs_per_token_after": macs[1],
            "expected_chars_per_s_ratio": round((tpc_b / tpc_a) * macs[0] / macs[1], 2),
        }

    for key in ("ko", "ko_no_charset", "zh"):
        r = results[key]
        print(f"{key:14s} +{r['added_tokens']:5d} tokens  tokens/char {r['tokens_per_char_before']:.3f} -> "
              f"{r['tokens_per_char_after']:.3f}  ({r['token_cut']:.1%} fewer)  English unchanged: "
              f"{r['english_unchanged']}", file=sys.stderr)
    a = results["ko_add_tokens"]
    print(f"ko add_tokens   tokens/char {a['tokens_per_char_after']:.3f} ({a['tokens_per_char_without_space']:.3f} "
          f"without their spaces)  English unchanged: {a['english_unchanged']}  "
          f"encode {a['encode_chars_per_s']:,} chars/s vs merges {results['ko']['encode_chars_per_s']:,} "
          f"(base {results['base_encode_chars_per_s_ko']:,})", file=sys.stderr)
    g = results["generation"]
    print(f"generation      {g['tokens_per_s_before']} -> {g['tokens_per_s_after']} tokens/s; Korean "
          f"{g['korean_chars_per_s_before']} -> {g['korean_chars_per_s_after']} chars/s "
          f"(x{g['korean_chars_per_s_ratio']}; from multiply-adds per token x{g['expected_chars_per_s_ratio']})",
          file=sys.stderr)
    out = json.dumps(results, ensure_ascii=False, indent=2)
    print(out)
    if args.json:
        args.json.write_text(out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
