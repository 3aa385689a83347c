"""Judge prompt sets: how a question and its answers become the judge's messages, and how its reply is read.

- `camelid` (default): camelid's own prompts in English, Korean and Chinese (`prompts/{name}.{lang}.txt`), any number
  of turns, lenient reading (the last `[[n]]`; `[[7.]]`, `[[7/10]]`, `[[tie]]`).
- `mt-bench`: FastChat's MT-bench judge prompts byte for byte (`prompts/mt-bench.jsonl`, Apache-2.0, origin in
  `prompts/README.md`), filled and read exactly as FastChat's `llm_judge/common.py` does, so single scores and
  pairwise verdicts are comparable with published MT-bench numbers.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from camelid.core.io import CamelidError
from camelid.evaluate.questions import Question

PROMPT_SETS = ("camelid", "mt-bench")
NEED_REF = {"math", "reasoning", "coding"}  # categories graded against a reference answer when one exists
MT_BENCH_NEED_REF = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's NEED_REF_CATS
LABELS = {"en": {"user": "User", "assistant": "Assistant", "reference": "Reference answer"},
          "ko": {"user": "사용자", "assistant": "어시스턴트", "reference": "모범 답안"},
          "zh": {"user": "用户", "assistant": "助手", "reference": "参考答案"}}
# FastChat's gen_judgment.py: make_judge_single / make_judge_pairwise, keyed by (kind, reference-based, multi-turn)
MT_BENCH_NAMES = {
    ("single", False, False): "single-v1", ("single", True, False): "single-math-v1",
    ("single", False, True): "single-v1-multi-turn", ("single", True, True): "single-math-v1-multi-turn",
    ("pair", False, False): "pair-v2", ("pair", True, False): "pair-math-v1",
    ("pair", False, True): "pair-v2-multi-turn", ("pair", True, True): "pair-math-v1-multi-turn"}

Verdict = Literal["A", "B", "C"]


def check_prompt_set(prompts: str, lang: str) -> None:
    if prompts not in PROMPT_SETS:
        raise CamelidError(f"--prompts {prompts!r}: expected one of {', '.join(PROMPT_SETS)}")
    if lang not in ("auto", *LABELS):
        raise CamelidError(f"--lang {lang!r}: expected {', '.join(LABELS)} or auto")
    if prompts == "mt-bench" and lang in ("ko", "zh"):
        raise CamelidError(f"--lang {lang}: FastChat's MT-bench judge prompts are English only; use --prompts "
                           "camelid for the Korean and Chinese ones")


def needs_reference(prompts: str, category: str) -> bool:
    return category in MT_BENCH_NEED_REF if prompts == "mt-bench" else category.lower() in NEED_REF


# ---------------------------------------------------------------------------------------------- camelid's set


@dataclass(frozen=True)
class JudgePrompt:
    name: str  # single | single-ref | single-multi | single-ref-multi | pair | pair-ref | pair-multi | ...
    lang: str
    system: str
    user: str

    def messages(self, **fields: str) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.format(**fields)}]


@functools.lru_cache(maxsize=None)
def load_prompt(name: str, lang: str = "en") -> JudgePrompt:
    """A judge prompt of camelid's set: `camelid/evaluate/prompts/{name}.{lang}.txt` ([system] and [user])."""
    try:
        text = resources.files("camelid.evaluate").joinpath("prompts", f"{name}.{lang}.txt").read_text("utf-8")
    except FileNotFoundError:
        raise CamelidError(f"no judge prompt {name!r} for language {lang!r}") from None
    m = re.fullmatch(r"\[system\]\n(.*?)\n\[user\]\n(.*)", text, re.S)
    if not m:
        raise CamelidError(f"judge prompt {name}.{lang}.txt: expected a [system] and a [user] section")
    return JudgePrompt(name, lang, m.group(1).strip(), m.group(2).rstrip("\n"))


def prompt_name(kind: str, ref: bool, multi: bool) -> str:
    return kind + ("-ref" if ref else "") + ("-multi" if multi else "")


def conversation(q: Question, turns: list[str], upto: int, lang: str, assistant_label: str | None = None) -> str:
    """Turns 0..upto as `### User:` / `### Assistant:` blocks (labels in the prompt's language)."""
    lab = LABELS[lang]
    name = assistant_label or lab["assistant"]
    parts = []
    for t in range(upto + 1):
        parts.append(f"### {lab['user']}:\n{q.text(t)}")
        parts.append(f"### {name}:\n{turns[t] if t < len(turns) else ''}")
    return "\n\n".join(parts)


def _camelid_single(q: Question, answer: list[str], t: int, lang: str, ref: list[str] | None) -> tuple[str, list]:
    name = prompt_name("single", ref is not None, t > 0)
    if t == 0:
        fields = {"question": q.text(0), "answer": answer[0]}
        if ref is not None:
            fields["reference"] = ref[0]
    else:
        fields = {"conversation": conversation(q, answer, t, lang)}
        if ref is not None:
            fields["reference_conversation"] = conversation(q, ref, t, lang, assistant_label=LABELS[lang]["reference"])
    return name, load_prompt(name, lang).messages(**fields)


