"""Prompt and chat templates: the one source of truth for training, chat, serve and eval.

A template turns `messages` ([{"role": "system"|"user"|"assistant", "content": str}]) into a list of
`Segment`s. Each segment is text, or the tokenizer's BOS/EOS *token* (never the literal characters, so
`</s>` means the real EOS id as it does for Llama), and knows which assistant turn it belongs to. Training
tokenizes segment by segment to build labels (no offset guessing); inference joins them into a string.

An Alpaca-style user message may carry an extra `input` field (Stanford's instruction/input split); every
other template sees `content + "\\n\\n" + input` via `user_text`.

Each shipped template is declared once, in TEMPLATES: its segment builder, the same format as a Jinja
chat_template (written into tokenizers and GGUF files) and as an Ollama Go template, side by side. Adding a
template is adding one entry there (the types live in segments.py, tokenizing in tokenize.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable

from camelid.core import jinja
from camelid.core.segments import (MASKS, Mask, Segment, Template, TemplateError, check_roles, jinja_renderer,
                                   merge_segments, split_system, trained, user_text)

__all__ = ["MASKS", "Mask", "Segment", "Template", "TemplateError", "TEMPLATES", "TEMPLATE_NAMES", "get_template",
           "jinja_chat_template", "jinja_renderer", "self_instruct_format", "trained", "user_text"]


# ------------------------------------------------------------------------------------------- Jinja / Ollama parts
# Each template below is declared once: its segment builder (what training and inference tokenize), the same
# format as a Jinja chat_template (written into tokenizers and GGUF files) and as an Ollama Go template. The
# Jinja forms are checked against the builders, byte for byte, in tests/modelfiles/test_export.py.


def _lit(s: str) -> str:
    """A Jinja string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _go(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


_USER = "(message['content'] + ('\\n\\n' + message['input'] if message['input'] is defined and message['input'] " \
        "else ''))"
_SYSTEM = "{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else DEFAULT -%}"
# the Jinja form of _no_system (transformers' raise_exception): a template with no place for a system message
_NO_SYSTEM = ("{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] -%}"
              "{{ raise_exception('this chat template has no place for a system message') }}{%- endif -%}")
_GO_ROLES = '{{ range .Messages }}{{ if eq .Role "user" }}%s{{ else if eq .Role "assistant" }}%s{{ end }}{{ end }}'
_GO_SYSTEM = ('{{ $system := %s }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}'
              '{{ end }}')


# ------------------------------------------------------------------------------------------- Alpaca


ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
# KULLM's Korean Alpaca template (nlpai-lab/KULLM templates/kullm.json).
ALPACA_KO_PROMPT_INPUT = (
    "아래는 작업을 설명하는 명령어와 추가 컨텍스트를 제공하는 입력이 짝을 이루는 예제입니다. "
    "요청을 적절히 완료하는 응답을 작성하세요.\n\n### 명령어:\n{instruction}\n\n### 입력:\n{input}\n\n### 응답:\n"
)
ALPACA_KO_PROMPT_NO_INPUT = (
    "아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요.\n\n"
    "### 명령어:\n{instruction}\n\n### 응답:\n"
)

# Chinese-LLaMA-Alpaca's training prompt (ymcui/Chinese-LLaMA-Alpaca scripts/training/build_dataset.py): Stanford's
# no-input prompt for every record, the input appended to the instruction after a newline, "### Response: " ending in
# a space; it has no Chinese system prompt (its v2 moved to the Llama-2 chat format).
CHINESE_ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n{input}\n\n### Response: "
)
CHINESE_ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response: "
)


def _no_system(messages: list[dict], name: str) -> list[dict]:
    """The messages of a template whose prompt has no place for a system message (Stanford's Alpaca, KULLM's,
    Self-Instruct's): refused, never dropped, as `data convert --to alpaca` refuses it. An empty one loses nothing."""
    if messages and messages[0].get("role") == "system":
        if messages[0].get("content"):
            raise TemplateError(f"template {name!r} has no place for a system message (its prompt is fixed, as "
                                "`data convert --to alpaca` says too): remove it, or choose vicuna_v1.1, llama-2, "
                                "chatml or tokenizer")
        return messages[1:]
    return messages


