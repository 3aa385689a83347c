"""The output-quality filters: what they catch (a table of real weak-teacher failures) and what they must not
(Stanford-style data written by strong models: AlpacaEval's reference outputs, the Self-Instruct seed tasks, the
shipped ko/zh seeds, Self-Instruct's user-oriented evaluation set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from camelid.generate.generator import GenerateConfig
from camelid.generate.prompts import default_seeds
from camelid.generate.quality import OUTPUT_REASONS, OutputFilter, QualityConfig, repetition_ratio

CAUGHT = [
    # (lang, instruction, input, output, reason)
    ("en", "30. What is the maximum number of words that can be used in a short story?", "", "30.", "numbering_leak"),
    ("en", "What is the maximum number of words in a short story?", "", "30.", "numbering_leak"),
    ("en", "Name a fruit.", "", "Apple\n5. Instruction: Name a vegetable.", "template_leak"),
    ("en", "Name a fruit.", "", "<noinput>", "template_leak"),
    ("en", "Name a fruit.", "", "Apple.\n###\nInstruction: name a car", "template_leak"),
    ("en", "Give three tips for staying healthy.", "", "Give three tips for staying healthy.", "repeats_instruction"),
    ("en", "Give three tips for staying healthy.", "", "three tips for staying healthy", "repeats_instruction"),
    ("en", "Describe a cat.", "", "The cat is on the mat and " * 12, "repetition"),
    ("ko", "김치찌개 끓이는 법을 알려 주세요.", "", "First, heat the pot and add the kimchi with some pork.",
     "language_mismatch"),
    ("zh", "请介绍一下长城。", "", "The Great Wall is a series of fortifications in northern China.",
     "language_mismatch"),
    ("en", "Say hi.", "", " ".join(f"word{i}" for i in range(200)), "length_ratio"),
]

KEPT = [
    ("en", "What is 2 + 2?", "", "4"),  # a bare number is an answer; "4." with a period is a leaked list number
    ("en", "Output 1 for passive-aggressive, 0 otherwise.", "I'm fine.", "1"),
    ("en", "Intent can be one of: book a flight, cancel a flight.", "I want to fly to Paris.", "book a flight"),
    ("en", "Correct the grammar.", "She go to school.", "She goes to school."),
    ("ko", "다음 문장을 영어로 번역하세요.", "안녕하세요", "Hello."),  # the task asks for English
    ("ko", "정답을 고르세요.", "1+1은? (A) 2 (B) 3", "A"),  # too few letters to judge the language
    ("en", "Write a regular expression for an IPv4 address.", "",
     r"^(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\."
     r"(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)$"),
]


@pytest.mark.parametrize("lang,instruction,inp,output,reason", CAUGHT)
def test_weak_teacher_failures_are_rejected_under_their_reason(lang, instruction, inp, output, reason):
    assert reason in OUTPUT_REASONS
    assert OutputFilter(lang=lang).reason(instruction, inp, output) == reason


@pytest.mark.parametrize("lang,instruction,inp,output", KEPT)
def test_good_rows_that_look_like_failures_are_kept(lang, instruction, inp, output):
    assert OutputFilter(lang=lang).reason(instruction, inp, output) is None


def _instances(path: Path):
    for line in path.read_text(encoding="utf-8").splitlines():
        t = json.loads(line)
        for x in t["instances"]:
            yield t["instruction"], x["input"], x["output"]


def test_the_shipped_seed_tasks_pass_every_filter():
    for lang in ("en", "ko", "zh"):
        f = OutputFilter(lang=lang)
        rows = list(_instances(default_seeds(lang)))
        rejected = [(r, f.reason(*r)) for r in rows if f.reason(*r)]
        assert rejected == [], lang


def test_strong_models_outputs_have_no_false_rejections(shared_data):
    """AlpacaEval's 805 reference outputs, the original 175 seed tasks, the 252 user-oriented instructions."""
    f = OutputFilter()
    rows = [(x["instruction"], "", x["output"])
            for x in json.loads((shared_data / "alpaca_eval" / "example_outputs.json").read_text(encoding="utf-8"))]
    rows += list(_instances(shared_data / "self-instruct" / "seed_tasks.jsonl"))
    rows += list(_instances(shared_data / "self-instruct" / "user_oriented_instructions.jsonl"))
    assert len(rows) == 805 + 175 + 252
    assert [r for r in rows if f.reason(*r)] == []


def test_korean_instructions_with_english_outputs_are_language_mismatches(shared_data):
    """KULLM translated Self-Instruct's evaluation instructions into Korean but left the outputs in English: the
    Korean filter must notice (rows whose input is English text, or that ask for a translation, stay)."""
    f = OutputFilter(lang="ko")
    reasons = [f.reason(*r) for r in _instances(shared_data / "kullm" / "user_oriented_instructions_eval_ko.jsonl")]
    assert set(reasons) <= {"language_mismatch", None}
    assert reasons.count("language_mismatch") >= 200


def test_thresholds_come_from_the_config_and_bad_ones_are_refused():
    loop = "The cat is on the mat and " * 12
    assert repetition_ratio(loop) > 0.5
    lenient = GenerateConfig(output="x.jsonl", quality={"max_repetition": 0.99})
    assert OutputFilter(lenient.quality).reason("Describe a cat.", "", loop) is None
    off = GenerateConfig(output="x.jsonl", quality={"enabled": False})
    assert OutputFilter(off.quality).reason("30. Name it", "", "30.") is None
    with pytest.raises(ValidationError):
        QualityConfig(max_repetition=0)
    with pytest.raises(ValidationError):
        GenerateConfig(output="x.jsonl", quality={"no_such_threshold": 1})
