"""The templates against their references: Stanford Alpaca's strings byte for byte, FastChat's vicuna_v1.1."""

from __future__ import annotations

import json

import pytest

from camelid.core.templates import TemplateError, get_template, trained
from camelid.core.tokenize import IGNORE_INDEX, encode

# tatsu-lab/stanford_alpaca train.py PROMPT_DICT, byte for byte
STANFORD_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def fastchat_vicuna_v11(messages: list[dict], eos: str, add_generation_prompt: bool = False) -> str:
    """FastChat's Conversation.get_prompt for SeparatorStyle.ADD_COLON_TWO, reproduced literally
    (conv = get_conv_template("vicuna_v1.1"); sep=" ", sep2="</s>" with the tokenizer's EOS written instead)."""
    system_message = ("A chat between a curious user and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    system_template = "{system_message}"
    roles = ("USER", "ASSISTANT")
    conv_messages = []
    for m in messages:
        if m["role"] == "system":
            system_message = m["content"]
        else:
            conv_messages.append([roles[0] if m["role"] == "user" else roles[1], m["content"]])
    if add_generation_prompt:
        conv_messages.append([roles[1], None])
    # --- get_prompt, ADD_COLON_TWO
    system_prompt = system_template.format(system_message=system_message)
    seps = [" ", eos]
    ret = system_prompt + seps[0]
    for i, (role, message) in enumerate(conv_messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6.\nAnything else?"},
     {"role": "user", "content": "No, thanks"}, {"role": "assistant", "content": "Bye!"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Greet me"},
     {"role": "assistant", "content": "Ahoy, matey!"}, {"role": "user", "content": "Again"},
     {"role": "assistant", "content": "Arr!"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Empty system"},
     {"role": "assistant", "content": "Fine."}],
]


@pytest.mark.parametrize("eos", ["</s>", "<|im_end|>"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "three-turns", "system", "empty-system"])
def test_vicuna_renders_fastchats_string_exactly(messages, eos):
    t = get_template("vicuna_v1.1", eos_token=eos)
    assert t.render(messages, eos_token=eos) == fastchat_vicuna_v11(messages, eos)
    open_turn = messages[:-1]
    assert t.render(open_turn, add_generation_prompt=True, eos_token=eos) == \
        fastchat_vicuna_v11(open_turn, eos, add_generation_prompt=True)


def test_alpaca_renders_stanfords_prompts_byte_for_byte_with_output_plus_eos():
    t = get_template("alpaca", eos_token="</s>")
    with_input = [{"role": "user", "content": "Translate.", "input": "Bonjour"},
                  {"role": "assistant", "content": "Hello"}]
    no_input = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."}]
    assert t.render(with_input) == STANFORD_PROMPT_INPUT.format(instruction="Translate.", input="Bonjour") + \
        "Hello</s>"
    assert t.render(no_input) == STANFORD_PROMPT_NO_INPUT.format(instruction="Name a color.") + "Red.</s>"
    # an empty input is Stanford's no-input prompt (`example.get("input", "") != ""`)
    empty = [{"role": "user", "content": "Name a color.", "input": ""}, {"role": "assistant", "content": "Red."}]
    assert t.render(empty) == t.render(no_input)
    assert t.render(no_input[:1], add_generation_prompt=True) == STANFORD_PROMPT_NO_INPUT.format(
        instruction="Name a color.")


def test_alpaca_trains_exactly_the_output_and_eos(tokenizer):
    t = get_template("alpaca", None, tokenizer.bos_token, tokenizer.eos_token)
    msgs = [{"role": "user", "content": "Name a color.", "input": "warm"}, {"role": "assistant", "content": "Red."}]
    ids, labels = encode(tokenizer, t, msgs)
    assert tokenizer.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX]) == "Red." + tokenizer.eos_token
    assert labels[-1] == tokenizer.eos_token_id
    prompt = STANFORD_PROMPT_INPUT.format(instruction="Name a color.", input="warm")
    assert tokenizer.decode([i for i, l in zip(ids, labels) if l == IGNORE_INDEX]) == prompt


@pytest.mark.parametrize("mask,expected", [("assistant", [" 4.", " 6.\nAnything else?", " Bye!"]),
                                           ("last", [" Bye!"])])
def test_vicuna_masks_train_the_chosen_assistant_turns_each_with_eos(tokenizer, mask, expected):
    t = get_template("vicuna_v1.1", None, tokenizer.bos_token, tokenizer.eos_token)
    ids, labels = encode(tokenizer, t, CONVERSATIONS[1], mask)
    spans, cur = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    assert [tokenizer.decode(s) for s in spans] == [e + tokenizer.eos_token for e in expected]


def test_mask_all_trains_every_segment():
    t = get_template("chatml")
    segs = t.segments(CONVERSATIONS[1])
    assert all(trained(segs, "all"))
    assert sum(trained(segs, "last")) < sum(trained(segs, "assistant")) < len(segs)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir

    return AutoTokenizer.from_pretrained(embedded_hf_dir())


# ------------------------------------------------------------------ issue 16, item 4: system messages never dropped
SYSTEM_CONV = [{"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "Name a color."},
               {"role": "assistant", "content": "Red, arr."}]


@pytest.mark.parametrize("name", ["alpaca", "alpaca_ko", "self-instruct"])
def test_a_system_message_is_refused_by_every_form_of_a_template_that_has_no_place_for_it(tokenizer, name):
    # reference: Stanford's/KULLM's/Self-Instruct's prompts have no system slot, and `data convert --to alpaca`
    # refuses the same record; the segment builder and the Jinja form (run by transformers) refuse it alike
    t = get_template(name)
    for gen, conv in ((False, SYSTEM_CONV), (True, SYSTEM_CONV[:2])):
        with pytest.raises(TemplateError, match="no place for a system message"):
            t.segments(conv, gen)
        with pytest.raises(Exception, match="no place for a system message"):
            tokenizer.apply_chat_template(conv, chat_template=t.jinja_chat_template(), tokenize=False,
                                          add_generation_prompt=gen)
    # an empty system message loses nothing: the same text as without it, in both forms
    empty = [{"role": "system", "content": ""}, *SYSTEM_CONV[1:]]
    assert t.render(empty) == t.render(SYSTEM_CONV[1:])
    assert t.render(empty[:2], True) == tokenizer.apply_chat_template(  # self-instruct varies trained formats
        empty[:2], chat_template=t.jinja_chat_template(), tokenize=False, add_generation_prompt=True)


def test_data_render_and_convert_refuse_the_same_system_record_with_its_location(tmp_path, capsys):
    from camelid.cli import main

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"id": "pirate", "messages": SYSTEM_CONV}) + "\n", encoding="utf-8")
    for argv in (["data", "convert", str(path), str(tmp_path / "out.json"), "--to", "alpaca"],
                 ["data", "render", str(path), "--template", "alpaca", "--no-color"]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code != 0 and "Traceback" not in out + err, argv
        assert str(path) in err and "system" in err, (argv, err)
    assert not (tmp_path / "out.json").exists()
