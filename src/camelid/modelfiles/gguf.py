"""`camelid export --gguf`: a trained run as a GGUF file for llama.cpp, and as an Ollama Modelfile beside it.

GGUF (Llama 2/3, Mistral, SmolLM2, Qwen2/2.5/3, Gemma 2/3, Phi-3; see gguf_arch.py for what differs per
architecture): a converter written on the `gguf` package and its tensor-name maps, following llama.cpp's
`convert_hf_to_gguf.py`; tensors are bit-identical to its output (tests/modelfiles/test_gguf_archs.py):
- Llama/Mistral Q/K projections are permuted from the Hugging Face rotary layout (two halves) back to Meta's interleaved
  pairs (`permute`); without this llama.cpp runs but the model speaks garbage.
- hyperparameters come from config.json (heads, KV heads, RMS eps, rope theta and linear/llama3/yarn/longrope
  scaling, Gemma's soft-capping and sliding window); Gemma's norms store 1 + weight.
- the tokenizer: GPT-2 byte-level BPE (tokens, merges, token types: special added tokens are CONTROL so the
  chat markers parse as one token) with `tokenizer.ggml.pre` found the way llama.cpp does (the hash of a
  fixed text's token ids), or SentencePiece (`tokenizer.model`, scores and types) for Llama-2 style models.
- `tokenizer.chat_template` is the template the run was trained with (each shipped template declares its
  Jinja form beside its segment builder in `core/templates.py`; the tests check they render the same); when the template ends turns with a
  token other than EOS (ChatML's `<|im_end|>`) it is also written as the end-of-turn token.
Tensors are converted and written one at a time (header first, then data), so memory stays near one tensor
(an adapter run is merged first, which holds the model once). The Ollama Modelfile is written beside the GGUF
as NAME.Modelfile (FROM ./NAME.gguf, TEMPLATE in Go syntax as each template declares it, SYSTEM, PARAMETER stop).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from camelid.core.cli import console
from camelid.core.io import CamelidError, clean_stale_temps, file_mode, read_json, write_text
from camelid.core.templates import Template, TemplateError, get_template
from camelid.core.tokenize import special_prefix
from camelid.modelfiles import gguf_arch
from camelid.modelfiles.delta import Checkpoint
from camelid.modelfiles.merge import merge_adapter
from camelid.models.checkpoint import load_tokenizer, resolve, template_name

OutType = Literal["f32", "f16", "q8_0"]
OUTTYPES: tuple[str, ...] = ("f16", "f32", "q8_0")
ARCHITECTURES = tuple(gguf_arch.ARCHITECTURES)


# ---------------------------------------------------------------------------------------------- Ollama


def modelfile(gguf_name: str, template: Template | None, bos: str, eos: str) -> str:
    """An Ollama Modelfile: FROM the GGUF beside it, TEMPLATE, SYSTEM (the default one) and every stop string."""
    lines = [f"# Ollama Modelfile written by camelid export (template: {template.name if template else 'none'})",
             f"# ollama create NAME -f {gguf_name.rsplit('.', 1)[0]}.Modelfile", f"FROM ./{gguf_name}"]
    if template is not None:
        go = template.ollama_template(bos, eos)
        if go is None:
            lines.append("# TEMPLATE left out: Ollama reads the GGUF's tokenizer.chat_template")
        else:
            lines.append(f'TEMPLATE """{go}"""')
        system = template.default_system()  # a tokenizer's Jinja may inject one (SmolLM's): Ollama must too
        if system:
            lines.append(f'SYSTEM """{system}"""')
        lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in template.stop_strings(eos)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- GGUF: tokenizer


# llama.cpp names a BPE pre-tokenizer by the sha256 of the token ids of this text (convert_hf_to_gguf.py)
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple "
          "emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
          "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
          "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
          "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
          "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
          "'D you like some tea? We'Ve a'lL")
PRE_TOKENIZERS = {  # the Llama-architecture families among llama.cpp's table
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}


def pre_tokenizer(tokenizer, fallback_dirs: list[Path] = ()) -> str:
    """llama.cpp's name for the BPE pre-tokenizer; an extended vocabulary falls back to its base tokenizer's."""
    from transformers import AutoTokenizer

    for i in range(len(fallback_dirs) + 1):
        try:
            tok = tokenizer if i == 0 else AutoTokenizer.from_pretrained(fallback_dirs[i - 1])
        except (OSError, ValueError):
            continue
        name = PRE_TOKENIZERS.get(hashlib.sha256(str(tok.encode(CHKTXT)).encode()).hexdigest())
        if name:
            return name
    raise CamelidError(f"{getattr(tokenizer, 'name_or_path', '?')}: BPE pre-tokenizer not recognised (not one of "
                       f"{', '.join(sorted(set(PRE_TOKENIZERS.values())))}); use llama.cpp's convert_hf_to_gguf.py")


def _tokenizer_kv(w, tok, tok_dir: Path, base_dirs: list[Path], n_vocab: int) -> None:
    """Write the tokenizer keys from the tokenizer's files and the loaded transformers tokenizer `tok`."""
    import gguf

    tj = read_json(tok_dir / "tokenizer.json") if (tok_dir / "tokenizer.json").is_file() else {}
    model = tj.get("model", {})
    spm = next((d / "tokenizer.model" for d in [tok_dir, *base_dirs] if (d / "tokenizer.model").is_file()), None)
    scores: list[float] | None = None
    merges: list[str] = []
    if model.get("type") == "BPE" and not model.get("byte_fallback") and tj.get("decoder", {}).get("type") == "ByteLevel":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_tokenizer(tok, [d for d in base_dirs if d != tok_dir]))
        vocab = {i: t for t, i in model["vocab"].items()}
        types = dict.fromkeys(vocab, gguf.TokenType.NORMAL)
        for a in tj.get("added_tokens", []):
            vocab[a["id"]] = a["content"]
            types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
        tokens = [vocab.get(i, f"[PAD{i}]") for i in range(max(vocab) + 1)]
        toktypes = [types.get(i, gguf.TokenType.UNUSED) for i in range(len(tokens))]
        for m in model.get("merges", []):  # "a b" or ["a", "b"] (spaces inside a piece encoded as in gguf-py)
            merges.append(m if isinstance(m, str) else " ".join("".join(chr(ord(c) + 256) if c == " " else c
                                                                        for c in part) for part in m))
    elif spm is not None or model.get("byte_fallback"):
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        if spm is not None:  # the SentencePiece model itself: its scores and piece types
            entries = list(gguf.SentencePieceVocab(spm.parent).all_tokens())
            tokens = [t.decode("utf-8") for t, _, _ in entries]
            scores = [s for _, s, _ in entries]
            toktypes = [int(k) for _, _, k in entries]
        else:
            tokens, scores, toktypes = _spm_from_bpe(model)
        for a in sorted(tj.get("added_tokens", []), key=lambda a: a["id"]):  # transformers-added tokens
            kind = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
            if a["id"] < len(tokens):
                if tokens[a["id"]] == a["content"] and a.get("special"):
                    toktypes[a["id"]] = kind
                continue
            while len(tokens) < a["id"]:
                tokens.append(f"[PAD{len(tokens)}]")
                scores.append(-1000.0)
                toktypes.append(gguf.TokenType.UNUSED)
            tokens.append(a["content"])
            scores.append(-1000.0)
            toktypes.append(kind)
        w.add_add_space_prefix(_spm_space_prefix(tj, spm))
    else:
        raise CamelidError(f"{tok_dir}: tokenizer type {model.get('type')!r} is not supported for GGUF export "
                           "(GPT-2 BPE or SentencePiece); use llama.cpp's convert_hf_to_gguf.py")
    if len(tokens) > n_vocab:
        raise CamelidError(f"{tok_dir}: the tokenizer has {len(tokens)} tokens but the model's embeddings only "
                           f"{n_vocab} rows (resize the embeddings when adding tokens)")
    while len(tokens) < n_vocab:  # embedding rows past the tokenizer (padded vocab sizes)
        tokens.append(f"[PAD{len(tokens)}]")
        toktypes.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    if scores is not None:
        w.add_token_scores(scores)
    if merges:
        w.add_token_merges(merges)
    for key, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id),
                     ("pad", tok.pad_token_id)):
        if tid is not None:
            getattr(w, f"add_{key}_token_id")(tid)
    w.add_add_bos_token(bool(special_prefix(tok)))
    w.add_add_eos_token(False)


