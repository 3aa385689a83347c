"""Near-duplicate filtering: Stanford's decisions exactly (against rouge_score itself and against camelid's previous
filter, which scored every candidate against the whole pool), Korean and Chinese."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from camelid.cli import main
from camelid.data.dedup import Deduper, chinese_tokens, dedup_file, detect_lang, korean_tokens, rouge_tokens
from camelid.generate.prompts import default_seeds, load_seeds

from .dedup_reference import Deduper as PreviousDeduper

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")


def _real_instructions(shared_data) -> tuple[list[str], list[str]]:
    seeds = [json.loads(x)["instruction"] for x in open(shared_data / "self-instruct/seed_tasks.jsonl")]
    cands = [json.loads(x)["instruction"] for x in open(shared_data / "self-instruct/user_oriented_instructions.jsonl")]
    cands += [r["instruction"] for r in json.load(open(shared_data / "alpaca_eval/example_outputs.json"))]
    for name in ("mt_bench_question.jsonl", "vicuna_bench_question.jsonl"):
        for line in open(shared_data / "fastchat" / name):
            cands += json.loads(line)["turns"]
    return seeds, cands


def _stanford(seeds: list[str], cands: list[str], threshold: float = 0.7) -> list[dict | None]:
    """generate_instruction.py's loop (without its per-candidate process pool)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = list(seeds)
    pool_tokens = [scorer._tokenizer.tokenize(x) for x in pool]
    out: list[dict | None] = []
    for inst in cands:
        toks = scorer._tokenizer.tokenize(inst)
        scores = [rouge_scorer._score_lcs(toks, t).fmeasure for t in pool_tokens]
        if max(scores) > threshold:
            out.append(None)
            continue
        top = {pool[i]: scores[i] for i in np.argsort(scores)[-10:][::-1]}
        out.append({"most_similar_instructions": top, "avg_similarity_score": float(np.mean(scores))})
        pool.append(inst)
        pool_tokens.append(toks)
    return out


def _camelid(seeds: list[str], cands: list[str], block: int = 256, threshold: float = 0.7) -> list[dict | None]:
    dd = Deduper(threshold, "en", block=block)
    dd.add(seeds)
    return [v.fields() if v.keep else None for v in dd.offer_many(cands)]


def _assert_same(ref: list[dict | None], ours: list[dict | None]) -> None:
    assert [r is None for r in ref] == [o is None for o in ours]
    for r, o in zip(ref, ours):
        if r is not None:
            assert list(r["most_similar_instructions"].values()) == list(o["most_similar_instructions"].values())
            assert r["avg_similarity_score"] == pytest.approx(o["avg_similarity_score"], abs=1e-12)


def _assert_same_as_previous(seeds: list[str], cands: list[str], lang: str = "en", threshold: float = 0.7,
                             batch: int | None = None) -> list[bool]:
    """The indexed filter (with and without the similarity fields) against the previous one, verdict by
    verdict; `batch` offers the candidates a few at a time, as generation does (the index re-ranks as it grows)."""
    def run(dd) -> list:
        dd.add(seeds)
        if batch is None:
            return dd.offer_many(cands)
        return [v for i in range(0, len(cands), batch) for v in dd.offer_many(cands[i:i + batch])]

    old = run(PreviousDeduper(threshold, lang))
    new = run(Deduper(threshold, lang))
    bare = run(Deduper(threshold, lang, similarity=False))
    assert [v.keep for v in old] == [v.keep for v in new] == [v.keep for v in bare]
    for o, n, b in zip(old, new, bare):
        if o.keep:
            assert (n.most_similar, n.score, n.similar_to) == (o.most_similar, o.score, o.similar_to)
            assert b.score is None
            # the previous filter summed a block's pool part and its in-block part apart: one ulp or two
            assert n.avg == o.avg if batch == 1 else n.avg == pytest.approx(o.avg, abs=1e-12)
        else:
            assert (n.score, n.similar_to) == (b.score, b.similar_to) == (o.score, o.similar_to)
    return [v.keep for v in old]


