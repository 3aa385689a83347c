"""`camelid tokenizer ...`: extend a tokenizer's vocabulary for a new language and measure what it saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from camelid.core.cli import console
from camelid.core.io import CamelidError
from camelid.data.texts import read_texts
from camelid.models.checkpoint import load_tokenizer, tokenizer_dir
from camelid.train.vocab import EXTENSION_FILE, charset, extend_tokenizer, token_stats

app = typer.Typer(no_args_is_help=True)


@app.command()
def extend(
    corpus: Annotated[list[Path], typer.Option("--corpus", help="Text file, or dataset (Alpaca / ShareGPT / OpenAI "
                                               "messages / {text} JSON or JSONL) whose text fields are used. Repeat.")],
    add: Annotated[int, typer.Option("--add", help="Most new tokens to add (fewer when no pair is frequent enough).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the extended tokenizer.")],
    base: Annotated[str, typer.Option("--base", help="Model spec whose tokenizer is extended: embedded | hf:PATH.")]
    = "embedded",
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Merge pairs seen at least this often.")] = 2,
    charsets: Annotated[Optional[list[str]], typer.Option(
        "--charset", help="Also make every common character of a script one token: hangul (KS X 1001, 2,350) or "
        "hanzi (GB 2312 level 1, 3,755). Repeat for both.")] = None,
) -> None:
    """Add the pieces a corpus needs to a byte-level BPE tokenizer: old ids and English tokenization unchanged."""
    coverage = "".join(charset(c) for c in charsets or [])
    tok = extend_tokenizer(base, list(corpus), add, output, min_frequency=min_frequency, coverage=coverage)
    info = json.loads((output / EXTENSION_FILE).read_text(encoding="utf-8"))
    console.print(f"added {info['added_tokens']} tokens ({info['base_vocab_size']} -> {len(tok)}) from "
                  f"{info['words']} distinct words; saved to {output}")
    print(json.dumps(info, ensure_ascii=False, indent=2))


@app.command()
def stats(
    file: Annotated[Path, typer.Argument(help="Text file or dataset to measure.")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Extended tokenizer directory.")],
    base: Annotated[Optional[str], typer.Option("--base", help="Model spec to compare with (default: the base "
                                                "recorded in the tokenizer's vocab_extension.json, else embedded).")]
    = None,
) -> None:
    """Tokens per character and per word of a text, before (base) and after (extended)."""
    if not tokenizer.is_dir():
        raise CamelidError(f"{tokenizer}: no such tokenizer directory")
    ext = tokenizer / EXTENSION_FILE
    if base is None:
        base = json.loads(ext.read_text(encoding="utf-8"))["base"] if ext.is_file() else "embedded"
    text = "\n".join(read_texts(file))
    before = token_stats(load_tokenizer(tokenizer_dir(base)), text)
    after = token_stats(load_tokenizer(tokenizer_dir(str(tokenizer))), text)
    result = {"file": str(file), "base": base, "tokenizer": str(tokenizer), "before": before, "after": after,
              "token_ratio": after["tokens"] / max(before["tokens"], 1)}
    table = Table("", "tokens", "tokens/char", "tokens/word")
    for name, s in (("base", before), ("extended", after)):
        table.add_row(name, str(s["tokens"]), f"{s['tokens_per_char']:.3f}", f"{s['tokens_per_word']:.3f}")
    console.print(table)
    console.print(f"{result['token_ratio']:.1%} of the base tokens ({before['chars']} characters, "
                  f"{before['words']} words)")
    print(json.dumps(result, ensure_ascii=False, indent=2))