def _spm_from_bpe(model: dict) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style vocab from a byte-fallback BPE tokenizer.json (Llama 2 saved without tokenizer.model).

    llama.cpp's SPM tokenizer merges the adjacent pair whose joined piece has the highest score, so a piece
    scores minus the rank of the first merge that makes it: the same order as the BPE merges."""
    import gguf

    vocab = {i: t for t, i in model["vocab"].items()}
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(max(vocab) + 1)]
    scores = [-float(rank[t]) if t in rank else 0.0 for t in tokens]
    unk = model.get("unk_token")
    toktypes = [gguf.TokenType.BYTE if len(t) == 6 and t.startswith("<0x") and t.endswith(">")
                else gguf.TokenType.UNKNOWN if t == unk else gguf.TokenType.NORMAL for t in tokens]
    return tokens, scores, [int(k) for k in toktypes]


def _spm_space_prefix(tj: dict, spm: Path | None) -> bool:
    """Does the tokenizer put "▁" before the text (SentencePiece's add_dummy_prefix)?"""
    if tj:
        text = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")])
        return '"Prepend"' in text or ('"Metaspace"' in text and '"never"' not in text)
    try:
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(spm.read_bytes())  # type: ignore[union-attr]
        return bool(proto.normalizer_spec.add_dummy_prefix)
    except Exception:  # protobuf missing or an unusual model file: llama's default
        return True


# ---------------------------------------------------------------------------------------------- GGUF: weights


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        hint = " (k-quants: export f16, then llama.cpp's llama-quantize)" if outtype.lower().startswith("q") else ""
        raise CamelidError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}{hint}")


