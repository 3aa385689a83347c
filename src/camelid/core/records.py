"""The one reader of JSON and JSONL input: streamed, and every problem located instead of raised.

Every command reads its input files through here, so each gets the same acceptance (UTF-8 with or without a BOM,
JSONL or a JSON list, `-` or a pipe for stdin) and the same messages. JSONL is read line by line (a bad line is
reported and the next one read); a JSON list by an incremental parser (`raw_decode` over a sliding buffer of a few
hundred kilobytes), so a 1 GB file costs no more memory than a small one, and each record knows its line.

Hostile JSON that Python's own parser accepts, or chokes on with an exception that is not a JSONDecodeError, is a
located problem too: nesting deeper than MAX_DEPTH, numbers past Python's digit limit or outside a double's range,
NaN / Infinity (not JSON), and lone UTF-16 surrogates (`"\\ud83d"`: no UTF-8 encoding exists, so every writer and
tokenizer downstream would fail on them).
"""

from __future__ import annotations

import atexit
import codecs
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from camelid.core.columns import current as current_columns, map_record
from camelid.core.errors import CamelidError, DataError, Problem
from camelid.core.tables import check_table, is_table, iter_table_records

Record = tuple[int | None, int, Any]  # (line, index, value)

MAX_DEPTH = 64  # nesting levels a record may have (datasets use 4 or 5; Python's parser fails near 1000)
_CHUNK = 1 << 18  # bytes read at a time; a record longer than this makes the buffer grow geometrically
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"[ \t\n\r]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
STDIN = "-"


def json_type(v: Any) -> str:
    """JSON's name for a value's type (null, boolean, number, string, list, object) for messages."""
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(v), type(v).__name__)


# ---------------------------------------------------------------------------------------------- parsing


