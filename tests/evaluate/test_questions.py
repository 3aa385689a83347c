import json

import pytest

from camelid.core.io import DataError
from camelid.evaluate.questions import detect_lang, load_answers, load_questions, reference_answers


def test_every_eval_set_shape_of_the_field_loads(shared_data, tmp_path):
    vic = load_questions(shared_data / "fastchat" / "vicuna_bench_question.jsonl")
    assert len(vic) == 80 and vic[0].question_id == 1 and vic[0].category == "generic" and len(vic[0].turns) == 1
    mt = load_questions(shared_data / "fastchat" / "mt_bench_question.jsonl")
    assert len(mt) == 80 and all(len(q.turns) == 2 for q in mt)
    assert sum(q.reference is not None for q in mt) == 39
    si = load_questions(shared_data / "self-instruct" / "user_oriented_instructions.jsonl")
    assert len(si) == 252 and si[0].question_id == "user_oriented_task_0" and si[0].category == "Grammarly"
    assert si[0].input and si[0].text(0).endswith(si[0].input) and si[0].message(0)["input"] == si[0].input
    ae = load_questions(shared_data / "alpaca_eval" / "example_outputs.json", limit=5)
    assert len(ae) == 5 and ae[0].reference_generator == "example" and ae[0].reference_output
    assert reference_answers(ae)["example"]["0"].turns == [ae[0].reference_output]

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
                                  {"instruction": "Name a color.", "input": "", "output": "Red"}]))
    al = load_questions(alpaca)
    assert [q.question_id for q in al] == [0, 1] and al[0].text(0) == "Add the numbers.\n\n2 and 3"
    txt = tmp_path / "instructions.txt"
    txt.write_text("Write a haiku.\n\nTell a joke.\n")
    assert [(q.question_id, q.turns) for q in load_questions(txt)] == [(1, ["Write a haiku."]), (3, ["Tell a joke."])]


def test_korean_set_is_detected_as_korean(shared_data):
    ko = load_questions(shared_data / "kullm" / "user_oriented_instructions_eval_ko.jsonl", limit=20)
    assert all(q.lang == "ko" for q in ko)
    assert detect_lang("How are you?") == "en" and detect_lang("안녕하세요, 잘 지내세요?") == "ko"


def test_bad_question_record_names_file_line_and_field(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["ok"]}\n{"question_id": 2, "turns": []}\n')
    with pytest.raises(DataError, match=r"q.jsonl:2: field 'turns'"):
        load_questions(bad)
    bad.write_text('{"instruction": ""}\n')
    with pytest.raises(DataError, match=r"q.jsonl:1: field 'instruction'"):
        load_questions(bad)
    bad.write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n')
    with pytest.raises(DataError, match="duplicate question id"):
        load_questions(bad)


def test_answer_file_not_in_fastchat_shape_is_rejected_with_its_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"question_id": 1, "model_id": "m", "choices": [{"index": 0, "turns": ["x"]}]}\n'
                 '{"question_id": 2, "model_id": "m"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: field 'choices'"):
        load_answers(f)
