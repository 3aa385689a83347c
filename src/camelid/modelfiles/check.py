"""`camelid model check`: do the tokenizer, generation config and chat template agree on where a reply ends?

A model stops only when it emits a token its runtime treats as the end. Four places name that token, and every
disagreement between them makes generation run on past the answer (or stop at once):
- the *trained end*: what the model learned to emit after each reply. ChatML ends turns with `<|im_end|>`;
  camelid trains the tokenizer's EOS for the other templates; a model trained elsewhere (FastChat, Meta) with
  vicuna_v1.1 or llama-2 learned the literal `</s>` of those formats.
- the tokenizer's `eos_token` (what tools that read only the tokenizer stop on, and what `eos_token` means
  in the chat_template),
- generation_config.json's `eos_token_id` (transformers `generate`, vLLM and TGI stop on these ids; without
  the file, config.json's is used),
- the tokenizer's Jinja `chat_template` (how servers prompt the model: it must end assistant turns with
  the trained end, or every multi-turn prompt differs from training).
The trained end must also be one special token: if the tokenizer splits it into pieces the model never emits
a single stop id, and a non-special one leaks into the decoded text.

`--fix -o DIR` writes a corrected copy (weights hard-linked when the file system allows it, never modified):
tokenizer EOS set to the trained end (the old EOS stays a generation stop), generation_config's eos list and
pad id, the pad token when it is missing, and the chat_template replaced by the Jinja form of the trained
template. It then checks the copy. For GGUF files the check reads the metadata (gguf.GGUFReader); a GGUF is
fixed by exporting it again (`camelid export`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from camelid.core.io import CamelidError, atomic_dir, read_json, write_json
from camelid.core.templates import TEMPLATES, Template, TemplateError, get_template, jinja_renderer
from camelid.models.checkpoint import load_tokenizer, resolve, template_name, write_legacy_keys
from camelid.models.spec import embedded_gguf, parse_spec

# llama.cpp treats these token texts as end-of-generation even when no EOS/EOT id names them (llama-vocab.cpp)
LLAMA_CPP_EOG = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>",
                 "<｜end▁of▁sentence｜>", "<end_of_utterance>")
SAMPLE = [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
      {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}], True),
    ([{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}], False),
    ([{"role": "user", "content": "Name a color."}], True),
]


@dataclass
class Finding:
    level: Literal["error", "warning"]
    code: str
    message: str
    fixable: bool = False


@dataclass
class Report:
    spec: str
    format: str  # "transformers" | "gguf"
    tokens: dict[str, Any] = field(default_factory=dict)  # bos/eos/pad/unk -> {"token", "id"}
    generation_config: dict[str, Any] | None = None
    template: dict[str, Any] | None = None  # name, source, trained end token, stop strings
    chat_template: bool = False
    run: dict[str, Any] | None = None  # camelid.json
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: str, code: str, message: str, fixable: bool = False) -> None:
        self.findings.append(Finding(level, code, message, fixable))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def trained_end(template: Template, eos_token: str | None, camelid_run: bool) -> str | None:
    """The token the model learned to emit after each reply (see the module docstring)."""
    if template.end_token:
        return template.end_token
    if template.name in ("vicuna_v1.1", "llama-2") and not camelid_run:
        return TEMPLATES[template.name].eos_token  # the formats write a literal "</s>"
    return eos_token


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


# ---------------------------------------------------------------------------------------------- transformers


def _generation_config(own: Path, base: Path | None) -> tuple[dict, str]:
    for d in [own] + ([base] if base else []):
        if (d / "generation_config.json").is_file():
            return read_json(d / "generation_config.json"), str(d / "generation_config.json")
    for d in [own] + ([base] if base else []):
        if (d / "config.json").is_file():
            cfg = read_json(d / "config.json")
            return {k: cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}, str(d / "config.json")
    return {}, "none"


def _is_special(tok, text: str) -> bool:
    return text in tok.all_special_tokens or any(a.content == text and a.special
                                                 for a in tok.added_tokens_decoder.values())


def _renders(template: Template, chat_template: str, bos: str, eos: str) -> tuple[str | None, str | None]:
    """(first rendering that differs from the trained template, text after the sample's assistant reply)."""
    render = jinja_renderer(chat_template, bos, eos)
    differs, after = None, None
    for messages, gen in SAMPLE:
        try:
            want = template.render(messages, gen, bos, eos)
        except TemplateError:
            continue
        try:
            got = render(messages, gen)
        except Exception as e:  # a broken chat_template raises anything
            return f"chat_template fails to render: {e}", None
        if got != want and differs is None:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            differs = f"at character {i}: chat_template gives {got[i:i + 40]!r}, training saw {want[i:i + 40]!r}"
        if not gen and after is None:
            after = got[got.rfind("Blue.") + 5:] if "Blue." in got else ""
    return differs, after


def check_hf(spec: str, template: str | None = None) -> Report:
    ckpt = resolve(spec)
    own, base, run = ckpt.own, (ckpt.base if ckpt.adapter is not None else None), ckpt.run
    report = Report(spec, "transformers", run=run.to_dict() if run is not None else None)
    tok = load_tokenizer(ckpt.tokenizer_dir)
    for key in ("bos", "eos", "pad", "unk"):
        report.tokens[key] = {"token": getattr(tok, f"{key}_token"), "id": getattr(tok, f"{key}_token_id")}
    gen, gen_src = _generation_config(own, base)
    report.generation_config = {"source": gen_src, "eos_token_id": gen.get("eos_token_id"),
                                "pad_token_id": gen.get("pad_token_id")}
    report.chat_template = bool(tok.chat_template)
    name = template_name(template, run, tok.chat_template)
    if tok.eos_token is None:
        report.add("error", "no_eos", "the tokenizer has no EOS token: generation can only stop at max_tokens")
    if name is None:
        report.add("warning", "no_template", "no template known (no camelid.json, no chat_template): pass --template "
                   "to check the end of turn")
        return report
    tmpl = get_template(name, tok.chat_template, tok.bos_token, tok.eos_token)
    end = trained_end(tmpl, tok.eos_token, run is not None)
    source = "--template" if template else "camelid.json" if run is not None and run.template else "chat_template"
    report.template = {"name": name, "source": source, "end_token": end, "stop": tmpl.stop_strings(tok.eos_token)}
    if end is None:
        return report
    end_id = tok.convert_tokens_to_ids(end)
    single = end_id is not None and (end_id != tok.unk_token_id or end == tok.unk_token) and \
        tok(end, add_special_tokens=False).input_ids == [end_id]
    report.template["end_token_id"] = end_id if single else None
    if not single:
        pieces = tok(end, add_special_tokens=False).input_ids
        report.add("error", "end_not_a_token", f"template {name} ends replies with {end!r}, which this tokenizer splits "
                   f"into {len(pieces)} pieces {pieces}: no single stop id exists and the model cannot have learned "
                   "to stop (retrain with a template whose end token the tokenizer has, e.g. chatml or alpaca)")
        return report
    if not _is_special(tok, end):
        report.add("error", "end_not_special", f"{end!r} is a token but not a special one: decoding leaves it in the "
                   "reply text and chat_template parsing may split it", fixable=True)
    gen_eos = _ids(gen.get("eos_token_id"))
    if tok.eos_token != end:
        level = "warning" if end_id in gen_eos else "error"
        report.add(level, "eos_mismatch", f"template {name} ends replies with {end!r} (id {end_id}) but the tokenizer's "
                   f"EOS is {tok.eos_token!r} (id {tok.eos_token_id}): tools that stop on the tokenizer's EOS run on "
                   "past the answer", fixable=True)
    if end_id not in gen_eos:
        report.add("error", "generation_eos", f"{gen_src}: eos_token_id {gen.get('eos_token_id')} does not include "
                   f"{end!r} (id {end_id}): transformers generate, vLLM and TGI will not stop at the end of a reply",
                   fixable=True)
    if tok.pad_token is None:
        report.add("warning", "no_pad", "no pad token: batched generation and training collators need one (--fix uses "
                   "the unk token when there is one)", fixable=tok.unk_token is not None and tok.unk_token != end)
    elif tok.pad_token_id in {tok.eos_token_id, end_id}:
        report.add("warning", "pad_is_eos", f"the pad token {tok.pad_token!r} is also an end token: camelid's trainer is "
                   "fine with it (labels come from the template and the EOS is always trained), but collators that "
                   "build labels by masking pad ids (DataCollatorForLanguageModeling, many scripts) mask every EOS "
                   "too, and the model never learns to stop", fixable=tok.unk_token not in (None, end))
    if not tok.chat_template:
        report.add("warning", "no_chat_template", "the tokenizer has no chat_template: servers that format chats "
                   "with it (vLLM, TGI, transformers pipelines) cannot prompt the model as it was trained",
                   fixable=name in TEMPLATES)
        return report
    differs, after = _renders(tmpl, tok.chat_template, tok.bos_token or "", tok.eos_token or "")
    if after is not None and end not in after:
        report.add("error", "chat_template_end", f"the chat_template does not end assistant turns with {end!r} (after "
                   f"the reply it writes {after!r}): multi-turn prompts differ from training and the model's own "
                   "end token never appears in its history", fixable=name in TEMPLATES)
    elif differs and name != "tokenizer":
        report.add("warning", "chat_template_differs", f"the chat_template renders differently from template {name} "
                   f"used for training ({differs})", fixable=name in TEMPLATES)
    return report


# ---------------------------------------------------------------------------------------------- GGUF


def check_gguf(path: str | Path, template: str | None = None) -> Report:
    import gguf

    path = embedded_gguf() if str(path) == "embedded" else Path(path)
    if not path.is_file():
        raise CamelidError(f"{path}: no such GGUF file")
    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    tokens = value("tokenizer.ggml.tokens") or []
    types = value("tokenizer.ggml.token_type") or []
    report = Report(str(path), "gguf")
    for key, field_name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                            ("unk", "unknown_token_id"), ("eot", "eot_token_id")):
        tid = value(f"tokenizer.ggml.{field_name}")
        report.tokens[key] = {"token": tokens[tid] if tid is not None and tid < len(tokens) else None, "id": tid}
    chat_template = value("tokenizer.chat_template")
    report.chat_template = bool(chat_template)
    eos = report.tokens["eos"]["token"]
    if eos is None:
        report.add("error", "no_eos", "tokenizer.ggml.eos_token_id is missing: llama.cpp can only stop at max_tokens")
    name = template or value("camelid.template") or ("tokenizer" if chat_template else None)
    if name is None:
        report.add("warning", "no_template", "no template known (no chat_template in the metadata): pass --template")
        return report
    bos = report.tokens["bos"]["token"] or ""
    tmpl = get_template(name, chat_template, bos, eos)
    end = trained_end(tmpl, eos, True)
    report.template = {"name": name, "source": "--template" if template else "metadata", "end_token": end,
                       "stop": tmpl.stop_strings(eos)}
    if end is None:
        return report
    end_id = tokens.index(end) if end in tokens else None
    report.template["end_token_id"] = end_id
    if end_id is None:
        report.add("error", "end_not_a_token", f"{end!r} is not a token of this vocabulary: no single stop id exists")
        return report
    if end_id < len(types) and types[end_id] != gguf.TokenType.CONTROL:
        report.add("error", "end_not_special", f"{end!r} is not a control token: llama.cpp parses it as text and "
                   "prints it")
    eog = {report.tokens["eos"]["id"], report.tokens["eot"]["id"], value("tokenizer.ggml.eom_token_id")}
    if end_id not in eog and end not in LLAMA_CPP_EOG:
        report.add("error", "eos_mismatch", f"{end!r} (id {end_id}) is neither the EOS/EOT id nor a token llama.cpp "
                   "stops on by name: generation runs on past the answer")
    if not chat_template:
        report.add("warning", "no_chat_template", "no tokenizer.chat_template: llama.cpp's server and Ollama cannot "
                   "format chats as trained")
        return report
    differs, after = _renders(tmpl, chat_template, bos, eos or "")
    if after is not None and end not in after:
        report.add("error", "chat_template_end", f"the chat_template does not end assistant turns with {end!r}")
    elif differs and name != "tokenizer":
        report.add("warning", "chat_template_differs", f"the chat_template renders differently from template {name} "
                   f"({differs})")
    return report


