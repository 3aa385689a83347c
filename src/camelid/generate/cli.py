"""`camelid generate`: a thin layer over camelid.generate.generator; its options are GenerateConfig's fields."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from camelid.core.cli import ApiKeyOpt, BaseUrlOpt, console
from camelid.core.config import cli_options
from camelid.core.errors import interrupt_note
from camelid.generate.generator import (
    DEFAULTS,
    GenerateConfig,
    Generator,
    load_config,
    mode_defaults,
)

app = typer.Typer()


@app.command()
@cli_options(GenerateConfig, defaults={k: mode_defaults(k) for k in DEFAULTS["alpaca"]},
             shared={"base_url": BaseUrlOpt, "api_key": ApiKeyOpt})
def generate(
    settings: dict,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML with the same keys as these options "
                                                   "(options given here win).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Generate instruction data with a teacher model (Stanford Alpaca or Self-Instruct), resumably.

    Every candidate is parsed, filtered (length, keyword blacklist, 'Write a program', leading punctuation,
    non-ASCII start for English) and checked by ROUGE-L against the seeds and every kept instruction.
    kill -9 at any moment, rerun the same command, and it continues where it stopped.
    """
    made: list[Generator] = []
    output = settings.get("output")

    def note() -> str:
        if made:
            return made[0].interrupted_note()
        return f"{output} is as it was; the same command resumes it" if output else "nothing was written"

    with interrupt_note(note, command=True):  # from the first line: a signal while the settings are read says so too
        cfg = load_config(config, settings)
        output = cfg.output
        gen = Generator(cfg, show_progress=not quiet)
        made.append(gen)
        note_ = gen.resume_note()
        if note_:
            console.print(f"resuming {cfg.output}: {note_}")
        rep = gen.run()
        rejected = ", ".join(f"{r} {n}" for r, n in rep.rejected.most_common()) or "none"
        t = rep.totals
        so_far = (f" ({t.requests} requests, {t.prompt_tokens + t.completion_tokens:,} tokens, "
                  f"{rep.total_seconds:.1f} s in all runs)" if rep.resumed_from or t.requests != rep.requests else "")
        console.print(f"kept {rep.kept}/{rep.target} ({rep.kept - rep.resumed_from} new) in {rep.seconds:.1f} s; "
                      f"{rep.requests} requests ({rep.failed_requests} failed), {rep.prompt_tokens:,} prompt + "
                      f"{rep.completion_tokens:,} completion tokens{so_far}; rejected: {rejected}")
        console.print(f"wrote {rep.output}, {gen.rejected_path.name}, {gen.requests_path.name}, {gen.rounds_path.name}")
        if rep.stopped:
            console.print(f"[yellow]stopped short of --num: {rep.stopped}[/]")
