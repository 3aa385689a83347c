"""`camelid run RECIPE.yaml`: the whole loop in one command."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from camelid.pipeline.recipe import load_recipe
from camelid.pipeline.run import run_recipe
from camelid.pipeline.sweep import run_sweep

app = typer.Typer()


@app.command("run")
def run_command(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML (e.g. recipes/quickstart.yaml).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="section.key=value overrides, e.g. generate.num=100 train.method=full", show_default=False)] = None,
    from_stage: Annotated[Optional[str], typer.Option("--from", help="Rerun from this stage on (generate, train, "
                                                      "eval, serve); earlier stages must have finished.")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Run just this stage (its inputs must exist).")] = None,
) -> None:
    """Generate data, fine-tune, evaluate before vs after, (serve): each stage's output in the run directory; a
    rerun skips stages whose inputs are unchanged and resumes an interrupted one."""
    run_recipe(load_recipe(recipe, overrides), from_stage=from_stage, only=only)


@app.command("sweep")
def sweep_command(
    sweep: Annotated[str, typer.Argument(help="Sweep YAML: a base recipe plus axes (e.g. recipes/sweep_methods.yaml).")],
    print_commands: Annotated[bool, typer.Option("--print-commands", help="Print one `camelid run` command per "
                                                 "cell (for a cluster launcher) instead of running them.")] = False,
) -> None:
    """Run a grid of recipes (methods x datasets x models x seeds), each cell a normal run directory evaluated
    the same way; finished cells are skipped, a failed cell does not stop the rest; one comparable report."""
    run_sweep(sweep, print_only=print_commands)
