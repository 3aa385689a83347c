"""The text of a corpus file, whatever its shape: what vocabulary extension learns from and text training reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from camelid.core.io import DataError, Problem, read_records
from camelid.core.records import check_input, json_type, read_text
from camelid.core.tables import is_table

TEXT_KEYS = {"text", "content", "value", "instruction", "input", "output", "prompt", "completion", "response",
             "turns", "reference", "messages", "conversations", "instances"}


def _texts_in(value: Any, key: str | None = None) -> Iterator[str]:
    if isinstance(value, str):
        if key in TEXT_KEYS:
            yield value
    elif isinstance(value, list):
        for v in value:
            yield from _texts_in(v, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            # inside messages/conversations every role's text counts; ids, roles and names never do
            yield from _texts_in(v, k if k in TEXT_KEYS else None if isinstance(v, str) else key)


def read_texts(path: str | os.PathLike) -> list[str]:
    """Texts of a corpus file: plain text (one document), or a dataset (Alpaca, ShareGPT, OpenAI messages, or
    `{"text": ...}` records as JSON or JSONL, Parquet, Arrow, CSV or a Hub dataset) whose text fields are taken."""
    path = Path(path)
    check_input(path)
    if path.suffix.lower() not in (".json", ".jsonl") and not is_table(path):
        text = read_text(path)
        if not text.strip():
            raise DataError(Problem(str(path), None, None, "file is empty"))
        return [text]
    texts: list[str] = []
    for line, index, rec in read_records(path):
        if not isinstance(rec, dict):
            raise DataError(Problem(str(path), line, None, f"expected a JSON object, got {json_type(rec)}",
                                    None if line else index))
        texts.extend(t for t in _texts_in(rec) if t.strip())
    if not texts:
        raise DataError(Problem(str(path), None, None, f"no text fields found (looked for {sorted(TEXT_KEYS)})"))
    return texts
