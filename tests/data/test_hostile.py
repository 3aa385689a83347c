"""Hostile input through every command that reads a dataset file: each case ends in exit 1 with one error that
names the file (and the line where there is one), no traceback, and nothing written beside the input.

The table holds one example of each class a hostile or broken file falls into (Python's own JSON limits: nesting,
digits, surrogates, NaN; bytes that are not UTF-8; files that are empty, blank or not a file at all; the wrong JSON
shape). The same table runs through validate, convert, stats, show, render, dedup, clean, split, generate --seeds,
train --data and eval answer --questions, and a bounded hypothesis fuzz runs random bytes, random JSON and random
nesting through the readers underneath them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camelid.cli import main
from camelid.core.errors import CamelidError
from camelid.core.io import read_json, read_jsonl, read_records
from camelid.core.records import iter_records
from camelid.data.formats import read_conversations, validate_file

ALPACA = {"instruction": "Name a fruit that is red.", "input": "", "output": "An apple."}
SHAREGPT = {"id": "a", "conversations": [{"from": "human", "value": "Name a red fruit."},
                                         {"from": "gpt", "value": "An apple."}]}


def line(rec) -> str:
    return json.dumps(rec, ensure_ascii=False) + "\n"


def deep(n: int) -> str:
    return "[" * n + "]" * n


# name -> (file name, bytes given the command's well-formed record); None as bytes: a directory
CASES = {
    "nesting past Python's recursion limit": ("deep.jsonl",
                                              lambda r: line(r) + '{"instruction": ' + deep(5000) + "}\n"),
    "nesting deeper than any dataset": ("deep100.jsonl", lambda r: line(r) + '{"x": ' + deep(100) + "}\n"),
    "nesting in a JSON list": ("deep.json", lambda r: "[" + json.dumps(r) + ",\n" + deep(3000) + "]\n"),
    "an integer of 5000 digits": ("bigint.jsonl", lambda r: line(r) + line(r)[:-2] + ', "id": ' + "9" * 5000 + "}\n"),
    "a lone surrogate in a value": ("surrogate.jsonl", lambda r: line(r) + line(r).replace("apple", "apple\\ud83d")),
    "a lone surrogate in a key": ("surrogate_key.json", lambda r: "[" + json.dumps(r) + ",\n" +
                                  json.dumps(r).replace('"', '"\\udc00', 1) + "]\n"),
    "a lone surrogate after a BOM": ("bom.json", lambda r: "\ufeff[" + json.dumps(r).replace("apple", "\\udfff")
                                     + "]"),
    "NaN": ("nan.jsonl", lambda r: line(r) + line(r)[:-2] + ', "score": NaN}\n'),
    "a number out of range": ("inf.jsonl", lambda r: line(r) + line(r)[:-2] + ', "score": 1e999}\n'),
    "bytes that are not UTF-8": ("latin1.jsonl", lambda r: line(r).encode() + line(r).replace("apple", "pomme \xe9")
                                 .encode("latin-1")),
    "a UTF-16 file": ("utf16.json", lambda r: ("[" + json.dumps(r) + "]").encode("utf-16")),
    "an empty file": ("empty.jsonl", lambda r: ""),
    "a file of blank lines": ("blank.jsonl", lambda r: "  \n\n\t\n   "),
    "a JSON list cut short": ("cut.json", lambda r: "[" + json.dumps(r) + ",\n" + json.dumps(r)[:20]),
    "a JSON scalar": ("scalar.json", lambda r: "42\n"),
    "a list of strings": ("strings.json", lambda r: '["a", "b"]\n'),
    "a line that is not JSON": ("notjson.jsonl", lambda r: line(r) + "instruction: hello\n"),
    "a directory": ("somedir", None),
}

# command -> (argv given the input and a fresh output path, the record it reads)
COMMANDS = {
    "validate": (lambda f, o: ["data", "validate", f], ALPACA),
    "convert": (lambda f, o: ["data", "convert", f, o + ".jsonl", "--to", "openai"], ALPACA),
    "stats": (lambda f, o: ["data", "stats", f], ALPACA),
    "show": (lambda f, o: ["data", "show", f], ALPACA),
    "render": (lambda f, o: ["data", "render", f, "--template", "alpaca"], ALPACA),
    "dedup": (lambda f, o: ["data", "dedup", f, "-o", o + ".jsonl"], ALPACA),
    "clean": (lambda f, o: ["data", "clean", f, "-o", o + ".json"], SHAREGPT),
    "split": (lambda f, o: ["data", "split", f, "-o", o + ".json", "--max-tokens", "256"], SHAREGPT),
    "generate --seeds": (lambda f, o: ["generate", "--seeds", f, "-o", o + ".jsonl", "--num", "1"], ALPACA),
    "train --data": (lambda f, o: ["train", "--data", f, "-o", o], ALPACA),
    "eval answer --questions": (lambda f, o: ["eval", "answer", "--questions", f, "-o", o + ".jsonl"], ALPACA),
}


def make(tmp_path: Path, case: str, rec: dict) -> Path:
    name, content = CASES[case]
    path = tmp_path / "in" / name
    path.parent.mkdir()
    if content is None:
        path.mkdir()
        return path
    data = content(rec)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_hostile_input_is_one_located_error_and_nothing_is_written(tmp_path, capsys, command, case):
    argv, rec = COMMANDS[command]
    path = make(tmp_path, case, rec)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(argv(str(path), str(tmp_path / "out")))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 1, out + err
    if command == "validate":  # a report: each problem on its line, then the summary
        problems = [x for x in out.splitlines() if x.startswith(f"{path}:") and not x.endswith(("ok", "problem"))]
        assert problems and all(x.startswith(f"{path}") for x in problems), out
    else:
        errors = [x for x in err.splitlines() if x.startswith("camelid: error:")]
        assert len(errors) == 1, err
        lines = err[err.index("camelid: error:"):].splitlines()
        assert all(str(path) in x for x in lines), err  # every line of the error names the file
    if CASES[case][0].endswith(".jsonl") and CASES[case][1] is not None and "empty" not in case \
            and "blank" not in case and command != "validate":
        assert f"{path}:" in err, err  # and the line, where there is one
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_validate_rejects_what_later_commands_cannot_process(tmp_path):
    """Anything validate passes, convert and training's reader take too: the hostile cases fail validate."""
    for i, case in enumerate(CASES):
        d = tmp_path / str(i)
        d.mkdir()
        assert not validate_file(make(d, case, ALPACA)).ok, case


