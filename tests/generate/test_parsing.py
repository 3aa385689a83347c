"""Prompts, parsers, filters and config of `camelid generate`: pure functions on canned text."""

from __future__ import annotations

import json
import random
import re

import pytest

from camelid.core.io import CamelidError, DataError
from camelid.generate import alpaca, self_instruct
from camelid.generate.filters import InstructionFilter, filter_instances
from camelid.generate.generator import GenerateConfig, load_config, sidecar_paths
from camelid.generate.prompts import SeedTask, default_seeds, load_seeds, prompt_file


def _stanford_encode_prompt(prompt_txt: str, prompt_instructions: list[dict]) -> str:
    """stanford_alpaca/generate_instruction.py encode_prompt, verbatim but for reading the file."""
    prompt = prompt_txt + "\n"
    for idx, task_dict in enumerate(prompt_instructions):
        (instruction, input, output) = task_dict["instruction"], task_dict["input"], task_dict["output"]
        instruction = re.sub(r"\s+", " ", instruction).strip().rstrip(":")
        input = "<noinput>" if input.lower() == "" else input
        prompt += "###\n"
        prompt += f"{idx + 1}. Instruction: {instruction}\n"
        prompt += f"{idx + 1}. Input:\n{input}\n"
        prompt += f"{idx + 1}. Output:\n{output}\n"
    prompt += "###\n"
    prompt += f"{idx + 2}. Instruction:"
    return prompt


def test_alpaca_prompt_is_stanfords_encode_prompt_byte_for_byte(shared_data):
    prompt_txt = (shared_data / "stanford_alpaca/prompt.txt").read_text()
    seeds = load_seeds(shared_data / "self-instruct/seed_tasks.jsonl")
    assert len(seeds) == 175 and sum(t.is_classification for t in seeds) == 26
    chosen = random.Random(3).sample(seeds, 3) + [SeedTask("Rewrite:\n  this   text:", [{"input": "", "output": "x"}])]
    rows = [{"instruction": t.instruction, "input": t.input, "output": t.output} for t in chosen]
    assert alpaca.encode_prompt(prompt_txt, chosen) == _stanford_encode_prompt(prompt_txt, rows)
    # the shipped prompt files end with a newline; the rendering is the same as Stanford's file without one
    ours = alpaca.encode_prompt(prompt_file("alpaca_en"), chosen[:3])
    assert "List of 20 tasks:\n###\n1. Instruction: " in ours and ours.endswith("###\n4. Instruction:")
    assert "4. Instruction: Rewrite: this text\n4. Input:\n<noinput>\n" in alpaca.encode_prompt(prompt_txt, chosen)


REPLY = """ Convert the sentence to passive voice.
4. Input:
The cat chased the mouse.
4. Output:
The mouse was chased by the cat.
###
5. Instruction: Name three primary colors.
5. Input:
<noinput>
5. Output:
Red, blue and yellow.
###
6. Instruction: Give an example.
6. Output:
oops
6. Input:
swapped
###
7. Instruction: Write a limerick about a cat that"""


def test_alpaca_reply_is_parsed_like_stanfords_post_process():
    items = alpaca.parse_reply(REPLY, "length", 3)
    assert [(p.instruction, p.input, p.output) for p in items[:2]] == [
        ("Convert the sentence to passive voice.", "The cat chased the mouse.", "The mouse was chased by the cat."),
        ("Name three primary colors.", "", "Red, blue and yellow.")]
    assert [p.reason for p in items] == [None, None, "malformed", "truncated"]
    # finish_reason "stop": the last item is read too (here it has no Input/Output, so it is malformed)
    assert [p.reason for p in alpaca.parse_reply(REPLY, "stop", 3)][-1] == "malformed"
    # the numbering must match the position, as in Stanford's regex
    assert alpaca.parse_reply(" A.\n9. Input:\nB\n9. Output:\nC", "stop", 3)[0].reason == "malformed"


