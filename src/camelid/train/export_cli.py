"""`camelid export` (merged checkpoint, GGUF + Ollama Modelfile) and `camelid weights diff|apply` (delta weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from camelid.core.cli import TemplateOpt, console
from camelid.core.io import CamelidError

app = typer.Typer()
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
    outtype: Annotated[str, typer.Option("--outtype", help="GGUF tensor type: f16, f32 or q8_0.")] = "f16",
    template: TemplateOpt = None,
    force: ForceOpt = False,
) -> None:
    """Export a trained run: merged checkpoint (--merge) or GGUF + Modelfile (--gguf). Prints the output path."""
    from camelid.train.export import export_gguf, merge_adapter

    if merge == gguf:
        raise CamelidError("choose one of --merge or --gguf")
    if merge:
        path = merge_adapter(run_dir, out, force=force)
    else:
        path = export_gguf(run_dir, out, outtype, template=template, force=force)  # type: ignore[arg-type]
        console.print(f"Ollama: ollama create NAME -f {path.with_suffix('.Modelfile')}")
    print(path)


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
    from camelid.train.delta import diff_weights

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
    from camelid.train.delta import apply_delta

    print(apply_delta(base, delta, out, low_memory=low_memory, shard_size=shard_size, force=force))
