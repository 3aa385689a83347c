"""The Ollama Modelfile prompts the model as transformers does (issue 16, item 9): its TEMPLATE rendered by Go's
text/template with Ollama's message handling (tests/modelfiles/ollama_render.go) equals `apply_chat_template`.

Needs the Go toolchain (`apt-get install golang-go`); skips cleanly without it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from camelid.core.templates import TEMPLATES, get_template
from camelid.modelfiles.gguf import modelfile

GO = shutil.which("go")
pytestmark = pytest.mark.skipif(GO is None, reason="the Go toolchain is not installed (apt-get install golang-go)")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of Italy?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about llamas."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "한국어로 대답해 주세요."}],
    [{"role": "user", "content": "Quote: \"{{ .Content }}\" & <tags>"}],
]


@pytest.fixture(scope="module")
def ollama_render(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("go") / "ollama_render"
    subprocess.run([GO, "build", "-o", str(out), str(Path(__file__).with_name("ollama_render.go"))], check=True,
                   capture_output=True, env={**os.environ, "GO111MODULE": "off"})
    return out


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from camelid.models.checkpoint import embedded_hf_dir

    return AutoTokenizer.from_pretrained(embedded_hf_dir())


def _parse(text: str) -> tuple[str, str]:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return (template.group(1) if template else ""), (system.group(1) if system else "")


def _go(binary: Path, template: str, system: str, messages: list[dict]) -> str:
    proc = subprocess.run([str(binary)], input=json.dumps({"template": template, "system": system,
                                                           "messages": messages}),
                          capture_output=True, text=True, check=True)
    return proc.stdout


def test_the_models_own_template_in_ollama_keeps_its_default_system_prompt(ollama_render, tok):
    t = get_template("tokenizer", tok.chat_template, tok.bos_token, tok.eos_token)
    template, system = _parse(modelfile("m.gguf", t, tok.bos_token, tok.eos_token))
    assert template and system.startswith("You are a helpful AI assistant named SmolLM")
    for conv in CONVERSATIONS:
        want = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert _go(ollama_render, template, system, conv) == want, conv


@pytest.mark.parametrize("name", ["chatml", "vicuna_v1.1", "llama-2", "alpaca"])
def test_each_shipped_templates_ollama_form_renders_its_jinja_form(ollama_render, tok, name):
    t = get_template(name)
    template, system = _parse(modelfile("m.gguf", t, "<s>", "</s>"))
    checked = 0
    for conv in CONVERSATIONS:
        if name == "alpaca" and (len(conv) > 1):
            continue  # one instruction, no system message
        want = tok.apply_chat_template(conv, chat_template=TEMPLATES[name].jinja_chat_template(), tokenize=False,
                                       add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        assert _go(ollama_render, template, system, conv) == want, conv
        checked += 1
    assert checked >= 1
