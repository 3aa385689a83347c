"""How `camelid generate` resumes exactly where it stopped, whatever stopped it (kill -9, Ctrl-C, SIGTERM, a full
disk), with the data an uninterrupted run would have written, byte for byte.

Requests go out in rounds. OUT.rounds.jsonl (the journal) gets a line when a round's first request is sent,
`{"step": "round", "requests": [first, last]}`, and one when all of its results are written, `{"step": "done",
"requests": [...], "kept_lines": K, "rejected_lines": R, "seconds": s}`: K and R are the line counts of OUT.jsonl
and OUT.rejected.jsonl at that moment. Results are written in request order, one round after the other, but the
next round's requests may already be out while a round is written (Alpaca mode), so a `round` line can come
before the `done` line of the round before it. On resume the lines up to the last K and R are the finished state
(the dedup pool, the rejection counts); the first round that started but has no `done` line is run again with the
same request numbers, its replies (and those of any later round already sent) taken from OUT.requests.jsonl where
they were logged (replies that were in flight at the kill included) and asked again otherwise, and the rows it had
already written past K and R are checked against the rows it gives instead of being written twice. Counters (requests, tokens, seconds, --max-requests) come from these logs, so they
hold across resumes.

Every sidecar row is checked as it is read: a hostile or hand-edited line is a DataError naming file, line and
field, never a traceback or a silent skip.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from camelid.core.io import CamelidError, DataError, Problem, read_jsonl
from camelid.core.records import json_type


def rounds_path(output: str | Path) -> Path:
    """OUT.rounds.jsonl beside OUT.jsonl."""
    return Path(output).with_suffix(".rounds.jsonl")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _bad(path: Path, line: int, fld: str | None, msg: str) -> DataError:
    return DataError(Problem(str(path), line, fld, msg))


@dataclass
class Rounds:
    """What the journal says: the last finished round and the round started after it (if any)."""

    done: dict | None = None
    open: list[int] | None = None  # [first, last] request numbers of the first round started and not done
    seconds: float = 0.0  # all finished rounds

    @property
    def exists(self) -> bool:
        return self.done is not None or self.open is not None


def read_rounds(path: Path) -> Rounds:
    out = Rounds()
    if not path.exists():
        return out
    started: list[list[int]] = []  # rounds started after the last `done`
    for line, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise _bad(path, line, None, f"expected an object, got {json_type(row)}")
        step, reqs = row.get("step"), row.get("requests")
        if step not in ("round", "done"):
            raise _bad(path, line, "step", f"expected 'round' or 'done', got {json.dumps(step)[:40]}")
        if not (isinstance(reqs, list) and len(reqs) == 2 and all(map(_int, reqs)) and reqs[0] <= reqs[1]):
            raise _bad(path, line, "requests", "expected [first, last] request numbers")
        if step == "round":
            started.append(reqs)
            out.open = min(started)
            continue
        for k in ("kept_lines", "rejected_lines"):
            if not _int(row.get(k)):
                raise _bad(path, line, k, f"expected a line count, got {json_type(row.get(k))}")
        secs = row.get("seconds", 0)
        if not isinstance(secs, (int, float)) or isinstance(secs, bool) or secs < 0:
            raise _bad(path, line, "seconds", f"expected a number of seconds, got {json_type(secs)}")
        if out.done and (row["kept_lines"] < out.done["kept_lines"] or reqs[0] <= out.done["requests"][1]):
            raise _bad(path, line, None, "goes back before the round finished on an earlier line")
        started = [r for r in started if r[0] > reqs[1]]  # a round sent before this one was done
        out.done, out.open = row, min(started, default=None)
        out.seconds += secs
    return out


def read_prefix(path: Path, n: int | None, on_row: Callable[[int, Any], None]) -> deque:
    """Hand the first `n` rows of a JSONL file (all when n is None) to `on_row`; return the rows after them: what a
    round cut short had written, to be checked, not written again."""
    pending: deque = deque()
    count = 0
    if path.exists():
        for line, row in read_jsonl(path):
            if n is None or count < n:
                on_row(line, row)
            else:
                pending.append((line, row))
            count += 1
    if n is not None and count < n:
        raise CamelidError(f"{path}: has {count} lines but its journal records {n} written; the file was changed "
                           "since: restore it, or pass a new -o")
    return pending


def check_rejected_row(path: Path, line: int, row: Any) -> str:
    """The reason of a rejected-candidates row."""
    if not isinstance(row, dict):
        raise _bad(path, line, None, f"expected an object, got {json_type(row)}")
    reason = row.get("reason")
    if not isinstance(reason, str) or not reason:
        raise _bad(path, line, "reason", f"expected a reason string, got {json_type(reason)}")
    return reason


def check_request_row(path: Path, line: int, row: Any) -> dict:
    """A request-log row: {request, step, prompt, reply | error, usage, ...}; returns it."""
    if not isinstance(row, dict):
        raise _bad(path, line, None, f"expected an object, got {json_type(row)}")
    if not _int(row.get("request")):
        raise _bad(path, line, "request", f"expected a request number, got {json_type(row.get('request'))}")
    for k in ("step", "prompt"):
        if not isinstance(row.get(k), str):
            raise _bad(path, line, k, f"expected a string, got {json_type(row.get(k))}")
    if "error" in row:
        if not isinstance(row["error"], str):
            raise _bad(path, line, "error", f"expected a string, got {json_type(row['error'])}")
        return row
    for k in ("reply", "finish_reason"):
        if not isinstance(row.get(k), str):
            raise _bad(path, line, k, f"expected a string, got {json_type(row.get(k))}")
    usage = row.get("usage")
    if not isinstance(usage, dict):
        raise _bad(path, line, "usage", f"expected an object, got {json_type(usage)}")
    for k in ("prompt_tokens", "completion_tokens"):
        if not _int(usage.get(k, 0)):
            raise _bad(path, line, f"usage.{k}", f"expected a token count, got {json_type(usage.get(k))}")
    if "instruction" in row and not isinstance(row["instruction"], str):
        raise _bad(path, line, "instruction", f"expected a string, got {json_type(row['instruction'])}")
    return row


@dataclass
class Totals:
    """Counters over every invocation, from the request log."""

    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_step: dict = field(default_factory=dict)  # step -> highest request number logged

    def add(self, row: dict) -> None:
        self.requests += 1
        if "error" in row:
            self.failed += 1
        else:
            self.prompt_tokens += row["usage"].get("prompt_tokens", 0)
            self.completion_tokens += row["usage"].get("completion_tokens", 0)
        self.by_step[row["step"]] = max(self.by_step.get(row["step"], -1), row["request"])


class Pending:
    """Rows a cut-short round had already written to one file: each row the rerun produces is compared with the
    next of them and, when equal, not written again."""

    def __init__(self, path: Path, rows: deque):
        self.path, self.rows = path, rows

    def take(self, rows: list[dict]) -> list[dict]:
        """The rows still to write (those past what is on disk)."""
        fresh = []
        for row in rows:
            if not self.rows:
                fresh.append(row)
                continue
            line, on_disk = self.rows.popleft()
            if json.loads(json.dumps(row, ensure_ascii=False)) != on_disk:
                raise CamelidError(f"{self.path}:{line}: differs from the row the resumed round gives (the settings, "
                                   "the seeds or the teacher changed since the run was cut); resume with the same "
                                   "command, or pass a new -o")
            fresh.append(None)
        return [r for r in fresh if r is not None]

    def check_done(self, first: int, last: int) -> None:
        if self.rows:
            line = self.rows[0][0]
            raise CamelidError(f"{self.path}:{line}: {len(self.rows)} rows from line {line} on were not given again "
                               f"by resuming requests {first}-{last} (the settings or the teacher changed since the "
                               "run was cut); resume with the same command, or pass a new -o")
