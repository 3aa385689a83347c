"""Chat templates render as transformers renders them, and `{% generation %}` spans are its assistant mask.

The reference is transformers itself: `apply_chat_template` (text, ids and `return_assistant_tokens_mask`) and the
environment of its compiled template (issue 16, items 2, 3 and 5)."""

from __future__ import annotations

import random

import pytest

from camelid.core import jinja
from camelid.core.templates import TEMPLATES, TemplateError, get_template
from camelid.core.tokenize import IGNORE_INDEX, encode

pytest.importorskip("transformers")

# ChatML with the reply (and its end marker) inside {% generation %}, as current models' templates write it
CHATML_GEN = ("{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
              "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
              "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
              "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# the tag around the reply only, the end marker left untrained (transformers then masks the marker out too)
CONTENT_GEN = ("{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}{{ 'Assistant: ' }}"
               "{%- generation -%}{{ message['content'] }}{%- endgeneration -%}{{ eos_token + '\\n' }}"
               "{%- else -%}{{ message['role'] | capitalize + ': ' + message['content'] + '\\n' }}{%- endif -%}"
               "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}")
# a Tulu/OLMo style one: system default, whitespace control, generation with eos_token inside
TULU_GEN = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] "
            "+ '\\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
            "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}{% generation %}"
            "{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}{% endif %}"
            "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}")

# templates exercising what transformers' environment has and plain Jinja lacks or does differently
FEATURES = {
    "tojson": "{% for m in messages %}{{ m | tojson }}{{ m['content'] | tojson(indent=2) }}{% endfor %}",
    "tojson_opts": "{{ messages | tojson(separators=(',', ':'), sort_keys=true) }}",
    "strftime": "{{ strftime_now('%Y') }}|{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "loopcontrols": ("{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
                     "{{ m['content'] }}{% if loop.index > 3 %}{% break %}{% endif %}{% endfor %}"),
    "trim_lstrip": ("{% for m in messages %}\n    {% if m['role'] == 'user' %}\n[{{ m['content'] }}]\n"
                    "    {% endif %}\n{% endfor %}\n"),
    "namespace_dict": ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
                       "{{ ns.n }}{{ dict(a=1) | tojson }}{{ dict.fromkeys(['x']) | tojson }}"),
    "tokens": "{{ bos_token }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}",
    "tools_none": "{% if tools is none and documents is none %}none{% endif %}",
}
TEXTS = ["Hello", "<b>bold</b> & 'quotes' \"double\"", "한국어 문장입니다.", "tabs\tand\nnewlines\n", "  spaced  ",
         "emoji 🦙 and \\ backslash", "{{ not jinja }}", "<|im_end|> inside", ""]


def _conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        conv = [{"role": "system", "content": rnd.choice(TEXTS)}] if rnd.random() < 0.3 else []
        for _ in range(rnd.randint(1, 3)):
            conv += [{"role": "user", "content": rnd.choice(TEXTS[:-1])},
                     {"role": "assistant", "content": rnd.choice(TEXTS[:-1]) + rnd.choice(TEXTS)}]
        out.append(conv if rnd.random() < 0.7 else conv[:-1])
    return out


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir

    return AutoTokenizer.from_pretrained(embedded_hf_dir())


def test_the_environment_is_transformers_own(tok):
    from transformers.utils.chat_template_utils import _compile_jinja_template

    theirs = _compile_jinja_template("x").environment
    ours = jinja.compile_template("x").environment
    assert (ours.trim_blocks, ours.lstrip_blocks, ours.autoescape) == (theirs.trim_blocks, theirs.lstrip_blocks,
                                                                       theirs.autoescape)
    assert type(ours) is type(theirs)
    assert {e.rsplit(".", 1)[-1] for e in ours.extensions} - {"_Generation"} == \
        {e.rsplit(".", 1)[-1] for e in theirs.extensions} - {"AssistantTracker"}
    assert set(ours.globals) == set(theirs.globals) and set(ours.filters) == set(theirs.filters)
    assert ours.filters["tojson"]({"a": "<&>'"}) == theirs.filters["tojson"]({"a": "<&>'"}) == '{"a": "<&>\'"}'


