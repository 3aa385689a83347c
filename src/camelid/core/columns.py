"""Column mapping: read a dataset whose field names differ (`--columns instruction=prompt,output=completion`, or
`columns: {instruction: prompt, output: completion}` in a train config or recipe) as if it used camelid's names.

The mapping is TARGET=COLUMN: the record's COLUMN is read as TARGET. It is applied by the one record reader
(`core.records.iter_records`) to every record of every input the command reads, JSON or Parquet alike, so format
detection and validation see the mapped names. A mapped column missing from a record, or a TARGET the record already
has under its own name, is a located problem, never a silent overwrite.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Mapping

from camelid.core.errors import CamelidError, Problem

_CURRENT: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("camelid_columns", default={})


def parse_columns(value: str | Mapping[str, str] | None, what: str = "--columns") -> dict[str, str]:
    """`instruction=prompt,output=completion` (or a mapping) -> {target: column}; CamelidError naming the bad part."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            target, eq, column = part.partition("=")
            if not eq:
                raise CamelidError(f"{what}: {part.strip()!r} is not TARGET=COLUMN (e.g. instruction=prompt)")
            pairs.append((target.strip(), column.strip()))
    out: dict[str, str] = {}
    for target, column in pairs:
        if not isinstance(column, str) or not target or not column:
            raise CamelidError(f"{what}: {target}={column!r}: both the field name and the column name are needed")
        if target in out:
            raise CamelidError(f"{what}: {target!r} is mapped twice")
        if column in out.values():
            raise CamelidError(f"{what}: column {column!r} is mapped twice")
        out[target] = column
    return out


def current() -> dict[str, str]:
    return _CURRENT.get()


@contextlib.contextmanager
def using_columns(mapping: str | Mapping[str, str] | None, what: str = "--columns") -> Iterator[dict[str, str]]:
    """While inside, every record read is mapped (`parse_columns` syntax); an empty mapping keeps the names."""
    parsed = parse_columns(mapping, what)
    token = _CURRENT.set(parsed)
    try:
        yield parsed
    finally:
        _CURRENT.reset(token)


def map_record(rec: Any, mapping: dict[str, str], name: str, line: int | None, index: int) -> Any:
    """The record with each mapped column renamed to its target (in place of the column, so key order is kept),
    or a Problem."""
    if not mapping or not isinstance(rec, dict):
        return rec
    for target, column in mapping.items():
        if column not in rec:
            return Problem(name, line, column, f"missing (the column mapping reads it as {target!r}; columns "
                           f"here: {', '.join(map(str, rec)) or 'none'})", index)
    sources = set(mapping.values())
    for target, column in mapping.items():
        if target in rec and target not in sources:
            return Problem(name, line, target, f"already present, and the column mapping would replace it with "
                           f"{column!r} (map it to another name too, e.g. {target}_orig={target})", index)
    back = {column: target for target, column in mapping.items()}
    return {back.get(k, k): v for k, v in rec.items()}