def test_a_weak_teachers_tasks_without_separators_or_inputs_are_recovered():
    # as the embedded 135M teacher writes them: no `###` between tasks, a task with no Input line
    reply = (" Plan a picnic.\n4. Input:\nSix friends, one car.\n4. Output:\nPack sandwiches and a blanket.\n"
             "5. Instruction: Name a fruit that is yellow.\n5. Output:\nA banana.\n"
             "6. Instruction: A task with neither.\n")
    items = alpaca.parse_reply(reply, "stop", 3)
    assert [(p.instruction, p.input, p.output, p.reason) for p in items] == [
        ("Plan a picnic.", "Six friends, one car.", "Pack sandwiches and a blanket.", None),
        ("Name a fruit that is yellow.", "", "A banana.", None)]
    # labels out of order stay malformed
    assert alpaca.parse_reply(" A.\n4. Output:\nB\n4. Input:\nC", "stop", 3)[0].reason == "malformed"


@pytest.mark.parametrize("lang,inst,reason", [
    ("en", "Name a color.", "too_short"),
    ("en", " ".join(["word"] * 151), "too_long"),
    ("en", "Describe the image of a sunset over the sea.", "blacklisted"),
    ("en", "Give directions to go to the nearest station.", "blacklisted"),
    ("en", "Write a program that sorts a list of numbers.", "write_a_program"),
    ("en", "\"Hello\" means what in French, exactly?", "starts_with_punctuation"),
    ("en", "¿Cómo se dice hello en español por favor?", "non_ascii_start"),
    ("en", "Describe a mapping between two sets of numbers.", None),  # 'map' only as a whole word
    ("ko", "요약해", "too_short"),
    ("ko", "다음 사진을 보고 설명해 주세요.", "blacklisted"),
    ("ko", "Please summarize the following article in two sentences.", "wrong_language"),
    ("ko", "전세와 월세는 어떻게 다른가요?", None),
    ("zh", "画一张地图。", "too_short"),
    ("zh", "请根据这张图片写一段描述。", "blacklisted"),
    ("zh", "请编写程序计算斐波那契数列。", "write_a_program"),
    ("zh", "端午节为什么要吃粽子、赛龙舟？", None),
])
def test_instruction_filters_name_their_reason(lang, inst, reason):
    assert InstructionFilter(lang).reason(inst) == reason


def test_blacklist_is_configurable():
    assert InstructionFilter("en", blacklist=["poem"]).reason("Write a short poem about rain.") == "blacklisted"
    assert InstructionFilter("en", blacklist=[]).reason("Describe the image of a sunset over the sea.") is None


def test_shipped_seeds_and_prompts_pass_their_own_filters():
    for lang in ("en", "ko", "zh"):
        seeds = load_seeds(default_seeds(lang))
        f = InstructionFilter(lang)
        failing = [(t.instruction, f.reason(t.instruction)) for t in seeds if f.reason(t.instruction)
                   not in (None, "blacklisted")]
        assert not failing, failing
        assert "###" in prompt_file(f"alpaca_{lang}") or lang == "en"


def test_bad_seed_files_name_file_line_and_field(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text(json.dumps({"instruction": "ok", "instances": [{"input": "", "output": "y"}]}) + "\n"
                 + json.dumps({"instruction": "", "instances": []}) + "\n"
                 + json.dumps({"instruction": "x", "instances": [{"input": 3, "output": "y"}]}) + "\n")
    with pytest.raises(DataError) as e:
        load_seeds(p)
    assert str(e.value).splitlines() == [f"{p}:2: field 'instruction': empty",
                                         f"{p}:3: field 'instances': every instance needs string 'input' and 'output'"]
    alpaca_rows = tmp_path / "rows.json"
    alpaca_rows.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]))
    assert load_seeds(alpaca_rows)[0].output == "Hi."


