"""core/io.py: atomic writes, append-only JSONL that survives a torn line, errors that name file and line."""

from __future__ import annotations

import json

import pytest

from camelid.core.io import (CamelidError, DataError, JsonlAppender, atomic_write, read_jsonl, read_yaml_mapping,
                             write_json)


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write('{"v": 2, "half')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_the_appender_cuts_a_torn_last_line_and_goes_on(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}\n{"i": 2, "te')  # killed mid-line
    with JsonlAppender(path) as app:
        app.write({"i": 2})
    assert [row["i"] for _, row in read_jsonl(path)] == [0, 1, 2]


def test_a_complete_but_unparsable_last_line_is_kept_and_reported_with_its_line(tmp_path):
    """Only a torn tail (no newline) can come from a crash; a complete bad line is someone's edit: never cut."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}\n{"i": 1, \n')
    JsonlAppender(path).close()
    assert path.read_text() == '{"i": 0}\n{"i": 1, \n'
    with pytest.raises(DataError, match=r"rows.jsonl:2: malformed JSON"):
        list(read_jsonl(path))


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: malformed JSON"):
        list(read_jsonl(path))
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8"):
        list(read_jsonl(path))


def test_yaml_configs_must_be_a_mapping_and_errors_name_the_line(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1.0e-4\nlora: {r: 8}\n")
    assert read_yaml_mapping(good) == {"lr": 1e-4, "lora": {"r": 8}}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(DataError, match=r"bad.yaml:3: not valid YAML"):
        read_yaml_mapping(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DataError, match="expected a mapping of settings, got list"):
        read_yaml_mapping(tmp_path / "list.yaml")
    with pytest.raises(CamelidError, match="no such file"):
        read_yaml_mapping(tmp_path / "missing.yaml")