# ---------------------------------------------------------------------------------------------- fuzz

READERS = {
    "iter_records": lambda p: list(iter_records(p)),
    "read_records": lambda p: list(read_records(p)),
    "read_jsonl": lambda p: list(read_jsonl(p)),
    "read_json": lambda p: read_json(p),
    "read_conversations": lambda p: list(read_conversations(p)),
    "validate_file": lambda p: validate_file(p),
}


def through_readers(path: Path) -> None:
    for name, read in READERS.items():
        try:
            read(path)
        except CamelidError:  # DataError included: the located one-line kind
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=30)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_never_raise_anything_but_a_located_error(tmp_path, data):
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    through_readers(path)


@FUZZ
@given(values=st.lists(json_values, max_size=4), as_list=st.booleans(),
       hostile=st.sampled_from(["", "\\ud800", "NaN", "1e400", "9" * 4400]))
def test_random_json_never_raises_anything_but_a_located_error(tmp_path, values, as_list, hostile):
    texts = [json.dumps(v) for v in values] + ([f'{{"instruction": "{hostile}"}}' if "\\" in hostile
                                                 else f'{{"instruction": {hostile}}}'] if hostile else [])
    path = tmp_path / "f.json"
    path.write_text("[" + ",\n".join(texts) + "]" if as_list else "\n".join(texts), encoding="utf-8")
    through_readers(path)


@FUZZ
@given(depth=st.integers(1, 3000), opener=st.sampled_from(["[", '{"a":']), where=st.integers(0, 2))
def test_random_nesting_never_raises_anything_but_a_located_error(tmp_path, depth, opener, where):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    rows = [json.dumps(ALPACA)] * 2
    rows.insert(where, nested)
    for name, text in (("f.jsonl", "\n".join(rows)), ("f.json", "[" + ",".join(rows) + "]")):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        through_readers(path)