# ---------------------------------------------------------------------------------------------- entry points


def check_model(spec: str, template: str | None = None) -> Report:
    """Check `embedded`, `gguf:PATH`, a .gguf path, `hf:PATH` or a directory."""
    kind = _kind(spec)
    if kind in ("embedded", "gguf"):
        return check_gguf(parse_spec(spec).target if kind == "gguf" else "embedded", template)
    if kind == "openai":
        raise CamelidError("model check reads tokenizer files: use a local hf:, gguf: or embedded model")
    return check_hf(spec, template)


def _kind(spec: str) -> str:
    """embedded | gguf | openai | hf: what `model check` reads (a path that is not a directory is hf's to refuse)."""
    kind, sep, _ = spec.partition(":")
    if spec == "embedded" or spec.endswith(".gguf") or (sep and kind == "gguf"):
        return "embedded" if spec == "embedded" else "gguf"
    return "openai" if sep and kind == "openai" else "hf"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fix_model(spec: str, out: str | Path, template: str | None = None, force: bool = False) -> tuple[Report, Report]:
    """Write a corrected copy of an hf: model to `out`; returns (report before, report of the copy)."""
    if _kind(spec) in ("embedded", "gguf"):
        raise CamelidError("--fix works on transformers checkpoints and runs; re-export a GGUF with camelid export")
    before = check_hf(spec, template)
    ckpt = resolve(spec)
    own, tok_dir, base = ckpt.own, ckpt.tokenizer_dir, (ckpt.base if ckpt.adapter is not None else None)
    out = Path(out)
    if out.resolve() == own.resolve() or own.resolve() in out.resolve().parents:
        raise CamelidError(f"{out}: --fix never writes in place; choose a directory outside {own}")
    codes = {f.code for f in before.findings if f.fixable}
    end = (before.template or {}).get("end_token")
    tok = load_tokenizer(tok_dir)
    with atomic_dir(out, force) as tmp:
        for f in own.iterdir():
            if f.is_file() and not f.name.startswith("."):
                (_link_or_copy if f.stat().st_size > 1 << 20 else shutil.copy2)(f, tmp / f.name)
        if "end_not_special" in codes:
            tok.add_special_tokens({"additional_special_tokens": [end]}, replace_extra_special_tokens=False)
        old_eos = tok.eos_token_id
        if "eos_mismatch" in codes:
            tok.eos_token = end
        if (tok.pad_token is None or tok.pad_token in (tok.eos_token, end)) and tok.unk_token not in (None, end,
                                                                                                    tok.eos_token):
            tok.pad_token = tok.unk_token  # Llama's choice: a token that never ends a reply
        name = (before.template or {}).get("name")
        if codes & {"chat_template_end", "chat_template_differs", "no_chat_template"} and name in TEMPLATES:
            tok.chat_template = TEMPLATES[name].jinja_chat_template()
        tok.save_pretrained(tmp)
        gen, _ = _generation_config(own, base)
        gen = {k: v for k, v in gen.items() if v is not None}
        end_id = tok.convert_tokens_to_ids(end) if end else None
        stops = [i for i in [end_id, tok.eos_token_id, *_ids(gen.get("eos_token_id")), old_eos] if i is not None]
        gen["eos_token_id"] = list(dict.fromkeys(stops)) if len(set(stops)) > 1 else stops[0] if stops else None
        if tok.pad_token_id is not None:
            gen["pad_token_id"] = tok.pad_token_id
        write_json(tmp / "generation_config.json", gen)
        if (tmp / "config.json").is_file():  # a copy (small files are copied, and write_json replaces the entry)
            cfg = read_json(tmp / "config.json")
            cfg.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            write_json(tmp / "config.json", cfg)
        write_legacy_keys(tmp)  # transformers 4.x reads the fixed copy too
    return before, check_hf(str(out), template)


