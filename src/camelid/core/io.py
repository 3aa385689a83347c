"""Reading and writing records safely.

Every output camelid writes is either atomic (temp file + rename: a crash leaves the old file or none) or an
append-only JSONL whose torn last line is dropped on reopen, so a `kill -9` at any moment loses nothing that
was finished and a rerun resumes cleanly. Files are created with the modes the umask gives (an overwritten file
keeps its own), so the servers and containers users point at them can read them. Temps a killed process left
behind (`.NAME.PID.*.tmp`) are removed by the next write of NAME. Reading goes through `camelid.core.records`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import yaml

from camelid.core.errors import CamelidError, DataError, Problem
from camelid.core.records import (BadJson, check_input, iter_records, json_type, loads, open_input, problem,
                                  read_text)

__all__ = ["CamelidError", "DataError", "Problem", "atomic_write", "atomic_writes", "write_json", "write_jsonl",
           "write_text", "JsonlAppender", "repair_jsonl_tail", "output_lock", "refuse_overwrite", "file_mode",
           "dir_mode", "clean_stale_temps", "prepare_output", "read_jsonl", "read_json", "read_records",
           "read_yaml_mapping", "check_input", "sha256_file", "sha256_json"]

STALE_S = 3600  # a temp without a process id (older camelid) is stale after this long


# ---------------------------------------------------------------------------------------------- modes


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode(path: str | os.PathLike | None = None) -> int:
    """The mode for a file written at `path`: the existing file's own, else 0666 less the umask (as open() gives)."""
    if path is not None:
        with contextlib.suppress(OSError):
            return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~umask()


def dir_mode() -> int:
    """0777 less the umask: what mkdir gives (mkdtemp's 0700 would hide a model directory from a server)."""
    return 0o777 & ~umask()


# ---------------------------------------------------------------------------------------------- writing


def prepare_output(path: str | os.PathLike) -> Path:
    """`path` as a place to write a file: one line for an existing directory or a parent that is a file."""
    path = Path(path)
    if path.is_dir():
        raise CamelidError(f"{path}: is a directory; give a file name for the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), path.parent)
        raise CamelidError(f"{path}: cannot create its directory: {blocker} is a file") from None
    return path


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temps of `path` (files or directories `.NAME.*.tmp`) whose writing process is gone; returns them."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
                continue
            pid = p.name[len(prefix):].split(".", 1)[0]
            try:
                stale = not _alive(int(pid)) if pid.isdigit() else time.time() - p.lstat().st_mtime > STALE_S
            except OSError:
                continue
            if stale:
                with contextlib.suppress(OSError):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
    return removed


def _located(e: OSError, path: Path) -> OSError:
    if e.filename is None:  # a write or fsync on a descriptor: name the file it was for
        e.filename = str(path)
    return e


@contextlib.contextmanager
def atomic_writes(paths: Iterable[str | os.PathLike], mode: str = "w", encoding: str | None = "utf-8"
                  ) -> Iterator[list[IO]]:
    """Files that belong together (an output and its sidecar), written as one: each to a temp beside it, and only
    when all are complete and synced are they renamed into place, the first path last. On any error (disk full,
    Ctrl-C) every temp is removed and the old files stay as they were."""
    staged: list[tuple[str, Path]] = []
    files: list[IO] = []
    try:
        for p in paths:
            p = prepare_output(p)
            clean_stale_temps(p)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=_temp_prefix(p), suffix=".tmp")
            staged.append((tmp, p))
            os.fchmod(fd, file_mode(p))
            files.append(_Named(os.fdopen(fd, mode, encoding=None if "b" in mode else encoding), p))
        yield files
        for f, (_, p) in zip(files, staged):
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            except OSError as e:
                raise _located(e, p)
        for tmp, p in reversed(staged):
            os.replace(tmp, p)
    except OSError:
        _discard(files, staged)
        raise
    except BaseException:
        _discard(files, staged)
        raise


class _Named:
    """A file that names its final path in the OSError of a failed write (a descriptor's error names nothing)."""

    def __init__(self, f: IO, path: Path):
        self._f, self._path = f, path

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            raise _located(e, self._path)

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)


