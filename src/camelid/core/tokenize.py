"""Tokenizing a chat with a template: segment by segment, so labels need no offset guessing.

Training and transformers inference both call `encode`, so the prompt a model is served with is token for
token the prompt it was trained on.
"""

from __future__ import annotations

from camelid.core import jinja
from camelid.core.segments import Mask, Template, TemplateError, trained

IGNORE_INDEX = -100


def special_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before any text on its own (Llama's BOS; nothing for GPT-2 style BPE)."""
    with_special = tokenizer("a", add_special_tokens=True).input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    n = len(with_special) - len(plain)
    return list(with_special[:n]) if n > 0 and with_special[n:] == plain else []


def end_token_id(tokenizer, template: Template) -> int:
    """The id an "eos" segment stands for: the template's own end token, else the tokenizer's EOS."""
    if template.end_token:
        tid = tokenizer.convert_tokens_to_ids(template.end_token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise TemplateError(f"template {template.name!r} ends turns with {template.end_token!r}, which is not a "
                                "token of this tokenizer (choose another --template)")
        return tid
    if tokenizer.eos_token_id is None:
        raise TemplateError("the tokenizer has no EOS token: generation could never stop (set one, or see "
                            "`camelid model check`)")
    return tokenizer.eos_token_id


def encode(tokenizer, template: Template, messages: list[dict], mask: Mask = "assistant",
           add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) by tokenizing each segment on its own; untrained positions get -100.

    Training and transformers inference both call this, so the prompt a model is served with is token for
    token the prompt it was trained on."""
    segs = template.segments(messages, add_generation_prompt)
    flags = trained(segs, mask)
    if whole_text(template):
        return _encode_whole(tokenizer, template, segs, flags)
    ids = special_prefix(tokenizer) if segs[0].kind != "bos" else []
    labels = [IGNORE_INDEX] * len(ids)
    eos = None
    for seg, train in zip(segs, flags):
        if seg.kind == "text":
            toks = tokenizer(seg.text, add_special_tokens=False).input_ids
        elif seg.kind == "bos":
            if tokenizer.bos_token_id is None:
                raise TemplateError(f"template {template.name!r} needs a BOS token; the tokenizer has none")
            toks = [tokenizer.bos_token_id]
        else:
            eos = end_token_id(tokenizer, template) if eos is None else eos
            toks = [eos]
        ids += toks
        labels += toks if train else [IGNORE_INDEX] * len(toks)
    return ids, labels


def whole_text(template: Template) -> bool:
    """A `{% generation %}` chat_template is tokenized as transformers does: the whole text at once, no special
    tokens added (the template writes its own BOS)."""
    return template.name == "tokenizer" and jinja.has_generation_tag(template.chat_template or "")


def _encode_whole(tokenizer, template: Template, segs, flags) -> tuple[list[int], list[int]]:
    """A `{% generation %}` chat_template: the whole text tokenized at once and a token trained when it overlaps a
    trained span, exactly as transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)` does (a
    token straddling a span's edge, such as " Hello" after "Assistant:", is trained)."""
    eos = template.end_token or tokenizer.eos_token or template.eos_token
    bos = tokenizer.bos_token or template.bos_token
    pieces = [bos if s.kind == "bos" else eos if s.kind == "eos" else s.text for s in segs]
    enc = tokenizer("".join(pieces), add_special_tokens=False)
    ids = list(enc.input_ids)
    labels = [IGNORE_INDEX] * len(ids)
    pos = 0
    for piece, train in zip(pieces, flags):
        if train and piece:
            first, last = enc.char_to_token(pos), enc.char_to_token(pos + len(piece) - 1)
            if first is not None:
                stop = last + 1 if last is not None else len(ids)
                labels[first:stop] = ids[first:stop]
        pos += len(piece)
    return ids, labels