def _alpaca_builder(with_input: str, without_input: str) -> Callable:
    def build(t: Template, messages: list[dict], gen: bool) -> list[Segment]:
        msgs = _no_system(messages, t.name)
        check_roles(msgs, t.name)
        if len(msgs) > 2:
            raise TemplateError(f"template {t.name!r} holds one instruction and one response; this conversation has "
                                f"{len(msgs)} messages (use vicuna_v1.1, chatml or tokenizer for multi-turn data)")
        user = msgs[0]
        inp = user.get("input") or ""
        prompt = (with_input if inp else without_input).format(instruction=user["content"], input=inp)
        segs = [Segment(prompt)]
        if len(msgs) == 2:
            turn = len(messages) - 1
            segs += [Segment(msgs[1]["content"], turn=turn), Segment("", "eos", turn=turn)]
        return segs

    return build


# ------------------------------------------------------------------------------------------- Vicuna


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def _vicuna(t: Template, messages: list[dict], gen: bool) -> list[Segment]:
    # FastChat SeparatorStyle.ADD_COLON_TWO, sep=" ", sep2="</s>": "SYS USER: u ASSISTANT: a</s>USER: ..."
    system, msgs = split_system(messages, t.system)
    check_roles(msgs, t.name)
    offset = len(messages) - len(msgs)
    segs = [Segment(system + " ")]
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            segs.append(Segment("USER: " + user_text(m) + " "))
        else:
            segs += [Segment("ASSISTANT:"), Segment(" " + m["content"], turn=offset + i),
                     Segment("", "eos", turn=offset + i)]
    if gen:
        segs.append(Segment("ASSISTANT:"))
    return merge_segments(segs)


# ------------------------------------------------------------------------------------------- Llama 2


def _llama2(t: Template, messages: list[dict], gen: bool) -> list[Segment]:
    # Meta's format: <s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] {user} [/INST]
    system, msgs = split_system(messages, t.system)
    check_roles(msgs, t.name)
    offset = len(messages) - len(msgs)
    segs: list[Segment] = []
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            text = user_text(m).strip()
            if i == 0 and system:
                text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
            segs += [Segment("", "bos"), Segment(f"[INST] {text} [/INST]")]
        else:
            segs += [Segment(f" {m['content'].strip()} ", turn=offset + i), Segment("", "eos", turn=offset + i)]
    return merge_segments(segs)


# ------------------------------------------------------------------------------------------- ChatML


def _chatml(t: Template, messages: list[dict], gen: bool) -> list[Segment]:
    system, msgs = split_system(messages, t.system)
    check_roles(msgs, t.name)
    offset = len(messages) - len(msgs)
    segs = [Segment(f"<|im_start|>system\n{system}<|im_end|>\n")] if system else []
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            segs.append(Segment(f"<|im_start|>user\n{user_text(m)}<|im_end|>\n"))
        else:
            segs += [Segment("<|im_start|>assistant\n"), Segment(m["content"], turn=offset + i),
                     Segment("", "eos", turn=offset + i), Segment("\n")]
    if gen:
        segs.append(Segment("<|im_start|>assistant\n"))
    return merge_segments(segs)


# ------------------------------------------------------------------------------------------- Jinja


def _jinja(t: Template, messages: list[dict], gen: bool) -> list[Segment]:
    """The tokenizer's own chat_template, rendered as transformers renders it. Its `{% generation %}` spans, when it
    has them, are the assistant turns (transformers' assistant mask); otherwise turns are found by rendering
    growing prefixes."""
    if not t.chat_template:
        raise TemplateError("template 'tokenizer' needs a tokenizer with a chat_template")
    msgs = [{"role": m["role"], "content": user_text(m) if m["role"] == "user" else m["content"]} for m in messages]
    if msgs[0]["role"] != "system":
        check_roles(msgs, t.name)
    else:
        check_roles(msgs[1:], t.name)
    if jinja.has_generation_tag(t.chat_template):
        return _jinja_generation(t, msgs, gen)
    render = jinja_renderer(t.chat_template, t.bos_token, t.eos_token)
    segs: list[Segment] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render(msgs[:i], True)
        full = render(msgs[: i + 1], False)
        if not before.startswith(done) or not full.startswith(before):
            raise TemplateError("the tokenizer's chat_template does not render conversations as growing prefixes; "
                                "choose an explicit --template")
        segs.append(Segment(before[len(done):]))
        piece = full[len(before):]
        # the EOS the template writes AFTER the reply: an end marker quoted inside the reply is reply text
        at = piece.find(m["content"]) if m["content"] else -1
        end = piece.find(t.eos_token, at + len(m["content"]) if at >= 0 else 0) if t.eos_token else -1
        if at < 0 and end >= 0:  # the template rewrote the reply (e.g. trimmed it): its EOS is the last one
            end = piece.rfind(t.eos_token)
        if end >= 0:  # train through the EOS the template writes; what follows it is never generated
            segs += [Segment(piece[:end], turn=i), Segment("", "eos", turn=i)]
            if piece[end + len(t.eos_token):]:
                segs.append(Segment(piece[end + len(t.eos_token):]))
        else:  # the template writes no EOS: train one anyway so that generation stops
            segs += [Segment(piece, turn=i), Segment("", "eos", turn=i)]
        done = full
    final = render(msgs, gen) if msgs[-1]["role"] != "assistant" or gen else done
    if not final.startswith(done):
        raise TemplateError("the tokenizer's chat_template does not render conversations as growing prefixes")
    if final[len(done):]:
        segs.append(Segment(final[len(done):]))
    return merge_segments(segs)