def _discard(files: list[IO], staged: list[tuple[str, Path]]) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            f.close()
    for tmp, _ in staged:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on error remove it."""
    with atomic_writes([path], mode, encoding) as (f,):
        yield f


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


def refuse_overwrite(inputs: Iterable[str | os.PathLike | None], output: str | os.PathLike, force: bool = False
                     ) -> None:
    """CamelidError when `output` is one of the inputs (the result would replace its own source) unless `force`."""
    if force:
        return
    out = Path(output)
    for src in inputs:
        if src is None or str(src) == "-":
            continue
        try:
            same = os.path.samefile(src, out)
        except OSError:
            same = Path(src).resolve() == out.resolve()
        if same:
            raise CamelidError(f"{output}: is also the input {src}; write the result elsewhere, or pass --force to "
                               "replace the input with it")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock (flock on `.NAME.lock` beside `path`) while writing `path`: a second process writing
    the same output is refused with one line instead of interleaving its rows. The lock dies with the process."""
    path = prepare_output(path)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode(lock))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise CamelidError(f"{path}: another process{f' (pid {holder})' if holder.isdigit() else ''} is writing it; "
                           "wait for it to finish or stop it (two writers would interleave their rows)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield lock
    finally:
        os.close(fd)


class JsonlAppender:
    """Append-only JSONL: one flushed line per record; a torn last line (crash mid-write) is cut on open."""

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = prepare_output(path)
        repair_jsonl_tail(self.path)
        self.fsync = fsync
        existed = self.path.exists()
        self._f = open(self.path, "a", encoding="utf-8")
        if not existed:
            os.chmod(self.path, file_mode())

    def write(self, row: dict) -> None:
        self._put(json.dumps(row, ensure_ascii=False) + "\n")

    def write_many(self, rows: Iterable[dict]) -> None:
        """Several records that belong together, in one write() call: a kill -9 keeps all or none of them."""
        self._put("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def _put(self, text: str) -> None:
        try:
            self._f.write(text)
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())
        except OSError as e:
            raise _located(e, self.path)

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            raise _located(e, self.path)

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def repair_jsonl_tail(path: str | os.PathLike) -> bool:
    """Cut a last line that has no newline (a write torn by a crash, or a disk that filled up). True if cut.
    A complete last line is never cut, parsable or not: a reader reports a bad one with its line number. Only the
    tail is read, whatever the file's size."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        keep, end = 0, size
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            i = f.read(end - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            end = start
        f.truncate(keep)
        return True


# ---------------------------------------------------------------------------------------------- reading


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Stream (line number, value) from a JSONL file; blank lines are skipped; bad lines raise DataError.
    Read as bytes and decoded line by line, so a bad byte is reported on its own line (a text stream decodes
    ahead, in chunks)."""
    name = str(path)
    with open_input(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(Problem(name, lineno, None, f"not valid UTF-8 ({e.reason})")) from None
            if not line.strip():
                continue
            try:
                value = loads(line)
            except BadJson as e:
                raise DataError(problem(name, lineno, e, None, line)) from None
            yield lineno, value


def read_yaml_mapping(path: str | os.PathLike, what: str = "settings", kind: str = "") -> dict:
    """A YAML config file that must hold a mapping (of `what`); a missing file (`no such {kind} file`), bad YAML
    (with its line) or another shape is a one-line error naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CamelidError(f"{path}: is a directory, expected a {kind + ' ' if kind else ''}file")
    if not path.is_file() and str(path) != "-" and not path.exists():
        raise CamelidError(f"{path}: no such {kind + ' ' if kind else ''}file")
    text = read_text(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise DataError(Problem(str(path), None if mark is None else mark.line + 1, None,
                                f"not valid YAML: {why}")) from None
    except RecursionError:
        raise DataError(Problem(str(path), None, None, "not valid YAML: nested too deeply")) from None
    except ValueError as e:  # a number past Python's digit limit
        raise DataError(Problem(str(path), None, None, f"not valid YAML: {' '.join(str(e).split()[:8])}")) from None
    if not isinstance(data, dict):
        raise DataError(Problem(str(path), 1, None, f"expected a mapping of {what}, got {json_type(data)}"))
    return data


def read_json(path: str | os.PathLike) -> Any:
    """One JSON document (a config, camelid.json, a JSON list read whole): BOM, empty file, bad bytes, bad or
    hostile JSON are a DataError naming the file and the line."""
    name = str(path)
    text = read_text(path)
    if not text.strip():
        raise DataError(Problem(name, None, None, "file is empty" if not text else "file holds only blank space"))
    try:
        return loads(text)
    except BadJson as e:
        line = None if e.pos is None else text.count("\n", 0, e.pos) + 1
        raise DataError(problem(name, line, e, None, text)) from None


def read_records(path: str | os.PathLike) -> Iterator[tuple[int | None, int, Any]]:
    """Yield (line, index, record) from a JSON list or a JSONL file (streamed); the first problem raises DataError.
    The same reader, acceptance and messages as `camelid data validate` (`core.records.iter_records`)."""
    for item in iter_records(path):
        if isinstance(item, Problem):
            raise DataError(item)
        yield item


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
    clean_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"))
    os.chmod(tmp, dir_mode())  # mkdtemp's 0700 would hide the model from the server or container it is for
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
