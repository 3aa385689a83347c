"""Programmatic behaviour checks: each kind on answers that pass and fail, and configs that are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from camelid.data.checks import Check

CASES = [
    ({"contains": "Camelid"}, "I'm camelid, happy to help.", True),
    ({"contains": "Camelid"}, "Happy to help.", False),
    ({"starts_with": "Ahoy"}, '"Ahoy! The sea is blue.', True),
    ({"starts_with": "Ahoy"}, "The sea is blue. Ahoy!", False),
    ({"ends_with": "Hope this helps!"}, "Paris is the capital.\n\nHope this helps!", True),
    ({"ends_with": "Hope this helps!"}, "Paris is the capital. hope this helps", True),
    ({"ends_with": "Hope this helps!"}, "Hope this helps! Paris.", False),
    ({"regex": r"^\W*Dear"}, "Dear reader, hi", True),
    ({"bullets": 3}, "- one\n- two\n* three", True),
    ({"bullets": 3}, "- one\n- two", False),
    ({"bullets": 2}, "1. one\n2. two\nthe end", True),
    ({"lang": "ko"}, "서울은 한국의 수도입니다. Seoul", True),
    ({"lang": "ko"}, "Seoul is the capital.", False),
    ({"lang": "zh"}, "北京是中国的首都。", True),
    ({"lang": "zh"}, "", False),
]


@pytest.mark.parametrize("spec,answer,expected", CASES)
def test_each_check_passes_and_fails_the_right_answers(spec, answer, expected):
    c = Check(**spec)
    assert c.passes(answer) is expected
    assert c.describe()


@pytest.mark.parametrize("spec", [{}, {"contains": "a", "bullets": 2}, {"regex": "("}, {"bullets": 0},
                                  {"lang": "fr"}, {"mentions": "x"}])
def test_a_check_needs_exactly_one_valid_field(spec):
    with pytest.raises(ValidationError):
        Check(**spec)