def format_report(r: Report) -> str:
    """The report as text lines for the terminal."""
    def tok(k: str) -> str:
        t = r.tokens.get(k) or {}
        return f"{k} {t.get('token')!r} ({t.get('id')})" if t.get("id") is not None else f"{k} none"

    lines = [f"model: {r.spec} ({r.format})", "tokens: " + ", ".join(tok(k) for k in r.tokens)]
    if r.generation_config is not None:
        g = r.generation_config
        lines.append(f"generation_config: eos_token_id {g['eos_token_id']}, pad_token_id {g['pad_token_id']} "
                     f"(from {g['source']})")
    if r.template:
        t = r.template
        lines.append(f"template: {t['name']} (from {t['source']}); replies end with {t['end_token']!r} "
                     f"(id {t.get('end_token_id')}); stop strings {json.dumps(t['stop'], ensure_ascii=False)}")
    lines.append(f"chat_template: {'present' if r.chat_template else 'missing'}")
    if r.run is not None:
        lines.append("camelid.json: " + ", ".join(f"{k} {r.run[k]}" for k in ("template", "method", "base_model")
                                                  if k in r.run))
    for f in r.findings:
        lines.append(f"{f.level}: [{f.code}] {f.message}" + (" (--fix repairs this)" if f.fixable else ""))
    errors = sum(f.level == "error" for f in r.findings)
    warnings = len(r.findings) - errors
    lines.append(f"result: {'ok' if r.ok else 'problems found'} ({errors} error(s), {warnings} warning(s))")
    return "\n".join(lines)