SOURCES = {**FEATURES, "chatml_gen": CHATML_GEN, "content_gen": CONTENT_GEN, "tulu_gen": TULU_GEN,
           "smollm": None, **{f"shipped:{k}": t.jinja for k, t in TEMPLATES.items()}}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_template_renders_what_apply_chat_template_renders(tok, name):
    source = SOURCES[name]
    if name == "smollm":
        source = tok.chat_template
    n = 0
    for conv in _conversations(60, seed=len(name)):
        for gen in (False, True):
            try:
                want = tok.apply_chat_template(conv, chat_template=source, tokenize=False, add_generation_prompt=gen)
            except Exception as e:  # the template refuses this conversation: so must we
                with pytest.raises(TemplateError):
                    jinja.render(source, conv, gen, bos_token=tok.bos_token, eos_token=tok.eos_token)
                assert type(e).__name__ in ("TemplateError", "UndefinedError", "TypeError"), e
                continue
            got, _ = jinja.render(source, conv, gen, bos_token=tok.bos_token, eos_token=tok.eos_token)
            assert got == want, (name, conv, gen)
            n += 1
    assert n >= 60


def test_the_models_own_template_renders_what_apply_chat_template_renders(tok):
    for conv in _conversations(100, seed=7):
        for gen in (False, True):
            want = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert jinja.render(tok.chat_template, conv, gen, bos_token=tok.bos_token,
                                eos_token=tok.eos_token)[0] == want


def test_raise_exception_in_a_template_is_a_one_line_error_as_in_transformers(tok):
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    conv = [{"role": "assistant", "content": "hi"}]
    with pytest.raises(Exception, match="first must be user"):
        tok.apply_chat_template(conv, chat_template=source, tokenize=False)
    with pytest.raises(TemplateError, match="chat_template: first must be user"):
        jinja.render(source, conv)


def _mask_conversations() -> list[list[dict]]:
    convs = [c for c in _conversations(80, seed=3) if c[-1]["role"] == "assistant"]
    convs.append([{"role": "user", "content": "Quote the end marker."},
                  {"role": "assistant", "content": "It is <|im_end|> and more after it."}])
    return convs


@pytest.mark.parametrize("source", [CHATML_GEN, CONTENT_GEN, TULU_GEN], ids=["chatml", "content_only", "tulu"])
def test_generation_spans_train_exactly_transformers_assistant_tokens_mask(tok, source):
    t = get_template("tokenizer", source, tok.bos_token, tok.eos_token)
    compared = 0
    for conv in _mask_conversations():
        ref = tok.apply_chat_template(conv, chat_template=source, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, labels = encode(tok, t, conv)
        assert ids == list(ref["input_ids"]), conv
        assert [int(label != IGNORE_INDEX) for label in labels] == list(ref["assistant_masks"]), conv
        compared += 1
    assert compared >= 50


def test_a_literal_end_marker_in_a_reply_does_not_stop_training_with_the_models_template(tok):
    # reference: the model's own template with its replies wrapped in {% generation %} (reply + <|im_end|>),
    # masked by transformers; before issue 16 the reply stopped training at the quoted marker
    own = tok.chat_template
    wrapped = own.replace("{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
                          "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}"
                          "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}"
                          "{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}")
    assert wrapped != own
    conv = [{"role": "user", "content": "Show the ChatML end marker."},
            {"role": "assistant", "content": "Write <|im_end|> to end a turn; then the next one starts."},
            {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "<|im_end|> again <|im_end|>"}]
    ref = tok.apply_chat_template(conv, chat_template=wrapped, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    for name in ("tokenizer", "chatml"):
        t = get_template(name, own, tok.bos_token, tok.eos_token)
        ids, labels = encode(tok, t, conv)
        if name == "tokenizer":
            assert ids == list(ref["input_ids"])
            assert [int(label != IGNORE_INDEX) for label in labels] == list(ref["assistant_masks"])
        trained = tok.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
        assert trained == ("Write <|im_end|> to end a turn; then the next one starts.<|im_end|>"
                           "<|im_end|> again <|im_end|><|im_end|>")


def test_a_generation_template_with_a_syntax_error_names_its_line():
    with pytest.raises(TemplateError, match="line 2"):
        jinja.render("{% for m in messages %}\n{% generation %}{{ m }}{% endfor %}", [])


def test_a_generation_template_trains_through_the_data_pipeline_with_no_mismatch(tok):
    from camelid.data.examples import build_examples

    t = get_template("tokenizer", TULU_GEN, tok.bos_token, tok.eos_token)
    convs = [{"id": f"r{i}", "messages": c} for i, c in enumerate(_mask_conversations()[:20])]
    examples, stats = build_examples(convs, tok, t, max_length=4096)
    assert stats.tokenization_mismatch == 0 and stats.kept == len(examples) == 20
    for ex, conv in zip(examples, convs):
        ref = tok.apply_chat_template(conv["messages"], chat_template=TULU_GEN, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert ex.input_ids == list(ref["input_ids"])
        assert [int(label != IGNORE_INDEX) for label in ex.labels] == list(ref["assistant_masks"])
