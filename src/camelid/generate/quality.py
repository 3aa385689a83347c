"""Data-quality filters on a generated (instruction, input, output) row, each with a reason.

Stanford's and Wang et al.'s filters look at the instruction; a weak teacher's failures are mostly in the output:
the prompt's numbering or labels leaking into it ("30.", "Instruction:", "<noinput>"), an output that only
repeats the instruction or its list number, a loop ("the cat is the cat is ..."), an answer in English to a
Korean instruction, an output hundreds of times longer than what it answers. The defaults reject nothing in
Stanford-style data written by strong models (AlpacaEval's 805 reference outputs and the 175 seed tasks: see
tests/generate/test_quality.py); every threshold is a config field (`generate.quality` in a recipe).
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from camelid.generate.filters import SCRIPT, _LETTER

OUTPUT_REASONS = {
    "numbering_leak": "the instruction starts with, or the output is, a list number ('30.')",
    "template_leak": "the output contains the generation prompt's labels ('Instruction:', '<noinput>', '###')",
    "repeats_instruction": "the output only repeats the instruction",
    "repetition": "degenerate repetition: too many repeated word n-grams in the output",
    "language_mismatch": "the output is not in the instruction's language (--lang ko|zh)",
    "length_ratio": "the output is far longer than the instruction and input (a rambling teacher)",
}

_NUMBERING = re.compile(r"^\s*(\d{1,3})\s*[.)]\s+\S")  # "30. What is ..." (a leaked list number)
_NUMBER_ONLY = re.compile(r"^\s*(\d{1,3})\s*\.\s*$")  # "30." (a bare number is a fine answer: "4")
_LABEL = re.compile(r"(?im)^\s*(?:#+\s*)?(?:\d+\s*\.\s*)?(?:instruction|input|output)\s*:|<\s*no\s*input\s*>|^\s*###")
_WORD = re.compile(r"\w+")
# an output in another language is right when the task asks for one (translation, code)
_OTHER_LANGUAGE_OK = re.compile(r"(?i)english|translat|code|python|java|sql|regex|영어|영문|번역|코드|英文|英语|翻译|"
                                r"代码|程序")


class QualityConfig(BaseModel):
    """Thresholds of the output-quality filters (`enabled: false` turns them all off)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    numbering: bool = Field(True, description="reject list numbers leaked into the instruction or output ('30.')")
    template: bool = Field(True, description="reject outputs with the prompt's labels (Instruction:, <noinput>)")
    repeats_instruction: float = Field(0.9, gt=0, le=1, description="reject an output whose ROUGE-L F1 (words) "
                                       "against the instruction is at least this")
    repetition_n: int = Field(4, ge=1, description="n-gram size of the repetition check (words; characters for zh)")
    max_repetition: float = Field(0.5, gt=0, le=1, description="reject when more than this share of the output's "
                                  "n-grams are repeats (strong models' outputs: at most 0.40)")
    min_script: float = Field(0.3, ge=0, le=1, description="ko/zh: reject an output with fewer letters of the "
                              "target script than this share (unless the task asks for English, a translation or "
                              "code)")
    max_length_ratio: float = Field(60.0, gt=0, description="reject an output more than this many times as long "
                                    "as instruction + input in words (strong models' outputs: at most 28)")
    min_length_words: int = Field(80, ge=0, description="the length-ratio check applies only to outputs of at "
                                  "least this many words")


def _words(text: str, lang: str) -> list[str]:
    """Words for en/ko (spaces), characters (no spaces) for zh."""
    if lang == "zh":
        return [c for c in text if not c.isspace()]
    return text.lower().split()


def _tokens(text: str, lang: str) -> list[str]:
    """Words without punctuation (characters for zh), for comparing an output with its instruction."""
    return _words(text, lang) if lang == "zh" else _WORD.findall(text.lower())


def repetition_ratio(text: str, n: int = 4, lang: str = "en") -> float:
    """Share of the text's n-grams that repeat an earlier one (0 = none; short texts score 0)."""
    w = _words(text, lang)
    if len(w) < n + 8:
        return 0.0
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return 1 - len(set(grams)) / len(grams)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def script_share(text: str, lang: str) -> tuple[float, int]:
    """(share of letters in the lang's script, letters) for ko/zh."""
    letters = len(_LETTER.findall(text))
    return (len(SCRIPT[lang].findall(text)) / letters if letters else 1.0), letters


class OutputFilter:
    """The output-quality filters for one language."""

    def __init__(self, cfg: Optional[QualityConfig] = None, lang: str = "en"):
        self.cfg = cfg or QualityConfig()
        self.lang = lang

    def reason(self, instruction: str, input: str, output: str) -> str | None:
        """Why the row is rejected, or None (checks in the order of OUTPUT_REASONS)."""
        c = self.cfg
        if not c.enabled:
            return None
        if c.numbering and (_NUMBERING.match(instruction) or _NUMBER_ONLY.match(output)):
            return "numbering_leak"
        if c.template and _LABEL.search(output):
            return "template_leak"
        out_w, inst_w = _tokens(output, self.lang), _tokens(instruction, self.lang)
        short = min(len(out_w), len(inst_w))
        if out_w and 2 * short >= c.repeats_instruction * (len(out_w) + len(inst_w)) and 2 * _lcs(out_w, inst_w) >= c.repeats_instruction * (len(out_w) + len(inst_w)):
            return "repeats_instruction"
        if repetition_ratio(output, c.repetition_n, self.lang) > c.max_repetition:
            return "repetition"
        if self.lang in SCRIPT and not _OTHER_LANGUAGE_OK.search(instruction):
            share, letters = script_share(output, self.lang)
            asked, _ = script_share(instruction + " " + input, self.lang)
            if letters >= 8 and share < c.min_script and asked >= c.min_script:
                return "language_mismatch"
        n_out = len(_words(output, self.lang))
        n_in = len(_words(instruction, self.lang)) + len(_words(input, self.lang))
        if n_out >= c.min_length_words and n_out > c.max_length_ratio * max(n_in, 1):
            return "length_ratio"
        return None
