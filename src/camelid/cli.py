"""The `camelid` command: a thin layer over the library; each stage brings its own commands."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import click
import typer

from camelid.core.errors import CamelidError, interrupted_line, os_error_line

app = typer.Typer(
    name="camelid",
    help="Generate instruction data, fine-tune, chat, serve and evaluate: the Alpaca / Self-Instruct / Vicuna loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from camelid.data.cli import app as data_app
    from camelid.models.cli import app as models_app, model_app

    app.add_typer(models_app)
    from camelid.generate.cli import app as generate_app

    app.add_typer(generate_app)
    from camelid.serve.cli import app as serve_app

    app.add_typer(serve_app)
    app.add_typer(data_app, name="data", help="Validate, convert, inspect, render, deduplicate and clean datasets.")
    app.add_typer(model_app, name="model", help="Inspect models and their special tokens.")
    from camelid.evaluate.cli import app as eval_app, arena

    app.add_typer(eval_app, name="eval", help="Answer eval sets, judge answers with an LLM, report, benchmark.")
    app.command("arena")(arena)
    from camelid.train.cli import app as train_app

    app.add_typer(train_app)
    from camelid.train.export_cli import app as export_app

    app.add_typer(export_app)
    from camelid.pipeline.cli import app as pipeline_app

    app.add_typer(pipeline_app)
    from camelid.train.tokenizer_cli import app as tokenizer_app

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that temps are removed and the command says what it kept."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _interruption(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind an exception (click turns Ctrl-C into Abort), or None."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return e
        e = e.__cause__ or e.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors, OS errors (disk full, a directory for a file, a read-only disk) and interruptions
    print one line and exit non-zero; no tracebacks for what the user can fix."""
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _run(argv)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if argv is None:
        sys.exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    try:
        rv = app(args=argv, prog_name="camelid", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except EXIT as e:
        return getattr(e, "exit_code", getattr(e, "code", 0)) or 0
    except USAGE as e:
        if getattr(e, "ctx", None) is not None and type(e).__name__ == "NoArgsIsHelpError":
            print(e.ctx.get_help())
            return 0
        e.show()
        return e.exit_code
    except (*ABORT, KeyboardInterrupt) as e:
        intr = _interruption(e)
        print(interrupted_line() if intr is not None else "camelid: aborted", file=sys.stderr)
        return 143 if isinstance(intr, Terminated) else 130
    except CamelidError as e:
        print(f"camelid: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `camelid data show ... | head`: the reader left; nothing to report
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return 1
    except OSError as e:
        print(f"camelid: error: {os_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    main()
