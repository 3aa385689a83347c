import itertools
import re

import pytest

from camelid.evaluate.judge import combine
from camelid.evaluate.judge_prompts import load_prompt, parse_score, parse_verdict


@pytest.mark.parametrize("text, score", [
    ("Good answer. Rating: [[7]]", 7.0), ("[[8.5]]", 8.5), ("Score [[ 9 ]] overall", 9.0), ("[[7/10]]", 7.0),
    ('As in "Rating: [[5]]" ... my rating: [[3]]', 3.0),  # the last one is the verdict
    ("Rating: [[7.]]", 7.0),
    ("Rating: [6]", 6.0), ("평점: [[4]]", 4.0), ("no verdict at all", None), ("[[0]]", None), ("[[11]]", None),
])
def test_rating_is_parsed_in_the_spellings_judges_use(text, score):
    assert parse_score(text) == score


def test_verdict_is_the_last_bracketed_letter():
    assert parse_verdict("A is nicer. [[A]]") == "A"
    assert parse_verdict('Format: "[[A]]", "[[B]]" or "[[C]]". Verdict: [[b]]') == "B"
    assert parse_verdict("[[tie]]") == "C" and parse_verdict("[C]") is None


def test_disagreement_between_the_two_orders_is_a_tie_and_an_unparsed_game_an_error():
    assert combine("model_1", "model_1") == "model_1"
    assert combine("model_2", "model_2") == "model_2"
    assert combine("model_1", "model_2") == "tie"  # position bias: each order preferred the one shown first
    assert combine("model_1", "tie") == "tie"
    assert combine("error", "model_1") == "error"


def test_every_judge_prompt_exists_in_english_and_korean_and_renders():
    fields = {"question": "Q?", "answer": "ANS", "reference": "REF", "answer_a": "AA", "answer_b": "BB",
              "conversation": "CONV", "reference_conversation": "RCONV", "conversation_a": "CA",
              "conversation_b": "CB"}
    for kind, ref, multi, lang in itertools.product(("single", "pair"), ("", "-ref"), ("", "-multi"), ("en", "ko")):
        p = load_prompt(f"{kind}{ref}{multi}", lang)
        msgs = p.messages(**fields)
        user = msgs[1]["content"]
        assert msgs[0]["role"] == "system" and "[[" in p.system and "{" not in user
        assert ("REF" in user or "RCONV" in user) == bool(ref)
        if lang == "ko":
            assert re.search("[가-힣]", p.system) and re.search("[가-힣]", user)
        if kind == "pair":
            assert all(v in p.system for v in ("[[A]]", "[[B]]", "[[C]]"))
