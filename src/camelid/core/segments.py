"""The types every chat template is made of: a `Template` turns `messages` into `Segment`s (text, or the tokenizer's
BOS/EOS token, each knowing the assistant turn it belongs to); `trained` says which carry loss. The shipped
templates themselves are declared in templates.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from camelid.core import jinja
from camelid.core.jinja import TemplateError

Mask = Literal["assistant", "last", "all"]
MASKS: tuple[str, ...] = ("assistant", "last", "all")


@dataclass(frozen=True)
class Segment:
    text: str  # for kind "bos"/"eos" the text is empty; the tokenizer's token is used
    kind: Literal["text", "bos", "eos"] = "text"
    turn: int | None = None  # index into messages of the assistant turn this belongs to


def user_text(m: dict) -> str:
    """The user's text as a chat template sees it (Alpaca's `input` appended after a blank line)."""
    extra = m.get("input") or ""
    return m["content"] + ("\n\n" + extra if extra else "")


def check_roles(messages: list[dict], name: str) -> None:
    roles = [m.get("role") for m in messages if m.get("role") != "system"]
    for i, r in enumerate(roles):
        want = "user" if i % 2 == 0 else "assistant"
        if r != want:
            raise TemplateError(f"template {name!r}: turn {i} has role {r!r}, expected {want!r} (roles must alternate "
                                "user/assistant, starting with user)")


def split_system(messages: list[dict], default: str) -> tuple[str, list[dict]]:
    if messages and messages[0].get("role") == "system":
        return messages[0]["content"], messages[1:]
    return default, messages


@dataclass(frozen=True)
class Template:
    """A named prompt format. `build` returns segments; `stop` lists extra stop strings for generation."""

    name: str
    build: Callable[["Template", list[dict], bool], list[Segment]] = field(repr=False)
    stop: tuple[str, ...] = ()
    system: str = ""
    end_token: str | None = None  # what an "eos" segment means when not the tokenizer's EOS (ChatML's <|im_end|>)
    chat_template: str | None = field(default=None, repr=False)  # Jinja source for name == "tokenizer"
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    seed: int = 0  # self-instruct: picks each example's prompt format (see self_instruct_format)
    jinja: str | None = field(default=None, repr=False)  # the same format as a Jinja chat_template (EOS: eos_token)
    ollama: Callable[[str, str], str] | None = field(default=None, repr=False)  # (bos, eos) -> Ollama Go template

    def segments(self, messages: list[dict], add_generation_prompt: bool = False) -> list[Segment]:
        if not messages:
            raise TemplateError("no messages to render")
        return self.build(self, list(messages), add_generation_prompt)

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               bos_token: str | None = None, eos_token: str | None = None) -> str:
        """The exact text the model sees, with BOS/EOS written as the tokenizer's token strings."""
        bos, eos = bos_token or self.bos_token, self.end_token or eos_token or self.eos_token
        return "".join(bos if s.kind == "bos" else eos if s.kind == "eos" else s.text
                       for s in self.segments(messages, add_generation_prompt))

    def stop_strings(self, eos_token: str | None = None) -> list[str]:
        """Strings that end a generation besides the EOS id (text backends need the EOS string too)."""
        out = [self.end_token or eos_token or self.eos_token, *self.stop]
        return list(dict.fromkeys(s for s in out if s))

    def jinja_chat_template(self) -> str:
        """This format as a Jinja chat_template (a tokenizer's own for `tokenizer`)."""
        source = self.chat_template if self.name == "tokenizer" else self.jinja
        if not source:
            raise TemplateError(f"template {self.name!r} has no Jinja chat_template form here")
        return source

    def ollama_template(self, bos: str, eos: str) -> str | None:
        """The Go template Ollama renders `.Messages` with; None when Ollama should read the GGUF's chat_template."""
        return self.ollama(bos, eos) if self.ollama is not None else None

    def default_system(self) -> str:
        """The system prompt this template writes when a conversation has none ("" when it writes none): a shipped
        template's own, or what a tokenizer's Jinja injects (SmolLM's "You are a helpful AI assistant named
        SmolLM..."), found by rendering the same conversation with a marker system message and without one."""
        if self.name != "tokenizer" or not self.chat_template:
            return self.system
        marker, user = "\x00camelid-system\x00", {"role": "user", "content": "\x00camelid-probe\x00"}
        render = jinja_renderer(self.chat_template, self.bos_token, self.eos_token)
        try:
            without = render([user], True)
            marked = render([{"role": "system", "content": marker}, user], True)
        except TemplateError:
            return ""
        if marker not in marked:
            return ""
        pre, post = marked.split(marker, 1)
        if without.startswith(pre) and without.endswith(post) and len(without) >= len(pre) + len(post):
            return without[len(pre):len(without) - len(post)]
        return ""


def trained(segments: list[Segment], mask: Mask = "assistant") -> list[bool]:
    """Which segments carry loss. EOS of a trained turn is always trained."""
    if mask not in MASKS:
        raise TemplateError(f"unknown mask {mask!r}; choose one of {', '.join(MASKS)}")
    turns = [s.turn for s in segments if s.turn is not None]
    last = max(turns) if turns else None
    if mask == "all":
        return [True] * len(segments)
    if mask == "last":
        return [s.turn is not None and s.turn == last for s in segments]
    return [s.turn is not None for s in segments]


def jinja_renderer(source: str, bos: str, eos: str) -> Callable[[list[dict], bool], str]:
    """(messages, add_generation_prompt) -> text, exactly as transformers' apply_chat_template renders it."""
    return jinja.renderer(source, bos, eos)


def merge_segments(segs: list[Segment]) -> list[Segment]:
    """Join neighbouring text segments of the same turn (fewer, longer pieces tokenize more naturally)."""
    out: list[Segment] = []
    for s in segs:
        if out and s.kind == "text" and out[-1].kind == "text" and out[-1].turn == s.turn:
            out[-1] = Segment(out[-1].text + s.text, "text", s.turn)
        elif s.kind != "text" or s.text:
            out.append(s)
    return out
