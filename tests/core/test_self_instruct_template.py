"""The `self-instruct` template: randomized prompt formats, deterministic per (seed, example), EOS trained."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from camelid.core.templates import SELF_INSTRUCT_FORMATS, TemplateError, get_template, self_instruct_format
from camelid.core.tokenize import IGNORE_INDEX, encode


def example(i: int, with_input: bool) -> list[dict]:
    user = {"role": "user", "content": f"Sort the numbers in ascending order ({i})."}
    if with_input:
        user["input"] = f"{i + 3}, {i + 1}, {i + 2}"
    return [user, {"role": "assistant", "content": f"{i + 1}, {i + 2}, {i + 3}"}]


EXAMPLES = [example(i, i % 2 == 0) for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir

    return AutoTokenizer.from_pretrained(embedded_hf_dir())


def test_format_is_a_function_of_seed_and_example_only():
    first = [self_instruct_format(m, seed=1) for m in EXAMPLES]
    shuffled = list(range(len(EXAMPLES)))
    random.Random(0).shuffle(shuffled)
    assert [self_instruct_format(EXAMPLES[i], seed=1) for i in shuffled] == [first[i] for i in shuffled]
    other = [self_instruct_format(m, seed=2) for m in EXAMPLES]
    assert other != first and sum(a != b for a, b in zip(first, other)) > len(EXAMPLES) // 2
    t1, t1_again = get_template("self-instruct", seed=1), get_template("self-instruct", seed=1)
    assert [t1.render(m) for m in EXAMPLES] == [t1_again.render(m) for m in EXAMPLES]
    assert get_template("self-instruct").seed == 0 and get_template("vicuna_v1.1", seed=5).seed == 0


def test_every_format_is_used_over_many_examples():
    used = Counter(self_instruct_format(m, seed=0) for m in EXAMPLES)
    assert set(used) == set(SELF_INSTRUCT_FORMATS)
    assert all(k.startswith("input/") for k in (self_instruct_format(m) for m in EXAMPLES[::2]))
    assert all(k.startswith("no_input/") for k in (self_instruct_format(m) for m in EXAMPLES[1::2]))
    prompts = {f[0] for f in SELF_INSTRUCT_FORMATS.values()}
    assert any(p.startswith("Task: ") for p in prompts) and any("Input: " in p for p in prompts)
    assert any(p.endswith("Output:") for p in prompts) and any(p.endswith("\n\n") for p in prompts)


def test_render_is_the_recorded_format_with_eos():
    t = get_template("self-instruct", seed=7, eos_token="<|im_end|>")
    for m in EXAMPLES[:50]:
        prompt, completion = SELF_INSTRUCT_FORMATS[self_instruct_format(m, seed=7)]
        user = m[0]
        want = (prompt.format(instruction=user["content"], input=user.get("input", ""))
                + completion.format(output=m[1]["content"]) + "<|im_end|>")
        assert t.render(m, eos_token="<|im_end|>") == want


def test_generation_uses_the_canonical_format_for_every_seed():
    for seed in (0, 1, 99):
        t = get_template("self-instruct", seed=seed)
        with_input = [{"role": "user", "content": " Translate to Korean. ", "input": "Good morning"}]
        want = "Translate to Korean.\n\nInput: Good morning\n\nOutput:"
        assert t.render(with_input, add_generation_prompt=True) == want
        assert t.render([{"role": "user", "content": "Name a color."}], True) == "Name a color.\n\nOutput:"
        assert self_instruct_format(with_input, seed) == "input/0"


def test_more_than_one_exchange_is_refused():
    with pytest.raises(TemplateError, match="self-instruct"):
        get_template("self-instruct").render(EXAMPLES[0] + EXAMPLES[1])


def test_labels_train_exactly_the_output_and_eos(tokenizer):
    t = get_template("self-instruct", seed=3, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    seen = set()
    for m in EXAMPLES[:120]:
        fid = self_instruct_format(m, seed=3)
        seen.add(fid)
        ids, labels = encode(tokenizer, t, m)
        assert len(ids) == len(labels)
        first = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
        assert all(x == IGNORE_INDEX for x in labels[:first])
        assert labels[first:] == ids[first:]  # everything after the prompt is trained
        assert ids[-1] == tokenizer.eos_token_id  # EOS trained
        completion = SELF_INSTRUCT_FORMATS[fid][1].format(output=m[1]["content"])
        assert tokenizer.decode(ids[first:-1]) == completion
        prompt = SELF_INSTRUCT_FORMATS[fid][0].format(instruction=m[0]["content"], input=m[0].get("input", ""))
        assert tokenizer.decode(ids[:first]) == prompt
    assert len(seen) >= 12  # most formats exercised through the tokenizer too