class BadJson(ValueError):
    """Why a JSON text cannot be used: `message` (for a Problem), `pos` (character offset), `field` (a path)."""

    def __init__(self, message: str, pos: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message, self.pos, self.field = message, pos, field


def _constant(name: str) -> Any:
    raise BadJson(f"{name} is not a JSON value")


def _float(text: str) -> float:
    x = float(text)
    if math.isinf(x):
        raise BadJson(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return x


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def _decode(text: str, pos: int, whole: bool) -> tuple[Any, int]:
    try:
        if whole:
            return _DECODER.decode(text), len(text)
        return _DECODER.raw_decode(text, pos)
    except BadJson:
        raise
    except json.JSONDecodeError as e:
        raise BadJson(f"malformed JSON: {e.msg}", e.pos) from None
    except RecursionError:
        raise BadJson(f"nested more than {MAX_DEPTH} levels deep", pos) from None
    except ValueError as e:  # int('9' * 5000): Python's limit on the digits of an integer
        if "digits" in str(e):
            raise BadJson(f"a number with more than {sys.get_int_max_str_digits()} digits", pos) from None
        raise BadJson(f"malformed JSON: {e}", pos) from None


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _walk(value: Any) -> tuple[str, str] | None:
    """(field, message) for the first nesting or surrogate problem in a decoded value, iteratively."""
    stack = [(value, "", 1)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_DEPTH and isinstance(v, (list, dict)):
            return _short(where), f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(v, str):
            if _has_surrogate(v):
                return _short(where), _surrogate_message(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if _has_surrogate(k):
                    return _short(where), "a key holds " + _surrogate_message(k)
                stack.append((x, _path(where, k), depth + 1))
        elif isinstance(v, list):
            stack.extend((x, _path(where, i), depth + 1) for i, x in enumerate(v))
    return None


def _short(where: str) -> str | None:
    return (where[:40] + "..." if len(where) > 48 else where) or None


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _surrogate_message(s: str) -> str:
    c = next(ch for ch in s if 0xD800 <= ord(ch) <= 0xDFFF)
    return f"a lone surrogate \\u{ord(c):04x} (half of a UTF-16 pair; not a character, so no UTF-8 exists for it)"


def check_value(value: Any, text: str) -> None:
    """Raise BadJson when a decoded value is too deep or holds a lone surrogate; `text` is its JSON source, whose
    cheap counts rule both out for nearly every record."""
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    if deep or _SURROGATE_ESCAPE.search(text):
        bad = _walk(value)
        if bad:
            raise BadJson(bad[1], None, bad[0])


def loads(text: str) -> Any:
    """json.loads for untrusted text: every failure is a BadJson (never a RecursionError or a bare ValueError)."""
    value, _ = _decode(text, 0, whole=True)
    check_value(value, text)
    return value


def problem(name: str, line: int | None, e: BadJson, index: int | None = None, text: str | None = None) -> Problem:
    """A BadJson as a located Problem (the column when the text and position are known)."""
    msg = e.message
    if e.pos is not None and text is not None and msg.startswith("malformed JSON"):
        col = e.pos - text.rfind("\n", 0, e.pos)
        msg += f" (column {col})"
    return Problem(name, line, e.field, msg, index)


# ---------------------------------------------------------------------------------------------- input files


_SPOOLED: dict[str, Path] = {}


def check_input(path: str | os.PathLike) -> None:
    """CamelidError unless `path` is something to read from: a file, `-` (stdin), a pipe or a device, or a table
    source (`core.tables`: Parquet/Arrow/CSV files, directories of them, Hub ids)."""
    name = str(path)
    if name == STDIN or name in _SPOOLED:
        return
    if is_table(name):
        check_table(name)
        return
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CamelidError(f"{name}: no such file") from None
    except NotADirectoryError:
        raise CamelidError(f"{name}: no such file (a parent of it is a file, not a directory)") from None
    except PermissionError:
        raise CamelidError(f"{name}: permission denied") from None
    if stat.S_ISDIR(st.st_mode):
        raise CamelidError(f"{name}: is a directory, expected a file")


def open_input(path: str | os.PathLike) -> IO[bytes]:
    """Open an input file for reading bytes. `-`, pipes, process substitutions (`<(cmd)`) and /dev/stdin are read
    once into a temp file on first use, so commands that read their input twice (detect the format, then read)
    work on them too; messages still name what the user gave."""
    check_input(path)
    name = str(path)
    if is_table(name):
        raise CamelidError(f"{name}: a Parquet/Arrow/CSV dataset or a directory; this input must be a JSON, JSONL or "
                           "text file")
    if name in _SPOOLED:
        return open(_SPOOLED[name], "rb")
    if name != STDIN and stat.S_ISREG(os.stat(path).st_mode):
        return open(path, "rb")
    src = sys.stdin.buffer if name == STDIN else open(path, "rb")
    fd, tmp = tempfile.mkstemp(prefix="camelid-input-")
    with os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if src is not sys.stdin.buffer:
        src.close()
    _SPOOLED[name] = Path(tmp)
    return open(tmp, "rb")


@atexit.register
def _remove_spooled() -> None:
    for tmp in _SPOOLED.values():
        try:
            tmp.unlink()
        except OSError:
            pass


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text input (BOM dropped); a bad byte is a DataError naming its line."""
    with open_input(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(Problem(str(path), line, None, f"not valid UTF-8 ({e.reason})")) from None


# ---------------------------------------------------------------------------------------------- records


def iter_records(path: str | os.PathLike) -> Iterator[Record | Problem]:
    """Stream `(line, index, value)` from a JSONL file or a JSON list, or `(None, index, value)` from a table source
    (Parquet, Arrow, CSV, a directory of them, a Hub id: `core.tables`), each record renamed by the column mapping in
    force (`core.columns`). Problems are yielded in place instead of raised: JSONL goes on after a bad line, a JSON
    list stops at its first syntax error (it cannot resync)."""
    items = iter_table_records(path) if is_table(path) else _json_records(path)
    mapping = current_columns()
    if not mapping:
        yield from items
        return
    name = str(path)
    for item in items:
        if isinstance(item, Problem):
            yield item
            continue
        line, index, value = item
        mapped = map_record(value, mapping, name, line, index)
        yield mapped if isinstance(mapped, Problem) else (line, index, mapped)


def _json_records(path: str | os.PathLike) -> Iterator[Record | Problem]:
    name = str(path)
    with open_input(path) as f:
        head = f.read(4096)
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            yield Problem(name, 1, None, "not valid UTF-8 (the file is UTF-16; save it as UTF-8)")
            return
        first = head.removeprefix(_BOM).lstrip()[:1]
        while not first and len(head) == 4096:  # a long run of blank lines
            head = f.read(4096)
            first = head.lstrip()[:1]
        f.seek(0)
        if not first:
            yield Problem(name, None, None, "file is empty" if f.read(1) == b"" else "file holds only blank space")
        elif first == b"[":
            yield from _json_list(f, name)
        else:
            yield from _jsonl(f, name)


def _jsonl(f: IO[bytes], name: str) -> Iterator[Record | Problem]:
    index = 0
    for lineno, raw in enumerate(f, 1):
        if lineno == 1:
            raw = raw.removeprefix(_BOM)
        if not raw.strip():
            continue
        try:
            text = raw.rstrip().decode("utf-8")
            value = loads(text)
        except UnicodeDecodeError as e:
            yield Problem(name, lineno, None, f"not valid UTF-8 (byte {e.start + 1} of the line: {e.reason})", index)
        except BadJson as e:
            p = problem(name, lineno, e, index, text)
            if index == 0 and raw.strip() == b"{":
                p.message += "; records must be one JSON object per line (JSONL) or a JSON list"
            yield p
        else:
            yield lineno, index, value
        index += 1


def _json_list(f: IO[bytes], name: str) -> Iterator[Record | Problem]:
    """An incremental JSON-array reader: raw_decode one element at a time from a sliding text buffer."""
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    buf, pos, line, eof = "", 0, 1, False

    def more(size: int = _CHUNK) -> None:
        nonlocal buf, pos, eof
        data = f.read(size)
        eof = not data
        text = utf8.decode(data, final=eof)
        buf = buf[pos:] + text
        pos = 0

    def skip_ws() -> str:  # the next non-blank character, or "" at the end of the file
        nonlocal pos, line
        while True:
            end = _WS.match(buf, pos).end()
            line += buf.count("\n", pos, end)
            pos = end
            if pos < len(buf) or eof:
                return buf[pos:pos + 1]
            more()

    def bad(msg: str, at_line: int | None = None, index: int | None = None) -> Problem:
        return Problem(name, at_line or line, None, f"malformed JSON: {msg}", index)

    try:
        skip_ws()
        pos += 1  # the "[" seen by iter_records
        index, after_comma = 0, False
        while True:
            ch = skip_ws()
            if ch == "]" and not after_comma:
                break
            if not ch:
                yield bad("the list is not closed (missing ']')")
                return
            grow = _CHUNK
            while True:  # decode one element, reading more until it is complete (geometrically: no quadratic cost)
                try:
                    value, end = _decode(buf, pos, whole=False)
                except BadJson as e:
                    if e.message.startswith("malformed JSON") and not eof and (
                            e.pos >= len(buf) - 64 or "Unterminated" in e.message):
                        more(grow)
                        grow *= 2
                        continue
                    at = line + buf.count("\n", pos, e.pos) if e.pos is not None else line
                    yield Problem(name, at, e.field, e.message, index)
                    return
                if end >= len(buf) and not eof:  # a number cut at the buffer's end
                    more()
                    continue
                break
            try:
                check_value(value, buf[pos:end])
            except BadJson as e:  # well-formed but unusable: reported, and the list goes on
                yield Problem(name, line, e.field, e.message, index)
            else:
                yield line, index, value
            index += 1
            line += buf.count("\n", pos, end)
            pos = end
            ch = skip_ws()
            if ch == ",":
                pos += 1
                after_comma = True
                continue
            if ch != "]":
                yield bad("expected ',' or ']' after a list element" if ch else "the list is not closed (missing ']')")
                return
            break
        pos += 1
        if skip_ws():
            yield bad("extra data after the closing ']'")
    except UnicodeDecodeError as e:
        yield Problem(name, line + buf.count("\n", pos) + e.object[:e.start].count(b"\n"), None,
                      f"not valid UTF-8 ({e.reason})")