def _jinja_generation(t: Template, msgs: list[dict], gen: bool) -> list[Segment]:
    """Segments from one rendering: each `{% generation %}` span is the next assistant turn, trained exactly as
    transformers' `return_assistant_tokens_mask` marks it (a span ending in EOS gets the EOS token)."""
    text, spans = jinja.render(t.chat_template, msgs, gen, bos_token=t.bos_token, eos_token=t.eos_token)
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    spans = [(a, b) for a, b in spans if b > a]
    if len(spans) != len(turns):
        raise TemplateError(f"the chat_template's {{% generation %}} blocks rendered {len(spans)} span(s) for "
                            f"{len(turns)} assistant message(s); cannot tell which text is each reply")
    segs: list[Segment] = []
    pos = 0
    for (a, b), turn in zip(spans, turns):
        segs.append(Segment(text[pos:a]))
        body = text[a:b]
        if t.eos_token and body.endswith(t.eos_token):
            segs += [Segment(body[: -len(t.eos_token)], turn=turn), Segment("", "eos", turn=turn)]
        else:
            segs.append(Segment(body, turn=turn))
        pos = b
    segs.append(Segment(text[pos:]))
    return merge_segments(segs)


# ------------------------------------------------------------------------------------------- Self-Instruct


# Self-Instruct (Wang et al., 2022) fine-tuned GPT-3 on each example written in one of several prompt formats
# picked at random, so the model follows an instruction however it is laid out: with or without a "Task:" prefix,
# an "Input:" label and an "Output:" cue, one or two newlines between parts. Here the pick is a hash of (seed,
# example), so every run and process trains on the same text, and `self_instruct_format` tells the trainer which
# format each example got. Generation (no answer yet) always uses the canonical format, "input/0" / "no_input/0":
#     "{instruction}\n\nInput: {input}\n\nOutput:"  and  "{instruction}\n\nOutput:"  (the answer follows a space).
SELF_INSTRUCT_FORMATS: dict[str, tuple[str, str]] = {  # id -> (prompt, trained completion; EOS follows it)
    "input/0": ("{instruction}\n\nInput: {input}\n\nOutput:", " {output}"),
    "input/1": ("{instruction}\nInput: {input}\nOutput:", " {output}"),
    "input/2": ("Task: {instruction}\nInput: {input}\nOutput:", " {output}"),
    "input/3": ("Task: {instruction}\n\nInput: {input}\n\nOutput:", " {output}"),
    "input/4": ("{instruction}\n\n{input}\n\nOutput:", " {output}"),
    "input/5": ("{instruction}\n\n{input}\n\n", "{output}"),
    "input/6": ("{instruction}\n{input}\n\n", "{output}"),
    "input/7": ("Task: {instruction}\n\n{input}\n\n", "{output}"),
    "no_input/0": ("{instruction}\n\nOutput:", " {output}"),
    "no_input/1": ("{instruction} Output:", " {output}"),
    "no_input/2": ("{instruction}\nOutput:", " {output}"),
    "no_input/3": ("Task: {instruction}\nOutput:", " {output}"),
    "no_input/4": ("{instruction}\n", "{output}"),
    "no_input/5": ("{instruction}\n\n", "{output}"),
    "no_input/6": ("Task: {instruction}\n\n", "{output}"),
}


def _self_instruct_parts(messages: list[dict]) -> tuple[str, str, str | None]:
    """(instruction, input, output or None), stripped as Self-Instruct's encode_instance strips them."""
    msgs = _no_system(messages, "self-instruct")
    check_roles(msgs, "self-instruct")
    if len(msgs) > 2:
        raise TemplateError(f"template 'self-instruct' holds one instruction and one output; this conversation has "
                            f"{len(msgs)} messages")
    user = msgs[0]
    output = msgs[1]["content"].strip() if len(msgs) == 2 else None
    return user["content"].strip(), (user.get("input") or "").strip(), output


