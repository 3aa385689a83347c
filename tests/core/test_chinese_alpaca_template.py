"""The chinese_alpaca template against Chinese-LLaMA-Alpaca's own training code, token for token."""

from __future__ import annotations

import pytest

from camelid.core.templates import get_template
from camelid.core.tokenize import IGNORE_INDEX, encode

# ymcui/Chinese-LLaMA-Alpaca scripts/training/build_dataset.py (main branch): PROMPT_TEMPLATE and the body of
# build_instruction_dataset's `tokenization`, reproduced literally for one record (torch tensors as lists).
PROMPT_TEMPLATE = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response: "
    )


def chinese_llama_alpaca_tokenization(tokenizer, instruction: str, input: str, output: str,
                                      max_seq_length: int = 512) -> tuple[list[int], list[int]]:
    prompt = PROMPT_TEMPLATE
    if input is not None and input != "":
        instruction = instruction + '\n' + input
    source = prompt.format_map({'instruction': instruction})
    target = f"{output}{tokenizer.eos_token}"
    s = tokenizer([source], return_attention_mask=False)['input_ids'][0]
    t = tokenizer([target], return_attention_mask=False, add_special_tokens=False)['input_ids'][0]
    input_ids = (s + t)[:max_seq_length]
    labels = ([IGNORE_INDEX] * len(s) + t)[:max_seq_length]
    return input_ids, labels


RECORDS = [("把下面的句子翻译成英文。", "今天天气很好，我们去公园散步吧。", "The weather is nice today; let's take a walk in the park."),
           ("写一句关于春天的诗。", "", "春风拂面柳丝长，桃花含笑映池塘。"),
           ("What is 2 + 3?", "", "5."),
           ("判断这条评价的情感倾向。", "物流太慢了，等了一个星期。", "负面")]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir

    return AutoTokenizer.from_pretrained(embedded_hf_dir())


@pytest.mark.parametrize("instruction,inp,output", RECORDS, ids=["with-input", "no-input", "english", "short"])
def test_chinese_alpaca_encodes_exactly_as_chinese_llama_alpaca_trains(tokenizer, instruction, inp, output):
    t = get_template("chinese_alpaca", None, tokenizer.bos_token, tokenizer.eos_token)
    msgs = [{"role": "user", "content": instruction, "input": inp}, {"role": "assistant", "content": output}]
    assert encode(tokenizer, t, msgs) == chinese_llama_alpaca_tokenization(tokenizer, instruction, inp, output)


def test_chinese_alpaca_renders_the_reference_prompt_and_its_generation_prompt():
    t = get_template("chinese_alpaca", eos_token="</s>")
    msgs = [{"role": "user", "content": "写一句问候语。", "input": "给老师"}, {"role": "assistant", "content": "老师好！"}]
    source = PROMPT_TEMPLATE.format_map({"instruction": "写一句问候语。\n给老师"})
    assert t.render(msgs) == source + "老师好！</s>"
    assert t.render(msgs[:1], add_generation_prompt=True) == source
