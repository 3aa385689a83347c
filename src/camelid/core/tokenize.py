"""Tokenizing a chat with a template: segment by segment, so labels need no offset guessing.

Training and transformers inference both call `encode`, so the prompt a model is served with is token for
token the prompt it was trained on.
"""

from __future__ import annotations

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