def self_instruct_format(messages: list[dict], seed: int = 0) -> str:
    """The id (a key of SELF_INSTRUCT_FORMATS) of the format `messages` is written in by template 'self-instruct'.

    A function of (seed, instruction, input, output) alone: the same in every run, process and data order. A prompt
    without an answer (generation) gets the canonical format."""
    instruction, inp, output = _self_instruct_parts(messages)
    kind = "input" if inp else "no_input"
    if output is None:
        return f"{kind}/0"
    ids = [k for k in SELF_INSTRUCT_FORMATS if k.split("/")[0] == kind]
    key = json.dumps([seed, instruction, inp, output], ensure_ascii=False).encode()
    return ids[int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % len(ids)]


def _self_instruct(t: Template, messages: list[dict], gen: bool) -> list[Segment]:
    instruction, inp, output = _self_instruct_parts(messages)
    prompt, completion = SELF_INSTRUCT_FORMATS[self_instruct_format(messages, t.seed)]
    segs = [Segment(prompt.format(instruction=instruction, input=inp))]
    if output is not None:
        turn = len(messages) - 1
        segs += [Segment(completion.format(output=output), turn=turn), Segment("", "eos", turn=turn)]
    return segs


# ------------------------------------------------------------------------------------------- lookup


def _alpaca_jinja(with_input: str, without_input: str) -> str:
    a, rest = with_input.split("{instruction}")
    b, c = rest.split("{input}")
    d, e = without_input.split("{instruction}")
    return (_NO_SYSTEM + "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
            "{%- if message['input'] is defined and message['input'] -%}"
            f"{{{{ {_lit(a)} + message['content'] + {_lit(b)} + message['input'] + {_lit(c)} }}}}"
            f"{{%- else -%}}{{{{ {_lit(d)} + message['content'] + {_lit(e)} }}}}{{%- endif -%}}"
            "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}"
            "{%- endif -%}{%- endfor -%}")


