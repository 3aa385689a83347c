"""`camelid data ...`: dataset commands, each a thin layer over camelid.data (one section per command)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from camelid.core.cli import ColumnsOpt, console
from camelid.core.columns import using_columns
from camelid.core.io import check_input, refuse_overwrite, write_json
from camelid.core.templates import get_template
from camelid.data.clean import REASONS, clean_file, load_blocked_words, parse_langs
from camelid.data.dedup import check_threshold, dedup_file, rejected_path
from camelid.data.examples import render_file
from camelid.data.formats import convert as convert_file, plural, validate_file
from camelid.data.split import split_file
from camelid.data.stats import show as show_records, stats as compute

app = typer.Typer(no_args_is_help=True)

FORMAT_NAMES = "alpaca | seed-tasks | sharegpt | openai | mt-bench"
ForceOpt = Annotated[bool, typer.Option("--force", help="Write the output even when it is the input file itself "
                                        "(the input is replaced, atomically, once the result is complete).")]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", "-f", help=f"Input format ({FORMAT_NAMES}); default: detected from the first record.")]


# ---------------------------------------------------------------------------------------------- validate


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(
        help="Dataset files: JSON list or JSONL, Parquet, Arrow, CSV, a directory of them, a Hub dataset "
        "(hf://datasets/OWNER/NAME/SPLIT or OWNER/NAME:SPLIT).", show_default=False)],
    fmt: FormatOpt = None,
    columns: ColumnsOpt = None,
) -> None:
    """Check dataset files; print each problem as FILE:LINE: field 'x': message; exit 1 if any.

    Finds malformed JSON, non-UTF-8 bytes, empty files, wrong types, missing or empty fields, unknown roles.

    Conversations must alternate user/assistant (after an optional system message) and end with the assistant.

    Files are streamed: size does not matter.
    """
    with using_columns(columns):
        records = problems = 0
        for path in files:
            report = validate_file(path, fmt)
            for p in report.problems:
                print(p)
            if report.problem_count > len(report.problems):
                print(f"{path}: ... {plural(report.problem_count - len(report.problems), 'more problem')} not listed")
            print(report.summary())
            records += report.records
            problems += report.problem_count
        if len(files) > 1:
            state = "ok" if not problems else plural(problems, "problem")
            print(f"{len(files)} files, {plural(records, 'record')}: {state}")
        if problems:
            raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- convert


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(
        help="Input dataset (JSON/JSONL, Parquet, Arrow, CSV, a directory of them, a Hub id).", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="Output file: JSONL when it ends with .jsonl, else a JSON list.",
                                        show_default=False)],
    to: Annotated[str, typer.Option("--to", help="Output format: alpaca | sharegpt | openai.", show_default=False)],
    src_fmt: Annotated[Optional[str], typer.Option(
        "--from", help=f"Input format ({FORMAT_NAMES}); default: detected.")] = None,
    force: ForceOpt = False,
    columns: ColumnsOpt = None,
) -> None:
    """Convert a dataset between formats, atomically (nothing is written if a record fails).

    alpaca -> sharegpt|openai -> alpaca gives back identical rows (instruction/input split, extra keys).

    Multi-turn conversations cannot become alpaca rows; the first one is named.
    """
    with using_columns(columns):
        refuse_overwrite([src], dst, force)
        n = convert_file(src, dst, to, src_fmt)
        layout = "JSONL" if dst.suffix.lower() == ".jsonl" else "JSON list"
        console.print(f"wrote {n} records to {dst} ({to}, {layout})")


# ---------------------------------------------------------------------------------------------- stats


@app.command()
def stats(
    file: Annotated[Path, typer.Argument(
        help="Dataset (JSON/JSONL, Parquet, Arrow, CSV, a directory of them, a Hub id).", show_default=False)],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Also count tokens with this model's tokenizer (embedded | gguf:PATH | hf:PATH).",
    )] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write histograms to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    fmt: FormatOpt = None,
    columns: ColumnsOpt = None,
) -> None:
    """Count records, turns, lengths and duplicates of a dataset.

    Lengths are in words, and in tokens with --model.

    For generated data: Stanford's similarity scores, and why rows were rejected (<file>.rejected.jsonl).
    """
    with using_columns(columns):
        if plot:
            refuse_overwrite([file], plot)
        tokenizer = None
        if model:
            from camelid.models import load_model  # the model stack (~0.1 s to import): only with --model

            tokenizer = load_model(model, n_ctx=512)  # only its tokenizer is used
        try:
            result = compute(file, fmt, tokenizer=tokenizer, plot=plot)
        finally:
            if tokenizer is not None:
                tokenizer.close()
        if as_json:
            print(json.dumps(result, ensure_ascii=False, indent=2))
        else:
            _print_stats(result)
        if plot:
            console.print(f"wrote {plot}")


def _print_stats(s: dict) -> None:
    out = Console()
    head = Table(title=f"{s['file']} ({s['format']})", show_header=False)
    for key in ("records", "conversations", "messages", "turns", "system_messages", "empty_inputs"):
        if s[key] is not None:
            head.add_row(key.replace("_", " "), f"{s[key]:,}")
    head.add_row("duplicate conversations", f"{s['duplicates']['conversations']:,}")
    head.add_row("duplicate prompts", f"{s['duplicates']['prompts']:,}")
    out.print(head)
    cols = ("count", "min", "mean", "p50", "p90", "p99", "max")
    lengths = Table(title="lengths")
    lengths.add_column("series")
    for c in cols:
        lengths.add_column(c, justify="right")

    def row(name: str, d: dict) -> None:
        lengths.add_row(name, *(f"{d[c]:,.4g}" if isinstance(d.get(c), float) else f"{d.get(c, '')}" for c in cols))

    for measure in ("words", "tokens"):
        if s[measure]:
            for who, d in s[measure].items():
                row(f"{measure}: {who}", d)
    row("user turns per conversation", s["turns_per_conversation"])
    if s["similarity"]:
        row("avg_similarity_score", s["similarity"]["avg_similarity_score"])
        row("max similarity", s["similarity"]["max_similarity"])
    out.print(lengths)
    if s["rejected"]:
        rej = Table(title=f"rejected: {s['rejected']['total']:,} rows ({s['rejected']['file']})")
        rej.add_column("reason")
        rej.add_column("rows", justify="right")
        for reason, count in s["rejected"]["by_reason"].items():
            rej.add_row(reason, f"{count:,}")
        out.print(rej)


# ---------------------------------------------------------------------------------------------- show


@app.command()
def show(
    file: Annotated[Path, typer.Argument(
        help="Dataset (JSON/JSONL, Parquet, Arrow, CSV, a directory of them, a Hub id).", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="How many records to show.")] = 5,
    fmt: FormatOpt = None,
    columns: ColumnsOpt = None,
) -> None:
    """Pretty-print the first N records of any format as conversations."""
    with using_columns(columns):
        show_records(file, n, fmt)


# ---------------------------------------------------------------------------------------------- clean


@app.command()
def clean(
    src: Annotated[Path, typer.Argument(metavar="IN", help="ShareGPT or OpenAI-messages file (JSON list or JSONL).",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="Cleaned file, in the shape and layout of IN.",
                                      show_default=False)],
    blocked_words: Annotated[Optional[Path], typer.Option(
        "--blocked-words", help="Phrases that remove a conversation when an assistant message contains one (one per "
        "line, '#' comments; an empty file blocks nothing); default: the usual 'As an AI language model' / "
        "'OpenAI' list.")] = None,
    lang: Annotated[Optional[str], typer.Option(
        "--lang", help="Keep only conversations in these languages, by dominant script: ko, ja, zh, en (any Latin "
        "script), ru, ar, el, he, th, hi, unknown. Default: keep all.")] = None,
    skip_lang: Annotated[Optional[str], typer.Option("--skip-lang", help="Remove conversations in these languages "
                                                     "(same codes as --lang).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write the report (counts per reason, "
                                                   "removed ids) as JSON.")] = None,
    force: ForceOpt = False,
    columns: ColumnsOpt = None,
) -> None:
    """Clean ShareGPT/OpenAI conversations as Vicuna's data was (FastChat clean_sharegpt + optional_clean).

    HTML answers become Markdown (code blocks keep their language); a leading assistant turn is stripped and a
    trailing unanswered user turn trimmed; then empty, non-alternating, blocked-phrase, unwanted-language and
    exactly duplicated conversations are removed, each counted under its reason. Nothing is filtered by language
    unless --lang/--skip-lang is given (Korean is kept by default).
    """
    with using_columns(columns):
        refuse_overwrite([src], out, force)
        if report:
            refuse_overwrite([src, out], report)
        rep = clean_file(src, out, load_blocked_words(blocked_words), parse_langs(lang), parse_langs(skip_lang))
        table = Table(title=f"{src} -> {out} ({rep.shape or 'empty'})")
        table.add_column("conversations")
        table.add_column("count", justify="right")
        table.add_row("in", f"{rep.total:,}")
        for reason, why in REASONS.items():
            if rep.removed[reason]:
                table.add_row(f"removed: {reason} ({why})", f"{rep.removed[reason]:,}")
        for what, count in rep.modified.items():
            table.add_row(f"kept, modified: {what.replace('_', ' ')}", f"{count:,}")
        table.add_row("kept", f"{rep.kept:,}")
        table.add_row("languages seen", ", ".join(f"{k} {v:,}" for k, v in rep.languages.most_common()) or "-")
        console.print(table)
        if report:
            write_json(report, rep.to_dict())
            console.print(f"wrote {report}")


# ---------------------------------------------------------------------------------------------- split


@app.command()
def split(
    src: Annotated[Path, typer.Argument(metavar="IN", help="ShareGPT or OpenAI-messages file (JSON list or JSONL).",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="File of pieces, in the shape and layout of IN.",
                                      show_default=False)],
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per piece as the template "
                                            "renders it (Vicuna: 2048).", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Whose tokenizer counts: embedded | gguf:PATH | "
                                       "hf:PATH.")] = "embedded",
    template: Annotated[Optional[str], typer.Option(
        "--template", help="Template the pieces are rendered with for counting (alpaca, vicuna_v1.1, llama-2, "
        "chatml, tokenizer, ...); default: the model's.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write the counts as JSON.")] = None,
    force: ForceOpt = False,
    columns: ColumnsOpt = None,
) -> None:
    """Split long conversations at turn boundaries so every piece fits --max-tokens (FastChat
    split_long_conversation): whole user+assistant exchanges only, ids suffixed _0, _1...; an exchange longer than
    the limit on its own is dropped and counted, never cut. Every piece is checked with the real template render.
    """
    with using_columns(columns):
        check_input(src)
        refuse_overwrite([src], out, force)
        if report:
            refuse_overwrite([src, out], report)
        from camelid.models import load_model  # the model stack (~0.1 s to import): only when it is used

        m = load_model(model, template=template, n_ctx=512)  # only its tokenizer is used
        try:
            rep = split_file(src, out, m, max_tokens)
        finally:
            m.close()
        d = rep.to_dict()
        table = Table(title=f"{src} -> {out} (template {rep.template}, at most {max_tokens:,} tokens)")
        table.add_column("")
        table.add_column("count", justify="right")
        for key in ("conversations", "pieces", "split", "dropped_exchanges", "dropped_conversations",
                    "trimmed_trailing_user", "max_piece_tokens", "mean_piece_tokens"):
            table.add_row(key.replace("_", " "), f"{d[key]:,}")
        for reason, count in rep.invalid.items():
            table.add_row(f"invalid, removed: {reason}", f"{count:,}")
        console.print(table)
        if report:
            write_json(report, d)
            console.print(f"wrote {report}")


# ---------------------------------------------------------------------------------------------- render
# (appended by the training stage: what `camelid train` sees, token for token)

TRAIN_OPEN, TRAIN_CLOSE = "\u27e6", "\u27e7"  # ⟦trained⟧ when there is no colour


@app.command()
def render(
    file: Annotated[Path, typer.Argument(help="Dataset file (alpaca, seed-tasks, sharegpt, openai).")],
    template: Annotated[Optional[str], typer.Option("--template", help="Prompt template; default: the model's "
                                                    "camelid.json, else its tokenizer's chat_template.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Whose tokenizer: embedded | hf:PATH | gguf:PATH.")]
    = "embedded",
    mask: Annotated[str, typer.Option("--mask", help="assistant | last | all (as in training).")] = "assistant",
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Cut as training would.")] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="How many records.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, input_ids, labels} per record (JSONL).")] = False,
    color: Annotated[Optional[bool], typer.Option("--color/--no-color", help="Highlight trained text (default: "
                                                  "when stdout is a terminal); without colour ⟦trained⟧ marks it.")]
    = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Force the input format.")] = None,
    columns: ColumnsOpt = None,
) -> None:
    """Show records exactly as training tokenizes them, with the trained (loss-bearing) tokens marked."""
    from camelid.models.checkpoint import template_name, tokenizer_for  # the model stack: only when used

    with using_columns(columns):
        tok, run = tokenizer_for(model)
        name = template_name(template, run, tok.chat_template, default="alpaca")
        tmpl = get_template(name, tok.chat_template, tok.bos_token, tok.eos_token)
        out = Console(file=sys.stdout, highlight=False, soft_wrap=True, force_terminal=color)
        use_color = out.is_terminal if color is None else color
        for rec in render_file(file, tok, tmpl, mask, max_length, limit=n, fmt=fmt):
            if as_json:
                print(json.dumps({"id": rec["id"], "input_ids": rec["input_ids"], "labels": rec["labels"]}))
                continue
            info = rec["info"]
            trained = sum(1 for x in rec["labels"] if x != -100)
            note = (" [red]TRUNCATED[/]" if info["truncated"] else "") + \
                (f" [red]TOKENIZATION MISMATCH {info['mismatch']}[/]" if info["mismatch"] else "")
            console.print(f"[bold]── {rec['id']}[/] ({len(rec['input_ids'])} tokens, {trained} trained, template "
                          f"{name}){note}", highlight=False)
            if use_color:
                text = Text()
                for piece, on in rec["spans"]:
                    text.append(piece, style="bold green on grey19" if on else "dim")
                out.print(text)
            else:
                sys.stdout.write("".join(f"{TRAIN_OPEN}{p}{TRAIN_CLOSE}" if on else p for p, on in rec["spans"]) + "\n")
                sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- dedup
# (appended by the generation stage: Stanford's ROUGE-L near-duplicate filter, exact and fast)


@app.command()
def dedup(
    src: Annotated[Path, typer.Argument(metavar="IN", help="Dataset with an instruction per record (alpaca or "
                                        "seed-task rows; JSON list or JSONL).", show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="Kept records (.json: JSON list, else JSONL), with "
                                      "most_similar_instructions and avg_similarity_score.", show_default=False)],
    threshold: Annotated[float, typer.Option("--threshold", help="Reject when ROUGE-L F1 to a seed or an earlier "
                                             "kept record is above this (Stanford: 0.7).")] = 0.7,
    lang: Annotated[str, typer.Option("--lang", help="auto | en (rouge_score's tokens, Stanford's decisions "
                                      "exactly) | ko (Kiwi morphemes) | zh (characters).")] = "auto",
    seeds: Annotated[Optional[list[Path]], typer.Option("--seeds", help="Seed task files: compared against, "
                                                        "never written (repeatable).")] = None,
    key: Annotated[str, typer.Option("--field", help="Which string field to compare.")] = "instruction",
    force: ForceOpt = False,
    similarity: Annotated[bool, typer.Option("--similarity/--no-similarity", help="Add Stanford's "
                                             "most_similar_instructions and avg_similarity_score (every kept record "
                                             "scored against every earlier one: quadratic); --no-similarity only "
                                             "decides, in close to linear time (a million records in minutes).")]
    = True,
    columns: ColumnsOpt = None,
) -> None:
    """Drop near-duplicate instructions greedily in file order, as Stanford's generate_instruction.py does.

    Rejected records go to OUT's sidecar <name>.rejected.jsonl with reason, similar_to and similarity.
    """
    with using_columns(columns):
        check_threshold(threshold)
        refuse_overwrite([src, *(seeds or ())], out, force)
        refuse_overwrite([src, *(seeds or ())], rejected_path(out), force)
        rep = dedup_file(src, out, threshold, lang, seeds or (), key, similarity=similarity)
        console.print(f"kept {rep.kept:,}, rejected {rep.rejected:,} near-duplicates (lang {rep.lang}, ROUGE-L > "
                      f"{threshold}) in {rep.seconds:.1f} s -> {rep.output}"
                      + (f", rejected -> {rep.rejected_path}" if rep.rejected_path else ""))
