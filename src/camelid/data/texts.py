"""The text of a corpus file, whatever its shape: what vocabulary extension learns from and text training reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from camelid.core.io import CamelidError, DataError, Problem, read_records

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
    `{"text": ...}` records as JSON or JSONL) whose text fields are taken."""
    path = Path(path)
    if not path.is_file():
        raise CamelidError(f"{path}: no such file")
    if path.suffix.lower() not in (".json", ".jsonl"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise DataError(Problem(str(path), line, None, f"not valid UTF-8 ({e.reason})")) from None
        if not text.strip():
            raise DataError(Problem(str(path), None, None, "file is empty"))
        return [text]
    texts: list[str] = []
    for line, index, rec in read_records(path):
        if not isinstance(rec, dict):
            raise DataError(Problem(str(path), line, None, f"expected a JSON object, got {type(rec).__name__}",
                                    None if line else index))
        texts.extend(t for t in _texts_in(rec) if t.strip())
    if not texts:
        raise DataError(Problem(str(path), None, None, f"no text fields found (looked for {sorted(TEXT_KEYS)})"))
    return texts
