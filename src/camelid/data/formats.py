"""The dataset formats of the field: detect, read (streamed), validate and convert.

Formats, told apart by the keys of the first record (JSON list or JSONL, either way):
- `alpaca`: `{instruction, input, output}` rows (Stanford, KULLM, KoAlpaca, AlpacaEval outputs); `input` may be
  missing or empty; any other key (`id`, `generator`, `most_similar_instructions`, ...) is kept.
- `seed-tasks`: Self-Instruct seeds `{id, name, instruction, instances: [{input, output}], is_classification}` and the
  user-oriented eval set `{id, motivation_app, instruction, instances}`.
- `sharegpt`: `{id, conversations: [{from: human|gpt|system, value}]}` (FastChat/Vicuna).
- `openai`: `{"messages": [{role, content}]}` (fine-tuning JSONL).
- `mt-bench` (read only): MT-bench / Vicuna-bench questions `{question_id, category, turns, reference?}`: user turns
  without answers, so `read_conversations` yields user messages only and `convert` refuses them.

In memory every record is a *conversation* `{"id": str | None, "messages": [...], **extra keys}` in OpenAI shape.
An Alpaca user message keeps Stanford's split: `{"role": "user", "content": instruction, "input": input}` (`input`
only when non-empty; `core.templates.user_text` joins them for chat templates).

Lossless Alpaca round trips (alpaca -> sharegpt|openai -> alpaca gives byte-identical rows):
- On disk, a user turn's `value`/`content` is the full prompt `instruction + "\\n\\n" + input`, so FastChat, the OpenAI
  API or any other tool trains on what the Alpaca template would show, and the turn also carries `"input": input`.
  Reading strips exactly that suffix back off, so the split is recovered even when the instruction or the input
  itself contains blank lines. (A user turn whose text does not end with its `input` is taken as already split.)
- Extra row keys (`id` included) become top-level keys of the conversation record.
- `alpaca_keys`: the row's key order, written only when it differs from the default reconstruction
  (`id` when set, `instruction`, `input`, `output`, then the extra keys in order). It is what tells a missing
  `input` from an empty one and restores unusual key orders; Stanford- and KULLM-shaped rows never need it.
- A non-string `id` becomes a string (the in-memory `id` is `str | None`); that is the one loss.
Conversations alpaca cannot hold (more than one exchange, a system message, extra message keys) are refused by
`convert(..., to="alpaca")` with the first such record named.

Reading is streamed for JSONL and JSON lists alike (`camelid.data.records`), and every problem is located by file,
line (where the record starts, for JSON lists too), record index and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from camelid.core.io import CamelidError, DataError, Problem, atomic_write
from camelid.core.records import check_input, json_type
from camelid.core.tables import display
from camelid.core.templates import user_text
from camelid.data.records import Record, iter_records

__all__ = ["FORMATS", "READ_ONLY", "WRITABLE", "ValidationReport", "Record", "iter_records", "detect_record",
           "detect_format", "iter_conversations", "read_conversations", "validate_file", "convert"]

FORMATS = ("alpaca", "seed-tasks", "sharegpt", "openai")
READ_ONLY = ("mt-bench",)
WRITABLE = ("alpaca", "sharegpt", "openai")
ALPACA_KEYS = "alpaca_keys"
MAX_LISTED = 50  # problems kept in a ValidationReport; all are counted

# ShareGPT's speaker names (FastChat's exports and the scrapes it cleaned) -> roles; `data clean` writes what this reads
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                  "bing": "assistant", "assistant": "assistant", "model": "assistant", "system": "system"}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}
_ALPACA_CORE = ("id", "instruction", "input", "output")
_EXPECTED = ("alpaca {instruction, input, output}, seed-tasks {id, instruction, instances}, sharegpt {conversations}, "
             "openai {messages}, mt-bench {question_id, turns}")


# ---------------------------------------------------------------------------------------------- checks


_type = json_type


def _need_str(rec: dict, key: str, out: list, prefix: str = "", required: bool = True, nonempty: bool = True) -> None:
    if key not in rec:
        if required:
            out.append((prefix + key, "missing"))
        return
    v = rec[key]
    if not isinstance(v, str):
        out.append((prefix + key, f"expected a string, got {_type(v)}"))
    elif nonempty and not v.strip():
        out.append((prefix + key, "empty"))


def _need_id(rec: dict, key: str, out: list, required: bool = False) -> None:
    if key not in rec:
        if required:
            out.append((key, "missing"))
    elif not isinstance(rec[key], (str, int)) or isinstance(rec[key], bool):
        out.append((key, f"expected a string, got {_type(rec[key])}"))


def _check_alpaca(rec: dict) -> list[tuple[str | None, str]]:
    out: list = []
    _need_str(rec, "instruction", out)
    _need_str(rec, "input", out, required=False, nonempty=False)
    _need_str(rec, "output", out)
    if rec.get("id") is not None:
        _need_id(rec, "id", out)
    for k in ("messages", ALPACA_KEYS):
        if k in rec:
            out.append((k, "reserved key in an alpaca row (rename it)"))
    return out


def _check_seed(rec: dict) -> list[tuple[str | None, str]]:
    out: list = []
    _need_id(rec, "id", out, required=True)
    _need_str(rec, "instruction", out)
    _need_str(rec, "name", out, required=False)
    if "is_classification" in rec and not isinstance(rec["is_classification"], bool):
        out.append(("is_classification", f"expected true or false, got {_type(rec['is_classification'])}"))
    inst = rec.get("instances")
    if "instances" not in rec:
        out.append(("instances", "missing"))
    elif not isinstance(inst, list):
        out.append(("instances", f"expected a list, got {_type(inst)}"))
    elif not inst:
        out.append(("instances", "empty (a task needs at least one instance)"))
    else:
        for i, x in enumerate(inst):
            if not isinstance(x, dict):
                out.append((f"instances[{i}]", f"expected an object, got {_type(x)}"))
                continue
            _need_str(x, "input", out, f"instances[{i}].", required=False, nonempty=False)
            _need_str(x, "output", out, f"instances[{i}].")
    return out


def _check_messages(rec: dict, key: str, role_key: str, text_key: str, roles: dict[str, str]) -> list:
    out: list = []
    msgs = rec.get(key)
    if key not in rec:
        return [(key, "missing")]
    if not isinstance(msgs, list):
        return [(key, f"expected a list, got {_type(msgs)}")]
    if not msgs:
        return [(key, "empty conversation")]
    mapped: list[str | None] = []
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            out.append((where, f"expected an object, got {_type(m)}"))
            mapped.append(None)
            continue
        r = m.get(role_key)
        if role_key not in m:
            out.append((f"{where}.{role_key}", "missing"))
        elif not isinstance(r, str) or r not in roles:
            out.append((f"{where}.{role_key}", f"unknown role {r!r} (expected {', '.join(sorted(set(roles)))})"))
        mapped.append(roles.get(r) if isinstance(r, str) else None)
        _need_str(m, text_key, out, where + ".")
        if mapped[-1] == "user":
            _need_str(m, "input", out, where + ".", required=False, nonempty=False)
    if None in mapped:
        return out
    start = 1 if mapped[0] == "system" else 0
    for i in range(start, len(mapped)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if mapped[i] != want:
            raw = msgs[i][role_key]
            out.append((f"{key}[{i}].{role_key}", f"{raw!r} out of turn, expected the {want}'s turn (roles alternate "
                        "user/assistant after an optional leading system message)"))
            return out
    if mapped[-1] != "assistant":
        what = "only a system message" if len(mapped) == 1 else f"a {mapped[-1]} turn"
        out.append((key, f"conversation ends with {what}; the last message must be the assistant's answer"))
    return out


def _check_sharegpt(rec: dict) -> list:
    out = _check_messages(rec, "conversations", "from", "value", SHAREGPT_ROLES)
    if rec.get("id") is not None:
        _need_id(rec, "id", out)
    return out


def _check_openai(rec: dict) -> list:
    out = _check_messages(rec, "messages", "role", "content", OPENAI_ROLES)
    if rec.get("id") is not None:
        _need_id(rec, "id", out)
    return out


def _check_mtbench(rec: dict) -> list:
    out: list = []
    _need_id(rec, "question_id", out, required=True)
    _need_str(rec, "category", out, required=False)
    turns = rec.get("turns")
    if not isinstance(turns, list) or not turns:
        out.append(("turns", "missing" if "turns" not in rec else f"expected a non-empty list, got {_type(turns)}"))
    else:
        for i, t in enumerate(turns):
            if not isinstance(t, str) or not t.strip():
                out.append((f"turns[{i}]", "empty" if isinstance(t, str) else f"expected a string, got {_type(t)}"))
    ref = rec.get("reference")
    if ref is not None and not (isinstance(ref, list) and all(isinstance(x, str) for x in ref)):
        out.append(("reference", "expected a list of strings"))
    return out


# ---------------------------------------------------------------------------------------------- to conversations


def _id(v: Any) -> str | None:
    return None if v is None else v if isinstance(v, str) else str(v)


def _extras(rec: dict, skip: tuple[str, ...]) -> dict:
    return {k: v for k, v in rec.items() if k not in skip}


def _default_alpaca_keys(has_id: bool, extras: list[str]) -> list[str]:
    return (["id"] if has_id else []) + ["instruction", "input", "output"] + extras


def _from_alpaca(rec: dict) -> list[dict]:
    user = {"role": "user", "content": rec["instruction"]}
    if rec.get("input"):
        user["input"] = rec["input"]
    extras = _extras(rec, _ALPACA_CORE)
    conv = {"id": _id(rec.get("id")), "messages": [user, {"role": "assistant", "content": rec["output"]}], **extras}
    if list(rec) != _default_alpaca_keys(rec.get("id") is not None, list(extras)):
        conv[ALPACA_KEYS] = list(rec)
    return [conv]


def _from_seed(rec: dict) -> list[dict]:
    extras = _extras(rec, ("id", "instruction", "instances"))
    out = []
    for k, inst in enumerate(rec["instances"]):
        user = {"role": "user", "content": rec["instruction"]}
        if inst.get("input"):
            user["input"] = inst["input"]
        out.append({"id": f"{rec['id']}#{k}", "messages": [user, {"role": "assistant", "content": inst["output"]}],
                    **extras})
    return out


def _message(role: str, text: str, m: dict, skip: tuple[str, str]) -> dict:
    out = {"role": role, "content": text, **_extras(m, (*skip, "role", "content"))}
    if role == "user" and "input" in out:
        inp = out.pop("input")
        if inp:
            if out["content"].endswith("\n\n" + inp):  # written joined by camelid: strip it back off
                out["content"] = out["content"][: -len(inp) - 2]
            out["input"] = inp
    return out


def _from_sharegpt(rec: dict) -> list[dict]:
    msgs = [_message(SHAREGPT_ROLES[m["from"]], m["value"], m, ("from", "value")) for m in rec["conversations"]]
    return [{"id": _id(rec.get("id")), "messages": msgs, **_extras(rec, ("id", "conversations"))}]


def _from_openai(rec: dict) -> list[dict]:
    msgs = [_message(m["role"], m["content"], m, ("role", "content")) for m in rec["messages"]]
    return [{"id": _id(rec.get("id")), "messages": msgs, **_extras(rec, ("id", "messages"))}]


def _from_mtbench(rec: dict) -> list[dict]:
    msgs = [{"role": "user", "content": t} for t in rec["turns"]]
    return [{"id": _id(rec["question_id"]), "messages": msgs, **_extras(rec, ("turns",))}]


CHECKS: dict[str, Callable[[dict], list]] = {"alpaca": _check_alpaca, "seed-tasks": _check_seed,
                                             "sharegpt": _check_sharegpt, "openai": _check_openai,
                                             "mt-bench": _check_mtbench}
READERS: dict[str, Callable[[dict], list[dict]]] = {"alpaca": _from_alpaca, "seed-tasks": _from_seed,
                                                    "sharegpt": _from_sharegpt, "openai": _from_openai,
                                                    "mt-bench": _from_mtbench}


def _check_fmt(fmt: str | None) -> str | None:
    if fmt is not None and fmt not in CHECKS:
        raise CamelidError(f"unknown format {fmt!r}: choose one of {', '.join(CHECKS)}")
    return fmt


def detect_record(rec: Any) -> str | None:
    """The format one record belongs to, or None."""
    if not isinstance(rec, dict):
        return None
    if "messages" in rec:
        return "openai"
    if "conversations" in rec:
        return "sharegpt"
    if "instances" in rec:
        return "seed-tasks"
    if "turns" in rec and "question_id" in rec:
        return "mt-bench"
    if "instruction" in rec:  # AlpacaEval outputs {instruction, output, generator, dataset} included
        return "alpaca"
    return None


def _unknown(name: str, line: int | None, index: int, rec: Any) -> Problem:
    seen = f"keys {sorted(rec)}" if isinstance(rec, dict) else f"a {_type(rec)}"
    return Problem(name, line, None, f"cannot tell the format: record {index} has {seen}; expected {_EXPECTED}", index)


def detect_format(path: str | Path) -> str:
    """The format of a dataset file from its first record: alpaca, seed-tasks, sharegpt, openai (or mt-bench for
    MT-bench/Vicuna-bench question files). DataError naming the file and the keys seen when it is none of them."""
    for item in iter_records(path):
        if isinstance(item, Problem):
            raise DataError(item)
        line, index, rec = item
        fmt = detect_record(rec)
        if fmt is None:
            raise DataError(_unknown(str(path), line, index, rec))
        return fmt
    raise DataError(Problem(str(path), None, None, "no records"))


def _problems(name: str, line: int | None, index: int, rec: Any, fmt: str) -> list[Problem]:
    if not isinstance(rec, dict):
        return [Problem(name, line, None, f"expected a JSON object, got {_type(rec)}", index)]
    return [Problem(name, line, f, msg, index) for f, msg in CHECKS[fmt](rec)]


def iter_conversations(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int | None, int, dict]]:
    """Like `read_conversations`, with the source line and record index of each conversation."""
    name = display(str(path))
    fmt = _check_fmt(fmt)
    for item in iter_records(path):
        if isinstance(item, Problem):
            raise DataError(item)
        line, index, rec = item
        if fmt is None:
            fmt = detect_record(rec)
            if fmt is None:
                raise DataError(_unknown(name, line, index, rec))
        probs = _problems(name, line, index, rec, fmt)
        if probs:
            raise DataError(probs)
        for conv in READERS[fmt](rec):
            yield line, index, conv


def read_conversations(path: str | Path, fmt: str | None = None) -> Iterator[dict]:
    """Stream `{"id", "messages", **extras}` in OpenAI shape from any supported format (see the module docstring).
    Seed tasks give one conversation per instance (id `"{task id}#{k}"`). An invalid record raises DataError
    with file, line, record index and field."""
    for _line, _index, conv in iter_conversations(path, fmt):
        yield conv


# ---------------------------------------------------------------------------------------------- validate


@dataclass
class ValidationReport:
    file: str
    format: str | None = None
    records: int = 0  # records parsed (lines that are not JSON are problems, not records)
    records_ok: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first MAX_LISTED
    problem_count: int = 0  # all of them

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, p: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(p)

    def summary(self) -> str:
        state = "ok" if self.ok else plural(self.problem_count, "problem")
        return f"{self.file}: {self.format or 'unknown format'}, {plural(self.records, 'record')}, {state}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


def validate_file(path: str | Path, fmt: str | None = None) -> ValidationReport:
    """Check every record and collect all problems (the first MAX_LISTED are kept, all are counted): malformed
    JSON, non-UTF-8 bytes, empty file, wrong types, missing or empty fields, unknown roles, roles that do not
    alternate, conversations that are empty or do not end with the assistant. Streams; never raises on bad data."""
    name = display(str(path))
    report = ValidationReport(name, _check_fmt(fmt))
    try:
        check_input(path)
    except CamelidError as e:
        report.add(Problem(name, None, None, str(e).removeprefix(f"{path}: ")))
        return report
    for item in iter_records(path):
        if isinstance(item, Problem):
            report.add(item)
            continue
        line, index, rec = item
        report.records += 1
        if report.format is None:
            report.format = detect_record(rec)
            if report.format is None:  # nothing to check the records against (as detect_format would fail)
                report.add(_unknown(name, line, index, rec))
                return report
        probs = _problems(name, line, index, rec, report.format)
        for q in probs:
            report.add(q)
        report.records_ok += not probs
    if report.records == 0 and report.ok:
        report.add(Problem(name, None, None, "no records"))
    return report


# ---------------------------------------------------------------------------------------------- convert


def _refuse(where: tuple[str, int | None, int], fld: str | None, msg: str) -> DataError:
    return DataError(Problem(where[0], where[1], fld, msg, where[2]))


def _write_message(m: dict, role_key: str, text_key: str, roles: dict[str, str]) -> dict:
    user = m["role"] == "user"
    out = {role_key: roles[m["role"]], text_key: user_text(m) if user else m["content"]}
    if user and m.get("input"):
        out["input"] = m["input"]
    out.update(_extras(m, ("role", "content", "input") if user else ("role", "content")))
    return out


def _to_sharegpt(conv: dict, where: tuple) -> dict:
    out: dict = {} if conv.get("id") is None else {"id": conv["id"]}
    out["conversations"] = [_write_message(m, "from", "value", TO_SHAREGPT) for m in conv["messages"]]
    out.update(_extras(conv, ("id", "messages")))
    return out


def _to_openai(conv: dict, where: tuple) -> dict:
    out: dict = {"messages": [_write_message(m, "role", "content", OPENAI_ROLES) for m in conv["messages"]]}
    if conv.get("id") is not None:
        out["id"] = conv["id"]
    out.update(_extras(conv, ("id", "messages")))
    return out


def _to_alpaca(conv: dict, where: tuple) -> dict:
    msgs = conv["messages"]
    roles = [m["role"] for m in msgs]
    if roles != ["user", "assistant"]:
        name = f"conversation {conv['id']!r}" if conv.get("id") is not None else "this conversation"
        raise _refuse(where, None, f"{name} has {len(msgs)} messages ({', '.join(roles)}): alpaca holds one "
                      "instruction and one output, without a system message; convert to sharegpt or openai instead")
    user, answer = msgs
    for i, (m, allowed) in enumerate(((user, ("role", "content", "input")), (answer, ("role", "content")))):
        for k in m:
            if k not in allowed:
                raise _refuse(where, f"messages[{i}].{k}", "alpaca has no place for this message key")
    extras = _extras(conv, ("id", "messages", ALPACA_KEYS))
    for k in ("instruction", "input", "output"):
        if k in extras:
            raise _refuse(where, k, "a record-level key that clashes with alpaca's own fields")
    keys = conv.get(ALPACA_KEYS)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        keys = None
    values = {"instruction": user["content"], "output": answer["content"], **extras}
    if conv.get("id") is not None or (keys and "id" in keys):
        values["id"] = conv.get("id")
    if keys is None or "input" in keys or user.get("input"):
        values["input"] = user.get("input", "")
    if keys is None:
        keys = _default_alpaca_keys("id" in values, list(extras))
    row = {k: values[k] for k in keys if k in values}
    row.update({k: v for k, v in values.items() if k not in row})  # anything the key list does not name goes last
    return row


WRITERS: dict[str, Callable[[dict, tuple], dict]] = {"alpaca": _to_alpaca, "sharegpt": _to_sharegpt,
                                                     "openai": _to_openai}


def convert(src: str | Path, dst: str | Path, to: str, fmt: str | None = None) -> int:
    """Convert `src` to format `to` (alpaca, sharegpt, openai) at `dst`, atomically (nothing is written when a
    record fails). JSONL when `dst` ends with .jsonl, else a JSON list with one record per line. Returns the number
    of records written."""
    if to not in WRITERS:
        raise CamelidError(f"cannot write format {to!r}: choose one of {', '.join(WRITERS)}")
    src, dst = Path(src), Path(dst)
    fmt = _check_fmt(fmt) or detect_format(src)
    if fmt == "mt-bench":
        raise CamelidError(f"{src}: MT-bench/Vicuna-bench questions hold no answers; there is nothing to convert")
    write = WRITERS[to]
    jsonl = dst.suffix.lower() == ".jsonl"
    n = 0
    with atomic_write(dst) as f:
        for line, index, conv in iter_conversations(src, fmt):
            text = json.dumps(write(conv, (str(src), line, index)), ensure_ascii=False)
            if jsonl:
                f.write(text + "\n")
            else:  # one record per line inside the list: json's indent= encoder is pure Python and 3x slower
                f.write(("[\n" if n == 0 else ",\n") + text)
            n += 1
        if not jsonl:
            f.write("\n]\n" if n else "[]\n")
    return n