def _alpaca_ollama(without_input: str) -> Callable[[str, str], str]:
    return lambda bos, eos: _GO_ROLES % (without_input.replace("{instruction}", "{{ .Content }}"),
                                         "{{ .Content }}" + eos)


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template("alpaca", _alpaca_builder(ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT),
                 stop=("### Instruction:", "### Response:"),
                 jinja=_alpaca_jinja(ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT),
                 ollama=_alpaca_ollama(ALPACA_PROMPT_NO_INPUT)),
        Template("alpaca_ko", _alpaca_builder(ALPACA_KO_PROMPT_INPUT, ALPACA_KO_PROMPT_NO_INPUT),
                 stop=("### 명령어:", "### 응답:"),
                 jinja=_alpaca_jinja(ALPACA_KO_PROMPT_INPUT, ALPACA_KO_PROMPT_NO_INPUT),
                 ollama=_alpaca_ollama(ALPACA_KO_PROMPT_NO_INPUT)),
        Template("chinese_alpaca", _alpaca_builder(CHINESE_ALPACA_PROMPT_INPUT, CHINESE_ALPACA_PROMPT_NO_INPUT),
                 stop=("### Instruction:", "### Response:"),
                 jinja=_alpaca_jinja(CHINESE_ALPACA_PROMPT_INPUT, CHINESE_ALPACA_PROMPT_NO_INPUT),
                 ollama=_alpaca_ollama(CHINESE_ALPACA_PROMPT_NO_INPUT)),
        Template("vicuna_v1.1", _vicuna, stop=("USER:",), system=VICUNA_SYSTEM,
                 jinja=(_SYSTEM.replace("DEFAULT", _lit(VICUNA_SYSTEM)) + "{{ system + ' ' }}"
                        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
                        f"{{{{ 'USER: ' + {_USER} + ' ' }}}}"
                        "{%- elif message['role'] == 'assistant' -%}"
                        "{{ 'ASSISTANT: ' + message['content'] + eos_token }}"
                        "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"),
                 ollama=lambda bos, eos: (_GO_SYSTEM % _go(VICUNA_SYSTEM) + "{{ $system }} "
                                          + _GO_ROLES % ("USER: {{ .Content }} ", "ASSISTANT: {{ .Content }}" + eos)
                                          + "ASSISTANT:")),
        Template("llama-2", _llama2, stop=("[INST]",),
                 jinja=(_SYSTEM.replace("DEFAULT", "''") + "{%- set ns = namespace(first=true) -%}"
                        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
                        f"{{%- set text = {_USER} | trim -%}}"
                        "{%- if ns.first and system -%}"
                        "{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}"
                        "{%- endif -%}{%- set ns.first = false -%}{{ bos_token + '[INST] ' + text + ' [/INST]' }}"
                        "{%- elif message['role'] == 'assistant' -%}"
                        "{{ ' ' + (message['content'] | trim) + ' ' + eos_token }}"
                        "{%- endif -%}{%- endfor -%}"),
                 ollama=lambda bos, eos: (_GO_SYSTEM % '""' + "{{ $first := true }}" + _GO_ROLES % (
                     bos + "[INST] {{ if and $first $system }}<<SYS>>\n{{ $system }}\n<</SYS>>\n\n{{ end }}"
                     "{{ .Content }} [/INST]{{ $first = false }}", " {{ .Content }} " + eos))),
        Template("chatml", _chatml, stop=("<|im_start|>",), end_token="<|im_end|>",
                 jinja=(_SYSTEM.replace("DEFAULT", "''") +
                        "{%- if system -%}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif -%}"
                        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
                        f"{{{{ '<|im_start|>user\\n' + {_USER} + '<|im_end|>\\n' }}}}"
                        "{%- elif message['role'] == 'assistant' -%}"
                        "{{ '<|im_start|>assistant\\n' + message['content'] + '<|im_end|>\\n' }}"
                        "{%- endif -%}{%- endfor -%}"
                        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"),
                 ollama=lambda bos, eos: (
                     '{{ range .Messages }}{{ if eq .Role "system" }}{{ if .Content }}<|im_start|>system\n'
                     '{{ .Content }}<|im_end|>\n{{ end }}{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                     '{{ end }}{{ end }}<|im_start|>assistant\n')),
        # self-instruct: the canonical (generation) format; training varied it per example
        Template("self-instruct", _self_instruct,
                 jinja=(_NO_SYSTEM + "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
                        "{%- set inp = (message['input'] if message['input'] is defined and message['input'] else '')"
                        " | trim -%}"
                        "{%- if inp -%}{{ (message['content'] | trim) + '\\n\\nInput: ' + inp + '\\n\\nOutput:' }}"
                        "{%- else -%}{{ (message['content'] | trim) + '\\n\\nOutput:' }}{%- endif -%}"
                        "{%- elif message['role'] == 'assistant' -%}{{ ' ' + (message['content'] | trim) + eos_token }}"
                        "{%- endif -%}{%- endfor -%}"),
                 ollama=lambda bos, eos: _GO_ROLES % ("{{ .Content }}\n\nOutput:", " {{ .Content }}" + eos)),
    ]
}


_CHATML_GO = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _renders_plain_chatml(t: Template) -> bool:
    """Whether a tokenizer's Jinja writes each message as `<|im_start|>ROLE\nCONTENT<|im_end|>\n` (after its default
    system message when none is given) and ends with the assistant cue: what _CHATML_GO renders in Ollama."""
    default = t.default_system()
    probes = [[{"role": "user", "content": "Hi"}],
              [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
              [{"role": "system", "content": ""}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
               {"role": "user", "content": "c"}]]
    render = jinja_renderer(t.chat_template or "", t.bos_token, t.eos_token)
    for msgs in probes:
        seen = msgs if msgs[0]["role"] == "system" or not default else [{"role": "system", "content": default}, *msgs]
        want = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in seen) + "<|im_start|>assistant\n"
        try:
            if render(msgs, True) != want:
                return False
        except TemplateError:
            return False
    return True


def jinja_chat_template(name: str) -> str:
    """A Jinja chat_template that renders exactly what the shipped template `name` renders (EOS via eos_token)."""
    if name not in TEMPLATES:
        raise TemplateError(f"template {name!r} has no Jinja chat_template form here")
    return TEMPLATES[name].jinja_chat_template()


TEMPLATE_NAMES: tuple[str, ...] = (*TEMPLATES, "tokenizer")


def get_template(name: str, chat_template: str | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, seed: int | None = None) -> Template:
    """A shipped template by name, or `tokenizer` built from a Jinja chat_template; token strings attached.
    `seed` picks self-instruct's per-example prompt formats (other templates ignore it)."""
    tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v}
    if seed is not None and name == "self-instruct":
        tokens["seed"] = seed
    if name == "tokenizer":
        if not chat_template:
            raise TemplateError("template 'tokenizer' needs a model whose tokenizer has a chat_template")
        t = Template("tokenizer", _jinja, chat_template=chat_template, **tokens)
        # a tokenizer's own Jinja that renders plain ChatML gets that Go form (Ollama cannot run Jinja)
        return _replace(t, ollama=lambda bos, eos: _CHATML_GO) if _renders_plain_chatml(t) else t
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    t = TEMPLATES[name]
    return _replace(t, **tokens) if tokens else t


def _replace(t: Template, **kw) -> Template:
    return dataclasses.replace(t, **kw)
