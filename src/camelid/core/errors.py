"""The errors a user can act on: the CLI prints each as one line (no traceback) and exits 1."""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass
from typing import Callable, Iterator


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


def os_error_line(e: OSError) -> str:
    """An OSError as one line naming the path: `out.jsonl: no space left on device`."""
    what = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    what = what[:1].lower() + what[1:]
    hint = {errno.ENOSPC: "; nothing was half-written: free some space and run the same command again",
            errno.EROFS: "; write the output somewhere writable",
            errno.EISDIR: "; give a file name", errno.ENOTDIR: " (a parent of it is a file)",
            errno.ESPIPE: "; give a file instead"}.get(e.errno, "")
    where = f"{e.filename}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "") if e.filename else ""
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


_notes: list[Callable[[], str]] = []
_said: list[str] = []  # the note of the command an interruption unwound, or that just finished


def _note(note: Callable[[], str]) -> str:
    try:
        return note()
    except Exception:  # the note is best effort: never mask the interruption with a second error
        return ""


@contextlib.contextmanager
def interrupt_note(note: Callable[[], str], command: bool = False) -> Iterator[None]:
    """While inside, Ctrl-C (or SIGTERM) ends the command with `camelid: interrupted; <note()>`: what was kept.
    `command`: the block is a whole CLI command, whose note also answers a signal in the instant after it returned
    (while the CLI unwinds); a library call's note ends with the call (a later stage is not its business)."""
    _notes.append(note)
    try:
        yield
    except KeyboardInterrupt:
        _said[:] = [_note(note)]  # taken now: the command's state is gone once the interruption has unwound it
        raise
    else:
        if command:
            _said[:] = [_note(note)]
    finally:
        _notes.remove(note)


def forget_notes() -> None:
    """A new command starts: the notes of an earlier one (in the same process) no longer apply."""
    _said.clear()


def interrupted_line() -> str:
    """What the CLI prints when a command is interrupted: the innermost command's note, else the general rule."""
    note = _note(_notes[-1]) if _notes else (_said[0] if _said else "")
    _said.clear()
    return "camelid: interrupted; " + (note or "nothing was half-written: outputs are written whole or not at all "
                                       "(append-only logs keep every finished line)")