def _camelid_pair(q: Question, first: list[str], second: list[str], t: int, lang: str, ref: list[str] | None
                  ) -> tuple[str, list]:
    name = prompt_name("pair", ref is not None, t > 0)
    lab = LABELS[lang]["assistant"]
    if t == 0:
        fields = {"question": q.text(0), "answer_a": first[0], "answer_b": second[0]}
        if ref is not None:
            fields["reference"] = ref[0]
    else:
        fields = {"conversation_a": conversation(q, first, t, lang, assistant_label=f"{lab} A"),
                  "conversation_b": conversation(q, second, t, lang, assistant_label=f"{lab} B")}
        if ref is not None:
            fields["reference_conversation"] = conversation(q, ref, t, lang, assistant_label=LABELS[lang]["reference"])
    return name, load_prompt(name, lang).messages(**fields)


# ---------------------------------------------------------------------------------------------- FastChat's set


@functools.lru_cache(maxsize=None)
def mt_bench_prompts() -> dict[str, dict]:
    """FastChat's judge_prompts.jsonl as shipped, by name (its `load_judge_prompts`)."""
    text = resources.files("camelid.evaluate").joinpath("prompts", "mt-bench.jsonl").read_text("utf-8")
    return {rec["name"]: rec for rec in map(json.loads, text.splitlines()) if rec}


def _mt_bench_messages(kind: str, q: Question, t: int, ref: list[str] | None, answers: dict[str, list[str]]
                       ) -> tuple[str, list]:
    """FastChat's run_judge_single / run_judge_pair prompt: `answers` maps its field stems (`answer` for single,
    `answer_a` / `answer_b` for a pair) to the turns."""
    if t > 1:
        raise CamelidError(f"question {q.question_id}: FastChat's MT-bench judge prompts hold two turns, this one "
                           f"has {len(q.turns)}; judge it with --prompts camelid")
    name = MT_BENCH_NAMES[(kind, ref is not None, t == 1)]
    rec = mt_bench_prompts()[name]
    kwargs = {}
    if ref is not None:
        kwargs["ref_answer_1"] = ref[0]
        if t == 1:
            kwargs["ref_answer_2"] = ref[1]
    if t == 1:
        fields = {"question_1": q.text(0), "question_2": q.text(1)}
        for stem, turns in answers.items():
            fields[f"{stem}_1"], fields[f"{stem}_2"] = turns[0], turns[1]
    else:
        fields = {"question": q.text(0), **{stem: turns[0] for stem, turns in answers.items()}}
    user = rec["prompt_template"].format(**fields, **kwargs)
    # Conversation.to_openai_api_messages: the system message (when not empty), then the user's
    system = [{"role": "system", "content": rec["system_prompt"]}] if rec["system_prompt"] else []
    return name, system + [{"role": "user", "content": user}]


# ---------------------------------------------------------------------------------------------- rendering


def single_messages(prompts: str, q: Question, answer: list[str], t: int, lang: str, ref: list[str] | None
                    ) -> tuple[str, list]:
    """(prompt name, messages) grading turn `t` (0-based) of `answer`; `ref` is the reference answer's turns or None."""
    if prompts == "mt-bench":
        return _mt_bench_messages("single", q, t, ref, {"answer": answer})
    return _camelid_single(q, answer, t, lang, ref)


def pair_messages(prompts: str, q: Question, first: list[str], second: list[str], t: int, lang: str,
                  ref: list[str] | None) -> tuple[str, list]:
    """(prompt name, messages) comparing turn `t` with `first` shown as Assistant A and `second` as B."""
    if prompts == "mt-bench":
        return _mt_bench_messages("pair", q, t, ref, {"answer_a": first, "answer_b": second})
    return _camelid_pair(q, first, second, t, lang, ref)


# ---------------------------------------------------------------------------------------------- parsing

_SCORE = re.compile(r"\[\[\s*(\d+(?:\.\d*)?)\s*(?:/\s*10\s*)?\]\]")
_SCORE_LOOSE = re.compile(r"\[\s*(\d+(?:\.\d*)?)\s*(?:/\s*10\s*)?\]")
_VERDICT = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I)
# FastChat's one_score_pattern and one_score_pattern_backup
_MT_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_MT_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_score(text: str, prompts: str = "camelid") -> float | None:
    """The judge's 1-10 rating, None when there is none.

    camelid: the last `[[n]]` (also `[[8.5]]`, `[[7.]]`, `Rating: [[7]]`, `[[7/10]]`), else the last `[n]`; out of
    1-10 is None. mt-bench (FastChat): the first `[[n]]`, else the first `[n]`, whatever its value."""
    if prompts == "mt-bench":
        m = _MT_SCORE.search(text) or _MT_SCORE_BACKUP.search(text)
        return float(m.group(1)) if m else None
    for pat in (_SCORE, _SCORE_LOOSE):
        found = pat.findall(text)
        if found:
            v = float(found[-1])
            return v if 1.0 <= v <= 10.0 else None
    return None


def parse_verdict(text: str, prompts: str = "camelid") -> Verdict | None:
    """A (first shown better), B, C (tie) or None.

    camelid: the last `[[A]]` / `[[B]]` / `[[C]]` (or `[[tie]]`). mt-bench (FastChat): `[[A]]` anywhere, else
    `[[B]]`, else `[[C]]`."""
    if prompts == "mt-bench":
        return next((v for v in ("A", "B", "C") if f"[[{v}]]" in text), None)  # type: ignore[return-value]
    found = _VERDICT.findall(text)
    if not found:
        return None
    v = found[-1].upper()
    return "C" if v == "TIE" else v  # type: ignore[return-value]
