"""Formats: detection, reading, validation (every problem located), lossless conversion, streaming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.core.io import CamelidError, DataError
from camelid.data import formats as F
from camelid.core import records  # the one reader (camelid.data.records re-exports it)
from camelid.data.formats import convert, detect_format, iter_records, read_conversations, validate_file

FIX = Path(__file__).parent / "fixtures"


def rows_of(path: Path) -> list[dict]:
    return [r for _, _, r in iter_records(path)]


def dumps(rows: list[dict]) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in rows]


# ---------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name, fmt", [("alpaca.json", "alpaca"), ("alpaca.jsonl", "alpaca"),
                                       ("seed_tasks.jsonl", "seed-tasks"), ("sharegpt.json", "sharegpt"),
                                       ("openai.jsonl", "openai"), ("generated.json", "alpaca")])
def test_each_format_is_detected_from_its_first_record(name, fmt):
    assert detect_format(FIX / name) == fmt


def test_unknown_format_names_the_file_and_the_keys_seen():
    with pytest.raises(DataError) as e:
        detect_format(FIX / "unknown_format.jsonl")
    assert str(e.value).startswith(f"{FIX / 'unknown_format.jsonl'}:1: cannot tell the format")
    assert "['completion', 'prompt']" in str(e.value)


def test_reference_files_are_detected_without_mistakes(shared_data):
    assert detect_format(shared_data / "self-instruct/seed_tasks.jsonl") == "seed-tasks"
    assert detect_format(shared_data / "self-instruct/user_oriented_instructions.jsonl") == "seed-tasks"
    assert detect_format(shared_data / "kullm/user_oriented_instructions_eval_ko.jsonl") == "seed-tasks"
    assert detect_format(shared_data / "fastchat/dummy_conversation.json") == "sharegpt"
    assert detect_format(shared_data / "alpaca_eval/example_outputs.json") == "alpaca"
    assert detect_format(shared_data / "fastchat/mt_bench_question.jsonl") == "mt-bench"
    assert detect_format(shared_data / "fastchat/vicuna_bench_question.jsonl") == "mt-bench"
    with pytest.raises(DataError, match="cannot tell the format"):
        detect_format(shared_data / "fastchat/judge_prompts.jsonl")


def test_a_missing_file_is_a_user_error():
    with pytest.raises(CamelidError, match="no such file"):
        detect_format(FIX / "nope.jsonl")


# ---------------------------------------------------------------------------------------------- reading


def test_alpaca_rows_become_user_and_assistant_messages_with_input_and_extras():
    convs = list(read_conversations(FIX / "alpaca.json"))
    assert len(convs) == 8
    assert convs[0] == {"id": None, "messages": [
        {"role": "user", "content": "Give three tips for staying healthy."},
        {"role": "assistant", "content": "1. Eat well.\n2. Exercise.\n3. Sleep."}]}
    assert convs[1]["messages"][0] == {"role": "user", "content": "Translate the sentence into French.",
                                       "input": "The cat sleeps."}
    assert convs[2]["id"] == "kullm_7"
    assert convs[5]["source"] == "koalpaca" and convs[5]["url"] == "https://example.org/q/1"


def test_seed_tasks_give_one_conversation_per_instance():
    convs = list(read_conversations(FIX / "seed_tasks.jsonl"))
    assert [c["id"] for c in convs] == ["seed_task_0#0", "seed_task_0#1", "seed_task_1#0", "user_oriented_task_0#0"]
    assert convs[1]["messages"][0] == {"role": "user", "content": "Give the antonym of the word.", "input": "up"}
    assert "input" not in convs[2]["messages"][0]
    assert convs[0]["name"] == "antonyms" and convs[3]["motivation_app"] == "Grammarly"


def test_sharegpt_roles_map_to_openai_roles():
    convs = list(read_conversations(FIX / "sharegpt.json"))
    assert [m["role"] for m in convs[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert convs[0] == {"id": "conv_0", "messages": [{"role": "user", "content": "Who are you?"},
                                                     {"role": "assistant", "content": "I am Vicuna."}]}


def test_openai_records_are_read_as_they_are():
    convs = list(read_conversations(FIX / "openai.jsonl"))
    raw = rows_of(FIX / "openai.jsonl")
    assert [c["messages"] for c in convs] == [r["messages"] for r in raw]
    assert convs[0]["id"] is None


def test_mt_bench_questions_read_as_user_turns(shared_data):
    convs = list(read_conversations(shared_data / "fastchat/mt_bench_question.jsonl"))
    assert len(convs) == 80
    assert convs[0]["id"] == "81" and convs[0]["question_id"] == 81 and convs[0]["category"] == "writing"
    assert [m["role"] for m in convs[0]["messages"]] == ["user", "user"]
    assert sum("reference" in c for c in convs) == 39


def test_reading_an_invalid_record_names_file_line_and_field():
    with pytest.raises(DataError) as e:
        list(read_conversations(FIX / "missing_field.json"))
    assert str(e.value) == f"{FIX / 'missing_field.json'}:7: field 'output': missing"
    assert e.value.problems[0].record == 1


# ---------------------------------------------------------------------------------------------- validation


BROKEN = [
    ("empty.jsonl", [": file is empty"]),
    ("malformed.jsonl", [":3: malformed JSON: Expecting ',' delimiter (column 35)"]),
    ("malformed_list.json", [":3: malformed JSON: Expecting property name enclosed in double quotes"]),
    ("wrong_type.jsonl", [":2: field 'input': expected a string, got list",
                          ":2: field 'output': expected a string, got number"]),
    ("missing_field.json", [":7: field 'output': missing", ":11: field 'instruction': empty"]),
    ("non_utf8.jsonl", [":2: not valid UTF-8 (byte 21 of the line: invalid continuation byte)"]),
    ("roles_not_alternating.json", [":15: field 'conversations[1].from': 'human' out of turn, expected the "
                                    "assistant's turn (roles alternate user/assistant after an optional leading "
                                    "system message)"]),
    ("conversation_problems.jsonl", [
        ":2: field 'messages[1].role': unknown role 'tool' (expected assistant, system, user)",
        ":3: field 'messages': conversation ends with a user turn; the last message must be the assistant's answer",
        ":4: field 'messages': empty conversation",
        ":5: field 'messages[1].content': empty"]),
]


@pytest.mark.parametrize("name, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_every_problem_is_reported_with_file_line_and_field(name, expected):
    report = validate_file(FIX / name)
    assert not report.ok
    assert [str(p) for p in report.problems] == [f"{FIX / name}{e}" for e in expected]
    assert report.problem_count == len(expected)


def test_good_lines_around_a_bad_one_are_still_checked():
    report = validate_file(FIX / "malformed.jsonl")
    assert (report.format, report.records, report.records_ok) == ("alpaca", 3, 3)
    report = validate_file(FIX / "non_utf8.jsonl")
    assert (report.records, report.records_ok) == (2, 2)


@pytest.mark.parametrize("name", ["alpaca.json", "alpaca.jsonl", "seed_tasks.jsonl", "sharegpt.json", "openai.jsonl",
                                  "generated.json"])
def test_good_fixtures_validate(name):
    report = validate_file(FIX / name)
    assert report.ok, report.problems


def test_problems_are_all_counted_but_only_the_first_fifty_listed(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"instruction": "x", "output": ""}) + "\n" for _ in range(120)))
    report = validate_file(path)
    assert report.problem_count == 120 and len(report.problems) == F.MAX_LISTED
    assert report.problems[-1].line == 50


def test_a_forced_format_reports_records_of_another_shape(tmp_path):
    report = validate_file(FIX / "sharegpt.json", fmt="alpaca")
    assert [(p.line, p.field, p.message) for p in report.problems][:2] == [(2, "instruction", "missing"),
                                                                           (2, "output", "missing")]
    with pytest.raises(CamelidError, match="unknown format 'xml'"):
        validate_file(FIX / "sharegpt.json", fmt="xml")


def test_a_file_of_another_kind_is_one_problem_not_one_per_record(shared_data):
    report = validate_file(shared_data / "fastchat/judge_prompts.jsonl")
    assert report.problem_count == 1 and report.format is None
    assert str(report.problems[0]).startswith(f"{shared_data / 'fastchat/judge_prompts.jsonl'}:1: cannot tell")


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path):
    report = validate_file(tmp_path / "absent.jsonl")
    assert [str(p) for p in report.problems] == [f"{tmp_path / 'absent.jsonl'}: no such file"]


@pytest.mark.parametrize("text, message", [
    ("[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n]\n", ":3: malformed JSON: Expecting value"),
    ("[\n  {\"instruction\": \"a\", \"output\": \"b\"}\n", ":3: malformed JSON: the list is not closed (missing ']')"),
    ("[{\"instruction\": \"a\", \"output\": \"b\"}]\n{}", ":2: malformed JSON: extra data after the closing ']'"),
    ("{\n  \"instruction\": \"a\"\n}\n", ":1: malformed JSON: Expecting property name enclosed in double quotes "
     "(column 2); records must be one JSON object per line (JSONL) or a JSON list"),
    ("[]", ": no records"),
    ("[1, 2]", ":1: expected a JSON object, got number"),
])
def test_broken_json_lists_and_objects_are_located(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    report = validate_file(path, fmt="alpaca")
    assert str(report.problems[0]) == f"{path}{message}"


def test_utf16_and_bom_files(tmp_path):
    row = {"instruction": "안녕", "output": "하세요"}
    utf16 = tmp_path / "utf16.json"
    utf16.write_bytes(json.dumps([row], ensure_ascii=False).encode("utf-16"))
    assert "the file is UTF-16" in str(validate_file(utf16).problems[0])
    for name, text in (("bom.json", json.dumps([row], ensure_ascii=False)),
                       ("bom.jsonl", json.dumps(row, ensure_ascii=False) + "\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert validate_file(tmp_path / name).ok
        assert list(read_conversations(tmp_path / name))[0]["messages"][0]["content"] == "안녕"


def test_json_list_reader_agrees_with_json_load_at_any_buffer_size(monkeypatch, shared_data):
    files = [FIX / "alpaca.json", FIX / "sharegpt.json", shared_data / "fastchat/dummy_conversation.json"]
    for chunk in (1, 7, 64, 4096):
        monkeypatch.setattr(records, "_CHUNK", chunk)
        for path in files:
            assert rows_of(path) == json.loads(path.read_text(encoding="utf-8")), (path, chunk)


def test_json_list_reader_handles_numbers_cut_at_the_buffer_end_and_huge_records(monkeypatch, tmp_path):
    path = tmp_path / "values.json"
    values = [123456789, 1.5e300, "x" * 3_000_000, {"a": [1, 2, {"b": "한국어" * 1000}]}, True, None, -0.25]
    path.write_text(json.dumps(values, ensure_ascii=False, indent=1))
    for chunk in (3, 1000, 1 << 18):
        monkeypatch.setattr(records, "_CHUNK", chunk)
        assert [v for _, _, v in iter_records(path)] == values


def test_json_list_records_carry_the_line_where_they_start(tmp_path):
    assert [line for line, _, _ in iter_records(FIX / "sharegpt.json")] == [2, 15]
    convert(FIX / "alpaca.jsonl", tmp_path / "a.json", "alpaca")  # written one record per line
    assert (tmp_path / "a.json").read_text().splitlines()[2].startswith('{"instruction": "Translate')
    assert [line for line, _, _ in iter_records(tmp_path / "a.json")] == list(range(2, 10))


# ---------------------------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("via", ["sharegpt.json", "sharegpt.jsonl", "openai.jsonl", "openai.json"])
@pytest.mark.parametrize("src", ["alpaca.json", "alpaca.jsonl"])
def test_alpaca_round_trips_give_identical_rows(tmp_path, src, via):
    to = via.split(".")[0]
    mid, back = tmp_path / via, tmp_path / f"back.{src.split('.')[1]}"
    assert convert(FIX / src, mid, to) == 8
    assert detect_format(mid) == to and validate_file(mid).ok
    assert convert(mid, back, "alpaca") == 8
    assert dumps(rows_of(back)) == dumps(rows_of(FIX / src))
    if src.endswith(".jsonl"):
        assert back.read_bytes() == (FIX / src).read_bytes()


def test_other_tools_see_the_full_prompt_in_sharegpt_and_openai_output(tmp_path):
    convert(FIX / "alpaca.json", tmp_path / "sg.json", "sharegpt")
    convert(FIX / "alpaca.json", tmp_path / "oa.jsonl", "openai")
    sg, oa = rows_of(tmp_path / "sg.json"), rows_of(tmp_path / "oa.jsonl")
    human = sg[3]["conversations"][0]
    assert human == {"from": "human", "input": "I love it!\n\nReally.",
                     "value": "Classify the sentiment.\n\nAnswer with one word.\n\nI love it!\n\nReally."}
    assert oa[3]["messages"][0] == {"role": "user", "content": human["value"], "input": human["input"]}
    assert sg[2]["id"] == "kullm_7" and oa[2]["id"] == "kullm_7"
    assert "alpaca_keys" not in sg[0] and "alpaca_keys" not in sg[2]  # Stanford and KULLM shapes need no hint
    assert sg[4]["alpaca_keys"] == ["instruction", "output"]  # the missing input is remembered


def test_the_instruction_input_split_survives_blank_lines_on_both_sides(tmp_path):
    row = {"instruction": "A\n\nB\n\n", "input": "\n\nC\n\nD", "output": "E"}
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps(row) + "\n")
    convert(src, tmp_path / "s.json", "sharegpt")
    conv = next(read_conversations(tmp_path / "s.json"))
    assert conv["messages"][0] == {"role": "user", "content": "A\n\nB\n\n", "input": "\n\nC\n\nD"}
    convert(tmp_path / "s.json", tmp_path / "b.jsonl", "alpaca")
    assert rows_of(tmp_path / "b.jsonl") == [row]


def test_unusual_key_orders_and_a_null_id_round_trip_too(tmp_path):
    rows = [{"output": "o", "instruction": "i"}, {"id": None, "instruction": "i", "input": "", "output": "o"},
            {"instruction": "i", "input": "x", "output": "o", "id": "late", "extra": [1, {"k": 0.1}]}]
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for to in ("sharegpt", "openai"):
        convert(src, tmp_path / f"{to}.jsonl", to)
        convert(tmp_path / f"{to}.jsonl", tmp_path / "back.jsonl", "alpaca")
        assert (tmp_path / "back.jsonl").read_text() == src.read_text()


def test_what_alpaca_cannot_hold_is_refused_with_its_field(tmp_path):
    src = tmp_path / "oa.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a", "weight": 0}]}) + "\n")
    with pytest.raises(DataError, match=r"oa.jsonl:1: field 'messages\[1\].weight': alpaca has no place"):
        convert(src, tmp_path / "a.json", "alpaca")
    assert not (tmp_path / "a.json").exists()


def test_alpaca_eval_outputs_round_trip_through_openai(tmp_path, shared_data):
    src = shared_data / "alpaca_eval/example_outputs.json"
    assert convert(src, tmp_path / "oa.jsonl", "openai") == 805
    assert convert(tmp_path / "oa.jsonl", tmp_path / "back.json", "alpaca") == 805
    assert dumps(rows_of(tmp_path / "back.json")) == dumps(rows_of(src))


def test_multi_turn_to_alpaca_is_refused_naming_the_record_and_nothing_is_written(tmp_path):
    dst = tmp_path / "out.json"
    with pytest.raises(DataError) as e:
        convert(FIX / "sharegpt.json", dst, "alpaca")
    assert str(e.value).startswith(f"{FIX / 'sharegpt.json'}:15: conversation 'conv_1' has 5 messages "
                                   "(system, user, assistant, user, assistant): alpaca holds one instruction")
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_a_failed_conversion_leaves_an_existing_output_untouched(tmp_path):
    dst = tmp_path / "out.jsonl"
    dst.write_text("keep me\n")
    with pytest.raises(DataError, match="missing_field.json:7: field 'output': missing"):
        convert(FIX / "missing_field.json", dst, "openai")
    assert dst.read_text() == "keep me\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_seed_tasks_convert_to_one_alpaca_row_per_instance(tmp_path):
    assert convert(FIX / "seed_tasks.jsonl", tmp_path / "a.jsonl", "alpaca") == 4
    rows = rows_of(tmp_path / "a.jsonl")
    assert rows[1] == {"id": "seed_task_0#1", "instruction": "Give the antonym of the word.", "input": "up",
                       "output": "down", "name": "antonyms", "is_classification": False}


def test_sharegpt_and_openai_convert_into_each_other(tmp_path):
    convert(FIX / "sharegpt.json", tmp_path / "oa.jsonl", "openai")
    convert(tmp_path / "oa.jsonl", tmp_path / "sg.json", "sharegpt")
    assert rows_of(tmp_path / "sg.json") == rows_of(FIX / "sharegpt.json")
    assert rows_of(tmp_path / "oa.jsonl")[1]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_conversion_refuses_unknown_targets_and_question_files(tmp_path, shared_data):
    with pytest.raises(CamelidError, match="cannot write format 'seed-tasks'"):
        convert(FIX / "alpaca.json", tmp_path / "x.jsonl", "seed-tasks")
    with pytest.raises(CamelidError, match="hold no answers"):
        convert(shared_data / "fastchat/vicuna_bench_question.jsonl", tmp_path / "x.jsonl", "openai")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- reference data


REFERENCE = {"self-instruct/seed_tasks.jsonl": ("seed-tasks", 175),
             "self-instruct/user_oriented_instructions.jsonl": ("seed-tasks", 252),
             "kullm/user_oriented_instructions_eval_ko.jsonl": ("seed-tasks", 252),
             "fastchat/dummy_conversation.json": ("sharegpt", 500),
             "alpaca_eval/example_outputs.json": ("alpaca", 805),
             "fastchat/mt_bench_question.jsonl": ("mt-bench", 80),
             "fastchat/vicuna_bench_question.jsonl": ("mt-bench", 80)}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_every_reference_dataset_validates(shared_data, name):
    report = validate_file(shared_data / name)
    assert report.ok, report.problems
    assert (report.format, report.records, report.records_ok) == (*REFERENCE[name], REFERENCE[name][1])


# ---------------------------------------------------------------------------------------------- streaming


MEASURE = """
import json, resource, sys
from camelid.data.formats import validate_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = validate_file(sys.argv[1])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"ok": report.ok, "records": report.records, "grown_kib": grown}))
"""


@pytest.mark.parametrize("layout, n", [("jsonl", 200_000), ("json", 100_000)])
def test_large_files_are_validated_in_a_small_fixed_amount_of_memory(tmp_path, layout, n):
    path = tmp_path / f"big.{layout}"
    line = json.dumps({"instruction": "Write a short poem about the sea number {i}.", "input": "",
                       "output": "Waves. " * 20}, indent=2 if layout == "json" else None)
    with open(path, "w", encoding="utf-8") as f:
        if layout == "jsonl":
            f.writelines(line.replace("{i}", str(i)) + "\n" for i in range(n))
        else:
            f.write("[\n" + ",\n".join(line.replace("{i}", str(i)) for i in range(n)) + "\n]\n")
    size = path.stat().st_size
    # peak RSS growth in a fresh process (tracemalloc would slow the run tenfold)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["ok"] and result["records"] == n
    assert size > 20e6 and result["grown_kib"] * 1024 < 8e6, (size, result)