def _synthetic(n: int, seed: int, vocab: list[str], join: str = " ", dup_share: float = 0.3) -> list[str]:
    """Zipf-distributed words with near-duplicates of earlier texts (a word replaced, dropped or added)."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 1.1 for i in range(len(vocab))]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_share:
            w = rng.choice(out).split(join) if join else list(rng.choice(out))
            for _ in range(rng.randint(1, 2)):
                j, op = rng.randrange(len(w)), rng.random()
                if op < 0.4:
                    w[j] = rng.choices(vocab, weights)[0]
                elif op < 0.7 and len(w) > 3:
                    del w[j]
                else:
                    w.insert(j, rng.choices(vocab, weights)[0])
            out.append(join.join(w))
        else:
            out.append(join.join(rng.choices(vocab, weights, k=rng.randint(4, 24))))
    return out


def test_tokenizer_is_rouge_scores_token_for_token(shared_data):
    seeds, cands = _real_instructions(shared_data)
    tricky = ["İstanbul's ÇAĞ-2 naïve café_au_lait", "x\ny\tz  ", "ＡＢＣ１２３ full width", "한국어 only", "!!!", "",
              "e.g. 3.14 — ok?", "snake_case_word and CamelCase", "ß and ǅ letters", "x²+y³ ≤ 10"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for text in seeds + cands + tricky:
        assert rouge_tokens(text) == scorer._tokenizer.tokenize(text), text


def test_decisions_and_scores_equal_stanfords_loop_on_real_instructions(shared_data):
    seeds, cands = _real_instructions(shared_data)
    cands = cands[:160] + cands[252:300] + cands[-90:]  # includes exact repeats (AlpacaEval holds both sets)
    ref = _stanford(seeds, cands)
    assert any(r is None for r in ref) and any(r is not None for r in ref)
    _assert_same(ref, _camelid(seeds, cands))
    _assert_same(ref, _camelid(seeds, cands, block=7))  # many blocks: the in-block greedy order matters


def test_indexed_filter_equals_the_previous_one_on_real_instructions(shared_data):
    seeds, cands = _real_instructions(shared_data)
    keep = _assert_same_as_previous(seeds, cands)
    assert 0 < keep.count(False) < len(cands)
    for threshold in (0.3, 0.5, 0.9, 1.0):  # other thresholds move the prefix and length bounds
        _assert_same_as_previous(seeds, cands[:300], threshold=threshold)


def test_indexed_filter_equals_the_previous_one_on_synthetic_instructions():
    vocab = [f"w{i}" for i in range(3000)]
    seeds = _synthetic(175, 0, vocab, dup_share=0)
    keep = _assert_same_as_previous(seeds, _synthetic(3000, 1, vocab))
    assert keep.count(False) > 500
    # a few at a time, with new words arriving as the pool grows: the index re-ranks (at 512, 1024, 2048 entries)
    vocab2 = vocab + [f"new{i}" for i in range(2000)]
    _assert_same_as_previous(seeds, _synthetic(3000, 2, vocab2[::-1]), batch=16)
    # tiny texts, empty ones, repeated tokens
    tiny = _synthetic(800, 3, ["a", "b", "c", "d", "e", "the"], dup_share=0.5) + ["", "!!!", "a a a a", "a a a"]
    _assert_same_as_previous(["", "a b c"], tiny, batch=7)
    _assert_same_as_previous(seeds, _synthetic(1000, 5, vocab2), batch=1)  # generation before: offer one at a time


def test_indexed_filter_equals_the_previous_one_in_korean_and_chinese(shared_data):
    rows = [json.loads(x) for x in open(shared_data / "kullm/user_oriented_instructions_eval_ko.jsonl")]
    originals = [r["instruction"] for r in rows]
    rng = random.Random(3)
    cands = originals + [_perturb_ko(t, rng) for t in originals]
    rng.shuffle(cands)
    ko_seeds = [t.instruction for t in load_seeds(default_seeds("ko"))]
    keep = _assert_same_as_previous(ko_seeds, cands, lang="ko")
    assert keep.count(False) >= 200
    _assert_same_as_previous(ko_seeds, cands, lang="ko", batch=16)

    zh_seeds = [t.instruction for t in load_seeds(default_seeds("zh"))]
    chars = sorted({c for t in zh_seeds for c in t if "\u4e00" <= c <= "\u9fff"})
    zh = _synthetic(1500, 4, chars, join="")
    keep = _assert_same_as_previous(zh_seeds, zh, lang="zh")
    assert 100 < keep.count(False) < 1400
    _assert_same_as_previous(zh_seeds, zh, lang="zh", batch=16)


def test_scores_exactly_at_the_threshold_decide_as_rouge_score_does():
    # pairs whose ROUGE-L is 0.7 on paper: rouge_score's float lands on either side of 0.7 by an ulp
    rng = random.Random(0)
    words = [f"w{i}" for i in range(200)]
    seeds, cands = [], []
    for a in range(3, 40):
        for b in range(3, 40):
            for lcs in range(1, min(a, b) + 1):
                if 20 * lcs == 7 * (a + b):
                    base = rng.sample(words, a)
                    other = base[:lcs] + [f"z{i}" for i in range(b - lcs)]
                    seeds.append(" ".join(base))
                    cands.append(" ".join(other))
    decisions = []
    for s, c in zip(seeds, cands):  # one seed each, so every pair is decided on its own
        ref = _stanford([s], [c])
        _assert_same(ref, _camelid([s], [c]))
        decisions.append(ref[0] is None)
    assert 0 < sum(decisions) < len(decisions)  # rounding put some above 0.7 and some not


def test_empty_token_lists_score_zero_like_rouge_score():
    dd = Deduper()
    dd.add(["!!!", "Describe a sunny day at the beach."])
    v = dd.offer("???")  # no tokens: rouge_score returns 0 against everything (RapidFuzz would say 1.0)
    assert v.keep and v.score == 0.0 and v.avg == 0.0
    assert list(v.most_similar.values()) == [0, 0] and all(type(x) is int for x in v.most_similar.values())


def test_offer_many_gives_the_verdicts_of_offer_one_at_a_time():
    rng = random.Random(1)
    vocab = [f"t{i}" for i in range(400)] + ["the", "a", "of", "to", "and"] * 40
    texts = []
    for _ in range(600):
        if texts and rng.random() < 0.3:
            w = rng.choice(texts).split()
            w[rng.randrange(len(w))] = rng.choice(vocab)
            texts.append(" ".join(w))
        else:
            texts.append(" ".join(rng.choices(vocab, k=rng.randint(4, 18))))
    one = Deduper(block=1)
    singles = [one.offer(t) for t in texts]
    many = Deduper(block=64).offer_many(texts)
    assert [v.keep for v in singles] == [v.keep for v in many]
    assert sum(not v.keep for v in many) > 50
    for a, b in zip(singles, many):
        assert a.most_similar == b.most_similar and a.score == b.score
        assert a.avg == pytest.approx(b.avg, abs=1e-12)


def _perturb_ko(text: str, rng: random.Random) -> str:
    words = text.split()
    op = rng.randrange(3)
    if op == 0 and len(words) >= 4:
        del words[rng.randrange(1, len(words) - 1)]
    elif op == 1:
        words.insert(0, rng.choice(["다음", "주어진", "아래의"]))
    else:
        changed = re.sub(r"합니다\.?$", "하세요.", re.sub(r"하세요\.?$", "해 주세요.", text))
        if changed != text:
            return changed
        words.append("부탁합니다.")
    return " ".join(words)


def test_korean_near_duplicates_are_caught(shared_data):
    rows = [json.loads(x) for x in open(shared_data / "kullm/user_oriented_instructions_eval_ko.jsonl")]
    originals = [r["instruction"] for r in rows]
    rng = random.Random(0)
    near = [_perturb_ko(t, rng) for t in originals]
    assert detect_lang(originals) == "ko"

    ko = Deduper(lang="ko")
    kept_originals = sum(v.keep for v in ko.offer_many(originals))
    caught = sum(not v.keep for v in ko.offer_many(near))
    assert kept_originals >= 0.95 * len(originals)  # distinct tasks stay (English set: 248 of 252)
    assert caught >= 0.95 * len(near)

    en = Deduper(lang="en")  # rouge_score drops every Hangul character: most pairs score 0
    en.offer_many(originals)
    assert sum(not v.keep for v in en.offer_many(near)) < 0.3 * len(near)


def test_korean_and_chinese_tokens():
    assert korean_tokens("요약해 주세요.") == ["요약", "하", "어", "주", "세요"]
    assert "api" in korean_tokens("API를 호출하는 Python 코드")
    assert chinese_tokens("用Python写一个函数, 3.14!") == ["用", "python", "写", "一", "个", "函", "数", "3", "14"]
    assert detect_lang(["解释下面这个成语的意思。"]) == "zh" and detect_lang(["Hello there"]) == "en"
    zh = Deduper(lang="zh")
    zh.add(["解释下面这个成语的意思，并用它造一个句子。"])
    assert not zh.offer("请解释下面这个成语的意思，并用它造句。").keep
    assert zh.offer("中国古代的四大发明指的是什么？").keep


def test_dedup_command_writes_kept_records_and_the_rejected_sidecar(tmp_path, capsys):
    rows = [{"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
            {"instruction": "Give three tips for staying very healthy.", "input": "", "output": "Same."},
            {"instruction": "Translate the sentence into French.", "input": "I like tea.", "output": "J'aime le thé."}]
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "dedup.jsonl"
    assert main(["data", "dedup", str(src), "-o", str(out)]) == 0
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["instruction"] for r in kept] == [rows[0]["instruction"], rows[2]["instruction"]]
    assert kept[0]["most_similar_instructions"] == {} and kept[0]["avg_similarity_score"] == 0.0
    assert set(kept[1]["most_similar_instructions"]) == {rows[0]["instruction"]}
    rejected = [json.loads(x) for x in (tmp_path / "dedup.rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["reason"] == "near_duplicate" and rejected[0]["similar_to"] == rows[0]["instruction"]
    assert rejected[0]["similarity"] > 0.7

    bare = tmp_path / "bare.jsonl"  # decisions only: the same records, without Stanford's similarity fields
    assert main(["data", "dedup", str(src), "-o", str(bare), "--no-similarity"]) == 0
    assert [json.loads(x) for x in bare.read_text().splitlines()] == [rows[0], rows[2]]
    assert (tmp_path / "bare.rejected.jsonl").read_text() == (tmp_path / "dedup.rejected.jsonl").read_text()

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Translate the sentence into French.", "instances": []}) + "\n")
    rep = dedup_file(src, tmp_path / "d2.json", seeds=[seeds])
    assert (rep.kept, rep.rejected, rep.lang) == (1, 2, "en")
    assert len(json.loads((tmp_path / "d2.json").read_text())) == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"input": "x"}) + "\n")
    assert main(["data", "dedup", str(bad), "-o", str(tmp_path / "x.jsonl")]) == 1
    assert f"{bad}:2: field 'instruction': missing" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_dedup_command_starts_without_the_model_stack_or_jinja(tmp_path):
    # bench/dedup.py times `camelid data dedup` as a command, start-up included: it imports what it runs, no more
    src = tmp_path / "data.jsonl"
    src.write_text(json.dumps({"instruction": "Give three tips for staying healthy."}) + "\n")
    code = ("import sys; from camelid.cli import main; rc = main(sys.argv[1:]); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'transformers', 'jinja2') or m.startswith(('camelid.models.', "
            "'camelid.train', 'camelid.generate', 'camelid.serve', 'camelid.evaluate')) or m == 'camelid.models')); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "data", "dedup", str(src), "-o", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_dedup_command_detects_korean_and_catches_its_near_duplicates(shared_data, tmp_path):
    rows = [json.loads(x) for x in open(shared_data / "kullm/user_oriented_instructions_eval_ko.jsonl")][:60]
    rng = random.Random(5)
    near = [{**r, "instruction": _perturb_ko(r["instruction"], rng)} for r in rows[:20]]
    src = tmp_path / "ko.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + near), encoding="utf-8")
    rep = dedup_file(src, tmp_path / "out.jsonl")
    assert rep.lang == "ko" and rep.rejected >= 20 and rep.kept >= 55
    rejected = [json.loads(x) for x in (tmp_path / "out.rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(r["instruction"] in {n["instruction"] for n in near} for r in rejected) >= 19
