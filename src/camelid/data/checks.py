"""Programmatic checks of an answer's form: did the model do what it was told (a name, a sign-off, bullets, a
language)? They measure a behaviour without a judge, before and after training (context distillation)."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.M)
_SCRIPT = {"ko": re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]"),
           "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")}
_LETTER = re.compile(r"[^\W\d_]")


class Check(BaseModel):
    """One test an answer passes or fails; give exactly one of the fields."""

    model_config = ConfigDict(extra="forbid")

    contains: Optional[str] = Field(None, description="the answer mentions this text (case-insensitive)")
    starts_with: Optional[str] = Field(None, description="the answer opens with this text (case-insensitive, "
                                       "leading spaces and quotes ignored)")
    ends_with: Optional[str] = Field(None, description="the answer closes with this text (case-insensitive, "
                                     "trailing spaces and punctuation ignored)")
    regex: Optional[str] = Field(None, description="the pattern matches somewhere in the answer (Python re)")
    bullets: Optional[int] = Field(None, ge=1, description="the answer has exactly this many bullet lines "
                                   "(-, *, • or 1.)")
    lang: Optional[Literal["ko", "zh"]] = Field(None, description="most letters of the answer are Korean/Chinese")

    @model_validator(mode="after")
    def _one(self) -> "Check":
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(type(self).model_fields)} (got {given or 'none'})")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"regex {self.regex!r}: {e}") from None
        return self

    def passes(self, answer: str) -> bool:
        text = answer.strip()
        if self.contains is not None:
            return self.contains.lower() in text.lower()
        if self.starts_with is not None:
            return text.lstrip("\"'“‘*# ").lower().startswith(self.starts_with.lower())
        if self.ends_with is not None:
            strip = " \n\t.!?\"'”’)*"
            return text.rstrip(strip).lower().endswith(self.ends_with.lower().rstrip(strip))
        if self.regex is not None:
            return re.search(self.regex, text) is not None
        if self.bullets is not None:
            return len(_BULLET.findall(text)) == self.bullets
        letters = _LETTER.findall(text)
        return bool(letters) and len(_SCRIPT[self.lang].findall(text)) / len(letters) >= 0.5

    def describe(self) -> str:
        if self.contains is not None:
            return f"mentions “{self.contains}”"
        if self.starts_with is not None:
            return f"starts with “{self.starts_with}”"
        if self.ends_with is not None:
            return f"ends with “{self.ends_with}”"
        if self.regex is not None:
            return f"matches /{self.regex}/"
        if self.bullets is not None:
            return f"has exactly {self.bullets} bullet lines"
        return {"ko": "is in Korean", "zh": "is in Chinese"}[self.lang]
