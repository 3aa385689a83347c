"""Every judge prompt language ships the same prompts with the same fields, and a question picks its language."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from camelid.core.io import CamelidError
from camelid.evaluate.judge_prompts import LABELS, check_prompt_set, load_prompt, parse_score, parse_verdict
from camelid.evaluate.questions import detect_lang

NAMES = sorted({p.name.split(".")[0] for p in resources.files("camelid.evaluate").joinpath("prompts").iterdir()
                if p.name.endswith(".txt")})


@pytest.mark.parametrize("lang", ["ko", "zh"])
@pytest.mark.parametrize("name", NAMES)
def test_each_translated_prompt_has_the_english_prompts_fields_and_verdict_format(name, lang):
    en, other = load_prompt(name, "en"), load_prompt(name, lang)
    fields = re.compile(r"\{(\w+)\}")
    assert fields.findall(other.user) == fields.findall(en.user)
    headings = re.compile(r"^## ", re.M)
    assert len(headings.findall(other.user)) == len(headings.findall(en.user))
    if name.startswith("pair"):
        assert all(v in other.system for v in ("[[A]]", "[[B]]", "[[C]]"))
    else:
        example = re.search(r'"([^"]*\[\[6\]\])"', other.system).group(1)
        assert parse_score(example) == 6


def test_chinese_questions_are_judged_with_the_chinese_prompts_and_labels():
    assert detect_lang("把下面的句子翻译成英文。") == "zh" and detect_lang("안녕하세요") == "ko"
    assert detect_lang("Hello there") == "en"
    assert set(LABELS["zh"]) == set(LABELS["en"])
    assert parse_verdict("助手 A 的回答更准确。[[A]]") == "A"


def test_chinese_is_a_judge_language_of_camelids_set_and_refused_for_fastchats_english_one():
    check_prompt_set("camelid", "zh")
    with pytest.raises(CamelidError, match="English only"):
        check_prompt_set("mt-bench", "zh")