def test_self_instruct_bootstrap_prompt_and_reply():
    seeds = load_seeds(default_seeds("en"))
    prompt = self_instruct.sample_bootstrap(seeds, ["Machine task one here.", "Machine task two here."],
                                            random.Random(0))
    lines = prompt.splitlines()
    assert lines[0] == "Come up with a series of tasks:" and lines[-1] == "9."
    assert "Machine task one here." in prompt and "Machine task two here." in prompt
    assert [line.split(".")[0] for line in lines[1:-1]] == [str(i) for i in range(1, 9)]
    assert "(Write every task in Korean.)" in self_instruct.bootstrap_prompt(["a"], "ko")
    insts, cut = self_instruct.parse_bootstrap(" list three   uses of baking soda.\n10. Explain why the sky "
                                               "is blue.\n11. Translate the", "length")
    assert insts == ["List three uses of baking soda.", "Explain why the sky is blue."] and cut == "Translate the"
    assert self_instruct.parse_bootstrap(" A task.\n10. Another task.", "stop") == (["A task.", "Another task."],
                                                                                  None)


def test_self_instruct_classification_and_instances():
    assert self_instruct.classify_prompt("Is this spam?").endswith("Task: Is this spam?\nIs it classification?")
    assert self_instruct.parse_classify(" Yes") and not self_instruct.parse_classify(" No")
    assert "Class label:" in self_instruct.instances_prompt("Is it spam?", True)
    gen_prompt = self_instruct.instances_prompt("Summarize the text.", False, "zh")
    assert "Write the inputs and outputs in Simplified Chinese." in gen_prompt.splitlines()[0]
    assert gen_prompt.endswith("Task: Summarize the text.\n")

    clf = "Class label: Spam\nEmail: You won a prize!\nClass label: Not spam\nEmail: Lunch at noon?\nClass label: Sp"
    assert self_instruct.parse_instances(clf, True, "length") == [
        {"input": "Email: You won a prize!", "output": "Spam"},
        {"input": "Email: Lunch at noon?", "output": "Not spam"}]
    gen = "Example 1\nText: The sun is hot.\nOutput: Hot sun.\nExample 2\nText: Rain again.\nOutput: Rain."
    assert self_instruct.parse_instances(gen, False, "stop") == [
        {"input": "Text: The sun is hot.", "output": "Hot sun."}, {"input": "Text: Rain again.", "output": "Rain."}]
    assert self_instruct.parse_instances("Output:\n- apples\n- pears", False, "stop") == [
        {"input": "", "output": "- apples\n- pears"}]
    assert self_instruct.parse_instances("no structure at all", False, "stop") == []


def test_instance_filters_follow_wang_et_al():
    kept, rejected = filter_instances([
        {"input": "a", "output": "b"}, {"input": "a", "output": "b"}, {"input": "", "output": ""},
        {"input": "same", "output": "same"}, {"input": "x", "output": "Answer:"}])
    assert kept == [{"input": "a", "output": "b"}]
    assert [r for _, r in rejected] == ["empty_output", "input_equals_output", "incomplete", "duplicate_instance"]
    kept, rejected = filter_instances([{"input": "q", "output": "yes"}, {"input": "q", "output": "no"}])
    assert kept == [] and {r for _, r in rejected} == {"conflicting_outputs"}


def test_config_file_and_flags(tmp_path):
    cfg_path = tmp_path / "gen.yaml"
    cfg_path.write_text("mode: self-instruct\nnum: 7\nlang: ko\nmax-tokens: 99\nblacklist: [foo]\n")
    cfg = load_config(cfg_path, {"num": 9, "temperature": None})
    assert (cfg.mode, cfg.num, cfg.lang, cfg.max_tokens, cfg.blacklist) == ("self-instruct", 9, "ko", 99, ["foo"])
    assert cfg.setting("temperature") == 0.7 and GenerateConfig().setting("temperature") == 1.0
    assert GenerateConfig(model="openai:teacher").setting("max_tokens") == 3072  # Stanford's
    assert GenerateConfig().setting("max_tokens") == 512  # the embedded 135M teacher loops rather than stopping
    cfg_path.write_text("num: 0\nbogus: 1\n")
    with pytest.raises(DataError) as e:
        load_config(cfg_path, {})
    assert f"{cfg_path}: field 'num'" in str(e.value) and "field 'bogus'" in str(e.value)
    with pytest.raises(CamelidError, match="no such config file"):
        load_config(tmp_path / "missing.yaml", {})
    assert sidecar_paths(tmp_path / "out.jsonl") == (tmp_path / "out.rejected.jsonl", tmp_path / "out.requests.jsonl")
