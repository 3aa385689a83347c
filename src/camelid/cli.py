"""The `camelid` command: a thin layer over the library; each stage brings its own commands."""

from __future__ import annotations

import sys

import click
import typer

from camelid.core.io import CamelidError
from camelid.data.cli import app as data_app
from camelid.evaluate.cli import app as eval_app, arena
from camelid.generate.cli import app as generate_app
from camelid.modelfiles.cli import app as export_app, model_app
from camelid.models.cli import app as models_app
from camelid.pipeline.cli import app as pipeline_app
from camelid.serve.cli import app as serve_app
from camelid.train.cli import app as train_app
from camelid.train.tokenizer_cli import app as tokenizer_app

app = typer.Typer(
    name="camelid",
    help="Generate instruction data, fine-tune, chat, serve and evaluate: the Alpaca / Self-Instruct / Vicuna loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    app.add_typer(models_app)
    app.add_typer(generate_app)
    app.add_typer(serve_app)
    app.add_typer(data_app, name="data", help="Validate, convert, inspect, render, deduplicate and clean datasets.")
    app.add_typer(model_app, name="model", help="Inspect models and their special tokens.")
    app.add_typer(eval_app, name="eval", help="Answer eval sets, judge answers with an LLM, report, benchmark.")
    app.command("arena")(arena)
    app.add_typer(train_app)
    app.add_typer(export_app)
    app.add_typer(pipeline_app)
    app.add_typer(tokenizer_app, name="tokenizer", help="Extend a tokenizer's vocabulary for a new language; "
                  "measure tokens per character.")


_register()


def _exceptions() -> tuple[tuple, tuple, tuple]:
    """(exit, usage error, abort) classes of click and of the click that newer typer versions vendor."""
    exits, errors, aborts = [click.exceptions.Exit], [click.ClickException], [click.exceptions.Abort]
    try:
        import typer._click.exceptions as tce
        import typer.exceptions as te

        exits.append(te.Exit)
        errors.append(tce.ClickException)
        aborts.append(te.Abort)
    except (ImportError, AttributeError):
        pass
    return tuple(exits), tuple(errors), tuple(aborts)


EXIT, USAGE, ABORT = _exceptions()


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 1; no tracebacks for what the user can fix."""
    try:
        rv = app(args=argv, prog_name="camelid", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except EXIT as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0)) or 0
    except USAGE as e:
        if getattr(e, "ctx", None) is not None and type(e).__name__ == "NoArgsIsHelpError":
            print(e.ctx.get_help())
            code = 0
        else:
            e.show()
            code = e.exit_code
    except ABORT:
        print("camelid: aborted", file=sys.stderr)
        code = 130
    except CamelidError as e:
        print(f"camelid: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("camelid: interrupted", file=sys.stderr)
        code = 130
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
