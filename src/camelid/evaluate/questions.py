"""Eval sets in every shape the field uses, read into one `Question` type.

- Vicuna-bench / MT-bench JSONL: `{question_id, category, turns: [...], reference?: [...]}`
- self-instruct user-oriented JSONL (and KULLM's Korean translation): `{id, motivation_app, instruction,
  instances: [{input, output}]}` -> instruction + input; the first instance's output is kept as a reference
- AlpacaEval JSON: `[{instruction, output, generator, dataset}]`; `output` is the reference model's answer
- Alpaca / plain instructions: JSON or JSONL with `instruction` (+ `input`, `output`), or .txt, one per line
Answer files (FastChat's shape) are read here too, so judge, report and arena share one reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camelid.core.io import DataError, Problem, read_records
from camelid.core.records import check_input, json_type, read_text
from camelid.data.lang import detect_language



@dataclass
class Question:
    question_id: str | int
    turns: list[str]  # user messages; turn 1 may carry an Alpaca-style `input` (below)
    category: str = "general"
    input: str = ""  # Stanford's instruction/input split, for the first turn
    reference: list[str] | None = None  # reference answers per turn (MT-bench `reference`)
    reference_output: str | None = None  # a reference model's answer (AlpacaEval `output`, self-instruct output)
    reference_generator: str | None = None

    def message(self, turn: int) -> dict:
        """The user message for a turn (0-based); Alpaca templates render `input` as their own section."""
        m = {"role": "user", "content": self.turns[turn]}
        if turn == 0 and self.input:
            m["input"] = self.input
        return m

    def text(self, turn: int = 0) -> str:
        """The question as a judge or a person reads it (instruction and input joined)."""
        t = self.turns[turn]
        return t + ("\n\n" + self.input if turn == 0 and self.input else "")

    @property
    def lang(self) -> str:
        return detect_lang(" ".join(self.turns) + self.input)


def detect_lang(text: str) -> str:
    """The judge prompt language for a text: ko when its dominant script is Hangul, zh when Han alone, else en."""
    lang = detect_language(text)
    return lang if lang in ("ko", "zh") else "en"


def _problem(path: Path, line: int | None, index: int, fld: str | None, msg: str) -> DataError:
    return DataError(Problem(str(path), line, fld, msg, None if line is not None else index))


def _str_field(path: Path, line: int | None, i: int, rec: dict, name: str, required: bool = True) -> str:
    v = rec.get(name)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise _problem(path, line, i, name, "missing or not a non-empty string" if required else "not a string")
    return v


def _parse(path: Path, line: int | None, i: int, rec: Any) -> Question:
    if not isinstance(rec, dict):
        raise _problem(path, line, i, None, f"expected an object, got {json_type(rec)}")
    if "turns" in rec:  # Vicuna-bench / MT-bench
        turns = rec["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
            raise _problem(path, line, i, "turns", "must be a non-empty list of strings")
        ref = rec.get("reference")
        if ref is not None and not (isinstance(ref, list) and all(isinstance(r, str) for r in ref)):
            raise _problem(path, line, i, "reference", "must be a list of strings")
        qid = rec.get("question_id", i + 1)
        return Question(qid, list(turns), str(rec.get("category") or "general"), reference=ref)
    instruction = _str_field(path, line, i, rec, "instruction")
    if "instances" in rec:  # self-instruct user-oriented
        inst = rec["instances"]
        if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
            raise _problem(path, line, i, "instances", "must be a non-empty list of {input, output}")
        return Question(rec.get("id", i), [instruction], str(rec.get("motivation_app") or "general"),
                        input=str(inst[0].get("input") or ""), reference_output=inst[0].get("output") or None,
                        reference_generator="reference")
    inp = _str_field(path, line, i, rec, "input", required=False)
    out = rec.get("output") if isinstance(rec.get("output"), str) else None
    if "generator" in rec:  # AlpacaEval: `output` is the reference model's answer
        return Question(rec.get("question_id", i), [instruction], str(rec.get("dataset") or "general"),
                        input=inp, reference_output=out, reference_generator=str(rec["generator"]))
    return Question(rec.get("question_id", rec.get("id", i)), [instruction], str(rec.get("category") or "general"),
                    input=inp, reference_output=out or None, reference_generator="reference" if out else None)


def load_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """Read an eval set in any supported shape; bad records raise DataError with file, line and field."""
    path = Path(path)
    out: list[Question] = []
    if path.suffix == ".txt":
        check_input(path)
        for n, line in enumerate(read_text(path).splitlines(), 1):
            if line.strip():
                out.append(Question(n, [line.strip()]))
            if limit and len(out) >= limit:
                break
    else:
        for line, i, rec in read_records(path):
            out.append(_parse(path, line, i, rec))
            if limit and len(out) >= limit:
                break
    if not out:
        raise DataError(Problem(str(path), None, None, "no questions found"))
    seen: set[str] = set()
    for q in out:
        if str(q.question_id) in seen:
            raise DataError(Problem(str(path), None, "question_id", f"duplicate question id {q.question_id!r}"))
        seen.add(str(q.question_id))
    return out


@dataclass
class Answer:
    question_id: str | int
    model_id: str
    turns: list[str]
    finish_reason: list[str] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)


def load_answers(path: str | Path) -> dict[str, dict[str, Answer]]:
    """FastChat answer JSONL -> {model_id: {str(question_id): Answer}}; a later row for the same pair wins."""
    path = Path(path)
    out: dict[str, dict[str, Answer]] = {}
    for line, i, rec in read_records(path):
        if not isinstance(rec, dict):
            raise _problem(path, line, i, None, "expected an answer object")
        for f in ("question_id", "model_id", "choices"):
            if f not in rec:
                raise _problem(path, line, i, f, "missing (expected FastChat's answer shape)")
        ch = rec["choices"]
        if not (isinstance(ch, list) and ch and isinstance(ch[0], dict) and isinstance(ch[0].get("turns"), list)):
            raise _problem(path, line, i, "choices", "must be a list whose first item has 'turns'")
        usage = ch[0].get("usage") or []
        out.setdefault(str(rec["model_id"]), {})[str(rec["question_id"])] = Answer(
            rec["question_id"], str(rec["model_id"]), [str(t) for t in ch[0]["turns"]],
            list(ch[0].get("finish_reason") or []), [int(u.get("completion_tokens", 0)) for u in usage])
    return out


def reference_answers(questions: list[Question]) -> dict[str, dict[str, Answer]]:
    """The questions' own reference outputs (AlpacaEval `output`, self-instruct outputs) as a contestant."""
    out: dict[str, dict[str, Answer]] = {}
    for q in questions:
        if q.reference_output is not None:
            gen = q.reference_generator or "reference"
            out.setdefault(gen, {})[str(q.question_id)] = Answer(q.question_id, gen, [q.reference_output])
    return out
