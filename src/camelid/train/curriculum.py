"""Curriculum: the order (and stages) in which training records are seen.

KoLlama2 proposes teaching a new language from the easy, aligned signal outward: translation pairs first (the
model maps what it knows in English onto Korean), open-ended instructions after. `order_examples` applies such an
order, or one read from a field of the data (`difficulty`, `stage`), or short-and-simple-first by length, or a
seeded shuffle; it returns the records in order and a JSON-able `order_info` for camelid.json, so a run records
exactly what it was fed. Every rule is deterministic and stable (ties keep the input order).

The trainer must then read the records in this order: no random sampler (transformers:
`train_sampling_strategy="sequential"`; packing and length grouping only within a stage).
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

from camelid.core.io import CamelidError, DataError, Problem

RULES = ("field", "length", "translation_first", "shuffle")
TEXT_KEYS = ("content", "value", "instruction", "input", "output", "text", "prompt", "response", "completion")
USER_ROLES = ("user", "human")
TRANSLATION_TAGS = {"translation", "translate", "번역", "翻译", "翻訳"}
# instructions asking for a translation, in English, Korean, Chinese and Japanese
TRANSLATION_RE = re.compile(
    r"\btranslat(?:e|es|ed|ing|ion)\b|\binto (?:english|korean|chinese|japanese|french|german|spanish)\b"
    r"|번역|(?:영어|한국어|중국어|일본어|영문|한글)(?:로|으로)\s*(?:옮기|바꾸|바꿔|써|작성|표현)|옮겨"
    r"|翻译|翻譯|译成|译为|翻訳",
    re.IGNORECASE)


def record_id(record: Any, index: int) -> Any:
    return record.get("id", index) if isinstance(record, dict) else index


def record_length(record: Any) -> int:
    """Characters of every text field of a record (messages, Alpaca fields, ShareGPT values, plain text)."""
    if isinstance(record, str):
        return len(record)
    if isinstance(record, list):
        return sum(record_length(r) for r in record)
    if isinstance(record, dict):
        return sum(len(v) if isinstance(v, str) and k in TEXT_KEYS else
                   record_length(v) if isinstance(v, (list, dict)) else 0 for k, v in record.items())
    return 0


def instruction_text(record: Any) -> str:
    """What the user asked: Alpaca `instruction`, or the first user turn of messages / conversations."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return ""
    if isinstance(record.get("instruction"), str):
        return record["instruction"]
    for key, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        for turn in record.get(key) or []:
            if isinstance(turn, dict) and turn.get(role_key) in USER_ROLES and isinstance(turn.get(text_key), str):
                return turn[text_key]
    return str(record.get("prompt") or record.get("text") or "")


def is_translation(record: Any, field: str | None = None) -> bool:
    """Marked as translation (`field`, else `task` / `category` / `type` naming it), else detected from the
    instruction's wording."""
    if isinstance(record, dict):
        for key in ([field] if field else ["task", "category", "type"]):
            value = record.get(key)
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip():
                return value.strip().lower() in TRANSLATION_TAGS  # a marked task is authoritative
            if field and value is not None:
                return False
    return bool(TRANSLATION_RE.search(instruction_text(record)))


def _stage_info(name: Any, members: list[tuple[int, Any]]) -> dict:
    return {"name": name, "size": len(members),
            "first_id": record_id(members[0][1], members[0][0]) if members else None,
            "last_id": record_id(members[-1][1], members[-1][0]) if members else None}


def _field_value(record: Any, index: int, field: str) -> Any:
    if not isinstance(record, dict) or field not in record or record[field] is None:
        raise DataError(Problem("records", None, field, "missing: every record needs it to be ordered by it", index))
    return record[field]


def order_examples(records: Sequence[Any], rule: str, field: str | None = None,
                   stages: Sequence[Any] | int | None = None, seed: int = 0) -> tuple[list[Any], dict]:
    """Order training records for a curriculum. Returns (ordered records, order_info).

    - `field`: by `record[field]`: numbers ascending, or the order of the values listed in `stages`
      (strings need `stages`; a value not listed is an error naming the record).
    - `length`: shortest first (characters of all text fields); `stages=K` cuts K equal consecutive stages.
    - `translation_first`: translation pairs (marked in `field` / task / category / type, or detected from the
      instruction in English, Korean, Chinese or Japanese), then everything else.
    - `shuffle`: a permutation seeded by `seed`.
    """
    if rule not in RULES:
        raise CamelidError(f"curriculum rule {rule!r} unknown: choose from {', '.join(RULES)}")
    indexed = list(enumerate(records))
    groups: list[tuple[Any, list[tuple[int, Any]]]]
    if rule == "field":
        if not field:
            raise CamelidError("curriculum rule 'field' needs a field name (e.g. difficulty or stage)")
        values = [_field_value(r, i, field) for i, r in indexed]
        if isinstance(stages, int) or not stages:
            bad = next(((i, v) for i, v in enumerate(values)
                        if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if bad is not None:
                raise DataError(Problem("records", None, field, f"value {bad[1]!r} is not a number: list the "
                                        "values in order as stages (e.g. [easy, medium, hard])", bad[0]))
            names: list[Any] = sorted(set(values))
        else:
            names = list(stages)
            unknown = next(((i, v) for i, v in enumerate(values) if v not in names), None)
            if unknown is not None:
                raise DataError(Problem("records", None, field, f"value {unknown[1]!r} is not one of the stages "
                                        f"{names}", unknown[0]))
        groups = [(n, [(i, r) for (i, r), v in zip(indexed, values) if v == n]) for n in names]
    elif rule == "length":
        ranked = sorted(indexed, key=lambda ir: record_length(ir[1]))  # stable: ties keep input order
        k = stages if isinstance(stages, int) and stages > 1 else 1
        bounds = [round(j * len(ranked) / k) for j in range(k + 1)]
        groups = [(f"length{j + 1}" if k > 1 else "all", ranked[bounds[j]:bounds[j + 1]]) for j in range(k)]
    elif rule == "translation_first":
        marks = [is_translation(r, field) for _, r in indexed]
        groups = [("translation", [ir for ir, m in zip(indexed, marks) if m]),
                  ("other", [ir for ir, m in zip(indexed, marks) if not m])]
    else:
        shuffled = list(indexed)
        random.Random(seed).shuffle(shuffled)
        groups = [("all", shuffled)]
    flat = [ir for _, members in groups for ir in members]
    info = {"rule": rule, "field": field, "seed": seed if rule == "shuffle" else None, "records": len(flat),
            "stages": [_stage_info(name, members) for name, members in groups],
            "first_id": record_id(flat[0][1], flat[0][0]) if flat else None,
            "last_id": record_id(flat[-1][1], flat[-1][0]) if flat else None}
    return [r for _, r in flat], info
