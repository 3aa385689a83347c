"""Reading and writing records safely.

Every output camelid writes is either atomic (temp file + rename: a crash leaves the old file or none) or an
append-only JSONL whose torn last line is dropped on reopen, so a `kill -9` at any moment loses nothing that
was finished and a rerun resumes cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import yaml


class CamelidError(Exception):
    """An error a user can act on: the CLI prints it as one line and exits 1 (no traceback)."""


@dataclass
class Problem:
    """One problem in an input file, located precisely enough to fix it."""

    file: str
    line: int | None  # 1-based line for JSONL/text; None when only the record index is known
    field: str | None
    message: str
    record: int | None = None  # 0-based record index (JSON lists)

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        elif self.record is not None:
            where += f": record {self.record}"
        field = f" field '{self.field}':" if self.field else ""
        return f"{where}:{field} {self.message}"


class DataError(CamelidError):
    """One or more problems in input data."""

    def __init__(self, problems: Problem | list[Problem]):
        self.problems = problems if isinstance(problems, list) else [problems]
        super().__init__("\n".join(str(p) for p in self.problems))


# ---------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


class JsonlAppender:
    """Append-only JSONL: one flushed line per record; a torn last line (crash mid-write) is cut on open."""

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl_tail(self.path)
        self.fsync = fsync
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def write_many(self, rows: Iterable[dict]) -> None:
        """Several records that belong together, in one write() call: a kill -9 keeps all or none of them."""
        self._f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def repair_jsonl_tail(path: Path) -> bool:
    """Cut a last line that has no newline or does not parse (a write torn by a crash). True if cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        data = f.read()
        keep = len(data)
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                json.loads(data[last_start:])
            except ValueError:
                keep = last_start
        if keep == len(data):
            return False
        f.truncate(keep)
        return True


# ---------------------------------------------------------------------------------------------- reading


def _open_text(path: Path) -> IO[str]:
    if not path.exists():
        raise CamelidError(f"{path}: no such file")
    if path.is_dir():
        raise CamelidError(f"{path}: is a directory, expected a file")
    return open(path, encoding="utf-8", newline="")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Stream (line number, value) from a JSONL file; blank lines are skipped; bad lines raise DataError.
    Read as bytes and decoded line by line, so a bad byte is reported on its own line (a text stream decodes
    ahead, in chunks)."""
    path = Path(path)
    _open_text(path).close()  # the same errors for a missing file or a directory
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(Problem(str(path), lineno, None, f"not valid UTF-8 ({e.reason})")) from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(Problem(str(path), lineno, None, f"malformed JSON: {e.msg} (column {e.colno})")) from None


def read_yaml_mapping(path: str | os.PathLike, what: str = "settings", kind: str = "") -> dict:
    """A YAML config file that must hold a mapping (of `what`); a missing file (`no such {kind} file`), bad YAML
    (with its line) or another shape is a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CamelidError(f"{path}: no such {kind + ' ' if kind else ''}file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise DataError(Problem(str(path), None, None, f"not valid UTF-8 ({e.reason})")) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise DataError(Problem(str(path), None if mark is None else mark.line + 1, None,
                                f"not valid YAML: {problem}")) from None
    if not isinstance(data, dict):
        raise DataError(Problem(str(path), 1, None, f"expected a mapping of {what}, got {type(data).__name__}"))
    return data


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    with _open_text(path) as f:
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise DataError(Problem(str(path), line, None, f"not valid UTF-8 ({e.reason})")) from None
    if not text.strip():
        raise DataError(Problem(str(path), None, None, "file is empty"))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(Problem(str(path), e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})")) from None


def is_jsonl(path: str | os.PathLike) -> bool:
    """JSONL unless the first non-blank character opens a JSON list, or the whole file is one object."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith(b"["):
        return False
    return True


def read_records(path: str | os.PathLike) -> Iterator[tuple[int | None, int, Any]]:
    """Yield (line, index, record) from a JSON list or a JSONL file (streamed). Line is None for JSON lists."""
    path = Path(path)
    if not path.exists():
        raise CamelidError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(Problem(str(path), None, None, "file is empty"))
    if is_jsonl(path):
        for i, (line, rec) in enumerate(read_jsonl(path)):
            yield line, i, rec
        return
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(Problem(str(path), 1, None, f"expected a JSON list of records, got {type(data).__name__}"))
    for i, rec in enumerate(data):
        yield None, i, rec


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A temp directory beside `out`, renamed to `out` on success and removed on error (never half-written)."""
    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise CamelidError(f"{out}: already exists (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_size(text: str | int) -> int:
    """'1GB', '500MB', '64MiB', '4096' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise CamelidError(f"size {text!r} not understood (examples: 1GB, 500MB, 64MiB)")
    unit = (m.group(2) or "B").upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    return int(float(m.group(1)) * base ** " KMGT".index((unit.rstrip("I") or " ")[0]))
