"""Raw records from a JSONL file or a JSON list, streamed, with every problem located instead of raised.

JSONL is read line by line (a bad line is reported and the next one read); a JSON list is read by an incremental
parser (`raw_decode` over a sliding buffer of a few hundred kilobytes), so a 1 GB file costs no more memory than a
small one, and each record still knows the line it starts on.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import IO, Any, Iterator

from camelid.core.io import CamelidError, Problem

Record = tuple[int | None, int, Any]  # (line, index, value)

_CHUNK = 1 << 18  # bytes read at a time; a record longer than this makes the buffer grow geometrically
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"[ \t\n\r]*")


def iter_records(path: str | Path) -> Iterator[Record | Problem]:
    """Stream `(line, index, value)` from a JSONL file or a JSON list. Problems are yielded in place instead of
    raised: JSONL goes on after a bad line, a JSON list stops at its first syntax error (it cannot resync)."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise CamelidError(f"{path}: no such file")
    if path.is_dir():
        raise CamelidError(f"{path}: is a directory, expected a file")
    with open(path, "rb") as f:
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
            yield Problem(name, None, None, "file is empty")
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
            value = json.loads(raw.rstrip().decode("utf-8"))
        except UnicodeDecodeError as e:
            yield Problem(name, lineno, None, f"not valid UTF-8 (byte {e.start + 1} of the line: {e.reason})", index)
        except json.JSONDecodeError as e:
            hint = ("; records must be one JSON object per line (JSONL) or a JSON list"
                    if index == 0 and raw.strip() == b"{" else "")
            yield Problem(name, lineno, None, f"malformed JSON: {e.msg} (column {e.colno}){hint}", index)
        else:
            yield lineno, index, value
        index += 1


def _json_list(f: IO[bytes], name: str) -> Iterator[Record | Problem]:
    """An incremental JSON-array reader: raw_decode one element at a time from a sliding text buffer."""
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    decoder = json.JSONDecoder()
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
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    if not eof and (e.pos >= len(buf) - 64 or e.msg.startswith("Unterminated")):
                        more(grow)
                        grow *= 2
                        continue
                    yield bad(e.msg, line + buf.count("\n", pos, e.pos), index)
                    return
                if end >= len(buf) and not eof:  # a number cut at the buffer's end
                    more()
                    continue
                break
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