def check_exportable(ckpt: Path, outtype: str) -> tuple[dict, object]:
    """Refuse what GGUF export cannot write, from config.json alone (an adapter's base has the same one), before
    any expensive step: an unknown --outtype, an architecture or rope scaling this converter does not handle.
    Returns (config, gguf.MODEL_ARCH)."""
    check_outtype(outtype)
    cfg = read_json(ckpt / "config.json")
    arch = gguf_arch.architecture(ckpt, cfg)
    gguf_arch.check_rope(ckpt, cfg)
    return cfg, arch


def write_gguf(ckpt: Path, out: Path, outtype: OutType = "f16", template: Template | None = None,
               tok_dir: Path | None = None, base_dirs: list[Path] | None = None, name: str | None = None,
               tokenizer=None) -> Path:
    """Convert a safetensors checkpoint of a supported architecture to one GGUF file (atomically)."""
    import gguf
    import numpy as np
    import torch

    cfg, arch = check_exportable(ckpt, outtype)
    n_layer = cfg["num_hidden_layers"]
    tok_dir = tok_dir or ckpt
    ckpt_tensors = Checkpoint(ckpt)
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    n_rows = gguf_arch.vocab_rows(arch, tok_dir, cfg["vocab_size"])
    plan = []  # (source name, gguf name, shape, quantization type)
    for src in ckpt_tensors.names():
        if gguf_arch.skip(arch, src, cfg):
            continue
        dst = tmap.get_name(src, try_suffixes=(".weight", ".bias"))
        if dst is None:
            raise CamelidError(f"{ckpt}: tensor {src!r} has no GGUF name for the {gguf.MODEL_ARCH_NAMES[arch]} "
                               "architecture")
        shape = list(ckpt_tensors.info(src)[1])
        if dst == "token_embd.weight":
            shape[0] = min(shape[0], n_rows)
        plan.append((src, dst, tuple(shape), gguf_arch.tensor_type(outtype, dst, len(shape), shape)))
    tied = cfg.get("tie_word_embeddings") or arch == gguf.MODEL_ARCH.GEMMA2
    if not any(dst == "output.weight" for _, dst, _, _ in plan) and not tied:
        raise CamelidError(f"{ckpt}: no lm_head.weight and tie_word_embeddings is false")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, file_mode(out))  # mkstemp's 0600 would hide the GGUF from Ollama or a container
    os.close(fd)
    tmp = Path(tmp)
    try:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        w.add_type("model")
        w.add_name(name or ckpt.name)
        gguf_arch.hparams(w, arch, cfg, n_layer)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
        if outtype == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        extra = gguf_arch.extra_tensors(w, arch, cfg)
        tok = tokenizer or load_tokenizer(tok_dir)
        _tokenizer_kv(w, tok, tok_dir, base_dirs or [], n_rows)
        if template is not None:
            try:
                w.add_chat_template(template.jinja_chat_template())
            except TemplateError as e:
                console.print(f"[yellow]warning:[/] {e}; the GGUF carries no chat_template")
            w.add_string("camelid.template", template.name)
            if template.end_token:
                end = tok.convert_tokens_to_ids(template.end_token)
                if end is not None and end != tok.unk_token_id and end != tok.eos_token_id:
                    w.add_eot_token_id(end)
        for src, dst, shape, q in plan:
            if q == gguf.GGMLQuantizationType.Q8_0:
                w.add_tensor_info(dst, gguf.quant_shape_to_byte_shape(shape, q), np.dtype(np.uint8),
                                  int(np.prod(gguf.quant_shape_to_byte_shape(shape, q))), raw_dtype=q)
            else:
                dt = np.float32 if q == gguf.GGMLQuantizationType.F32 else np.float16
                w.add_tensor_info(dst, shape, np.dtype(dt), int(np.prod(shape)) * np.dtype(dt).itemsize)
        for dst, arr in extra:
            w.add_tensor_info(dst, arr.shape, arr.dtype, arr.nbytes)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for src, dst, shape, q in plan:
            t = ckpt_tensors.get(src)
            if t.dtype not in (torch.float16, torch.float32):  # bf16: computed in f32, as the converter does
                t = t.to(torch.float32)
            t = gguf_arch.transform(arch, src, t, cfg, n_rows)
            if q == gguf.GGMLQuantizationType.F16:
                arr = t.to(torch.float16).numpy()
            else:
                arr = t.to(torch.float32).numpy()
                if q == gguf.GGMLQuantizationType.Q8_0:
                    arr = gguf.quants.quantize(arr, q)
            w.write_tensor_data(np.ascontiguousarray(arr))
            del t, arr
        for _, arr in extra:
            w.write_tensor_data(arr)
        w.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def export_gguf(source: str | os.PathLike, out: str | os.PathLike | None = None, outtype: OutType = "f16",
                template: str | None = None, force: bool = False) -> Path:
    """A run dir, adapter, checkpoint or `embedded` -> FILE.gguf plus an Ollama Modelfile beside it.

    Adapters are merged first (into a temp directory that is removed afterwards). The chat template is
    `template` when given, else the run's (camelid.json), else the tokenizer's own chat_template."""
    check_outtype(outtype)  # before resolving (the embedded base may be built) and before any merge
    ckpt = resolve(source)
    check_exportable(ckpt.base, outtype)
    name = ckpt.name
    if out is None:  # inside a camelid run directory, else the working directory
        out = (ckpt.own if ckpt.run is not None else Path.cwd()) / f"{name}.{outtype}.gguf"
    out = Path(out)
    if out.suffix != ".gguf":
        raise CamelidError(f"{out}: the output file name must end in .gguf")
    if out.exists() and not force:
        raise CamelidError(f"{out}: already exists (pass --force to replace it)")
    tok_dir = ckpt.tokenizer_dir
    tok = load_tokenizer(tok_dir)
    tname = template_name(template, ckpt.run, tok.chat_template)
    tmpl = get_template(tname, tok.chat_template, tok.bos_token, tok.eos_token) if tname else None
    base_dirs = ckpt.base_dirs()
    weights = ckpt.base
    merged = out.parent / f".{out.stem}.merged-{os.getpid()}"
    try:
        if ckpt.adapter is not None:
            weights = merge_adapter(ckpt.adapter, merged)
        write_gguf(weights, out, outtype, tmpl, tok_dir=tok_dir, base_dirs=base_dirs, name=name, tokenizer=tok)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    write_text(out.with_suffix(".Modelfile"), modelfile(out.name, tmpl, tok.bos_token or "", tok.eos_token or ""))
    return out

