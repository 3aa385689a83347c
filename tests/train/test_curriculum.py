"""Curriculum ordering: each rule, stable ties, determinism, and errors that name the record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camelid.core.io import CamelidError, DataError
from camelid.train.curriculum import is_translation, order_examples

INSTRUCTIONS = Path(__file__).resolve().parents[2] / "src" / "camelid" / "train" / "data" / "ko_instructions.jsonl"


def _recs():
    return [
        {"id": "a", "instruction": "Write a long story about a dragon.", "output": "x" * 300, "difficulty": 3},
        {"id": "b", "instruction": "다음 문장을 영어로 번역하세요.", "input": "안녕하세요", "output": "Hello", "difficulty": 1},
        {"id": "c", "instruction": "Name a color.", "output": "Red", "difficulty": 1},
        {"id": "d", "messages": [{"role": "user", "content": "请把这句话翻译成英文：你好"},
                                 {"role": "assistant", "content": "Hello"}], "difficulty": 2},
        {"id": "e", "instruction": "Summarize the text.", "input": "y" * 100, "output": "short", "difficulty": 2},
    ]


def _ids(records):
    return [r["id"] for r in records]


def test_field_rule_orders_by_number_and_keeps_ties_in_input_order():
    ordered, info = order_examples(_recs(), "field", field="difficulty")
    assert _ids(ordered) == ["b", "c", "d", "e", "a"]
    assert [(s["name"], s["size"], s["first_id"], s["last_id"]) for s in info["stages"]] == [
        (1, 2, "b", "c"), (2, 2, "d", "e"), (3, 1, "a", "a")]
    assert info["first_id"] == "b" and info["last_id"] == "a" and info["records"] == 5


def test_field_rule_follows_the_listed_stage_order_for_names():
    recs = [{"id": i, "stage": s} for i, s in enumerate(["hard", "easy", "medium", "easy", "hard"])]
    ordered, info = order_examples(recs, "field", field="stage", stages=["easy", "medium", "hard"])
    assert [r["id"] for r in ordered] == [1, 3, 2, 0, 4]
    assert [s["size"] for s in info["stages"]] == [2, 1, 2]


def test_field_rule_errors_name_the_record_and_field():
    recs = [{"id": 0, "stage": "easy"}, {"id": 1}]
    with pytest.raises(DataError, match=r"record 1: field 'stage'"):
        order_examples(recs, "field", field="stage", stages=["easy"])
    with pytest.raises(DataError, match="not one of the stages"):
        order_examples([{"stage": "odd"}], "field", field="stage", stages=["easy"])
    with pytest.raises(DataError, match="not a number"):
        order_examples([{"stage": "easy"}], "field", field="stage")
    with pytest.raises(CamelidError, match="needs a field"):
        order_examples(_recs(), "field")
    with pytest.raises(CamelidError, match="unknown"):
        order_examples(_recs(), "alphabetical")


def test_length_rule_puts_short_records_first_and_cuts_equal_stages():
    ordered, info = order_examples(_recs(), "length", stages=2)
    assert _ids(ordered) == ["c", "d", "b", "e", "a"]  # 16, 18, 27, 124, 334 characters
    assert [s["size"] for s in info["stages"]] == [2, 3] and info["stages"][0]["name"] == "length1"
    same = [{"id": i, "text": "abc"} for i in range(4)]
    assert [r["id"] for r in order_examples(same, "length")[0]] == [0, 1, 2, 3]  # stable


def test_translation_first_detects_pairs_in_korean_english_and_chinese():
    ordered, info = order_examples(_recs(), "translation_first")
    assert _ids(ordered) == ["b", "d", "a", "c", "e"]
    assert [(s["name"], s["size"]) for s in info["stages"]] == [("translation", 2), ("other", 3)]
    assert is_translation({"instruction": "Translate this into French."})
    assert is_translation({"instruction": "이 문장을 한국어로 옮겨 주세요."})
    assert not is_translation({"instruction": "What is machine translation's history?", "task": "open_qa"})


def test_translation_first_uses_a_marking_field_over_detection():
    recs = [{"id": 0, "instruction": "Translate: hi", "is_pair": False}, {"id": 1, "instruction": "x", "is_pair": True}]
    assert [r["id"] for r in order_examples(recs, "translation_first", field="is_pair")[0]] == [1, 0]


def test_shipped_korean_instructions_put_all_marked_translations_first():
    recs = [json.loads(line) for line in INSTRUCTIONS.read_text(encoding="utf-8").splitlines()]
    ordered, info = order_examples(recs, "translation_first", field="task")
    n = sum(r["task"] == "translation" for r in recs)
    assert n > 0 and all(r["task"] == "translation" for r in ordered[:n])
    unmarked = [{k: v for k, v in r.items() if k != "task"} for r in recs]
    assert [is_translation(r) for r in unmarked] == [r["task"] == "translation" for r in recs]
    json.dumps(info)  # JSON-able for camelid.json


def test_shuffle_is_seeded_and_a_permutation():
    recs = [{"id": i} for i in range(50)]
    a, info = order_examples(recs, "shuffle", seed=1)
    b, _ = order_examples(recs, "shuffle", seed=1)
    c, _ = order_examples(recs, "shuffle", seed=2)
    assert a == b and a != c and sorted(r["id"] for r in a) == list(range(50))
    assert info["seed"] == 1 and info["first_id"] == a[0]["id"] and info["last_id"] == a[-1]["id"]


def test_every_rule_is_deterministic_and_leaves_the_input_alone():
    recs = _recs()
    before = json.dumps(recs)
    for rule, kw in (("field", {"field": "difficulty"}), ("length", {}), ("translation_first", {}), ("shuffle", {})):
        assert order_examples(recs, rule, **kw) == order_examples(recs, rule, **kw)
    assert json.dumps(recs) == before
    assert order_examples([], "length") == ([], {"rule": "length", "field": None, "seed": None, "records": 0,
                                                 "stages": [{"name": "all", "size": 0, "first_id": None,
                                                             "last_id": None}],
                                                 "first_id": None, "last_id": None})
