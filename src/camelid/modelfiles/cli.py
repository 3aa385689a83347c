"""`camelid export` (merged checkpoint, GGUF + Ollama Modelfile), `camelid weights diff|apply` (delta weights) and
`camelid model check` (do tokenizer, generation config and chat template agree on where a reply ends?)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from camelid.core.cli import TemplateOpt, console
from camelid.core.io import CamelidError
from camelid.modelfiles.check import check_model, fix_model, format_report
from camelid.modelfiles.delta import apply_delta, diff_weights
from camelid.modelfiles.gguf import export_gguf
from camelid.modelfiles.merge import merge_adapter
from camelid.models.card import CARD_FILE, write_model_card
from camelid.models.checkpoint import RunInfo
from camelid.models.spec import local_path

app = typer.Typer()
model_app = typer.Typer(no_args_is_help=True)
weights_app = typer.Typer(no_args_is_help=True)
app.add_typer(weights_app, name="weights", help="Delta weights: publish a fine-tune as a bit-exact XOR delta over "
              "its base (Vicuna-style) and rebuild it.")

ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
LowMemOpt = Annotated[bool, typer.Option("--low-memory", help="Write small output shards (--shard-size, default "
                                         "1GB) so peak memory stays near one of them.")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard-size", help="Largest output shard, e.g. 500MB, 2GB "
                                                 "(default 5GB, or 1GB with --low-memory).")]


@app.command("export")
def export(
    run_dir: Annotated[str, typer.Argument(help="A camelid run directory, a PEFT adapter, a checkpoint (hf:PATH) or "
                                                "'embedded'.")],
    merge: Annotated[bool, typer.Option("--merge", help="Merge the adapter into a full safetensors checkpoint.")] = False,
    gguf: Annotated[bool, typer.Option("--gguf", help="Write a GGUF file for llama.cpp and an Ollama Modelfile "
                                       "beside it.")] = False,
    out: Annotated[Optional[Path], typer.Option("-o", "--output", help="--merge: output directory (default "
                                                "RUN-merged); --gguf: FILE.gguf (default inside the run).")] = None,
    outtype: Annotated[Optional[str], typer.Option("--outtype", help="GGUF tensor type: f16 (default), f32 or "
                                                   "q8_0.")] = None,
    template: TemplateOpt = None,
    force: ForceOpt = False,
) -> None:
    """Export a trained run: merged checkpoint (--merge) or GGUF + Modelfile (--gguf). Prints the output path."""
    # every argument is checked before any weights are read (a merge takes minutes on a large model)
    if merge == gguf:
        raise CamelidError("choose one of --merge or --gguf")
    if merge:
        for given, option in ((outtype, "--outtype"), (template, "--template")):
            if given is not None:
                raise CamelidError(f"{option} applies to --gguf only (--merge keeps the run's weights dtype and "
                                   "its trained template)")
        path = merge_adapter(run_dir, out, force=force)
    else:
        path = export_gguf(run_dir, out, "f16" if outtype is None else outtype,  # type: ignore[arg-type]
                           template=template, force=force)
        console.print(f"Ollama: ollama create NAME -f {path.with_suffix('.Modelfile')}")
        source = Path(local_path(run_dir))
        _card(path.parent, RunInfo.read(source) if source.is_dir() else None, source)
    print(path)


def _card(directory: Path, run: RunInfo | None, source: Path) -> None:
    """The model card beside a GGUF export: the run's own card gains the GGUF when it is written inside the run; a
    directory of its own gets one; a directory holding other files (the working directory) gets none."""
    own = directory.resolve() == source.resolve() if source.is_dir() else False
    others = [p.name for p in directory.iterdir() if p.suffix not in (".gguf", ".Modelfile") and p.name != CARD_FILE
              and not p.name.startswith(".")]
    if not own and others:
        console.print(f"no model card: {directory} holds other files ({others[0]}, ...); export into a directory of "
                      "its own to get a README.md")
        return
    card = write_model_card(directory, run)
    if card is None:
        console.print(f"{directory / CARD_FILE} was not written by camelid: left as it is (no model card)")
    else:
        console.print(f"model card: {card}")


@weights_app.command("diff")
def diff(
    base: Annotated[str, typer.Argument(help="Base checkpoint: directory, hf:PATH or 'embedded'.")],
    tuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint (same forms).")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Delta directory to write.")],
    low_memory: LowMemOpt = False,
    shard_size: ShardOpt = None,
    force: ForceOpt = False,
) -> None:
    """Write TUNED as an XOR delta over BASE, with sha256 checksums of both, plus TUNED's config/tokenizer."""
    print(diff_weights(base, tuned, out, low_memory=low_memory, shard_size=shard_size, force=force))


@weights_app.command("apply")
def apply(
    base: Annotated[str, typer.Argument(help="Base checkpoint: directory, hf:PATH or 'embedded'.")],
    delta: Annotated[Path, typer.Argument(help="Delta directory from `camelid weights diff`.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint directory to write.")],
    low_memory: LowMemOpt = False,
    shard_size: ShardOpt = None,
    force: ForceOpt = False,
) -> None:
    """Rebuild the tuned checkpoint from BASE + DELTA; refuses a wrong base and verifies every tensor."""
    print(apply_delta(base, delta, out, low_memory=low_memory, shard_size=shard_size, force=force))


@model_app.command("check")
def check(
    spec: Annotated[str, typer.Argument(help="hf:PATH (checkpoint, adapter or run dir), gguf:PATH or embedded.")],
    template: TemplateOpt = None,
    fix: Annotated[bool, typer.Option("--fix", help="Write a corrected copy to -o (tokenizer EOS/pad, "
                                      "generation_config, chat_template); never in place.")] = False,
    out: Annotated[Optional[str], typer.Option("-o", "--output", help="Directory for --fix.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --fix: replace -o if it exists.")] = False,
) -> int:
    """Check that tokenizer EOS, generation_config, template end token and chat_template agree (exit 1 if not)."""
    if fix and not out:
        raise CamelidError("--fix needs -o DIR (the model is never changed in place)")
    if fix:
        before, report = fix_model(spec, out, template, force=force)
        if not as_json:
            print(format_report(before) + f"\n\nfixed copy written to {out}:\n")
    else:
        report = check_model(spec, template)
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if as_json else format_report(report))
    if not report.ok:
        raise typer.Exit(1)
    return 0
