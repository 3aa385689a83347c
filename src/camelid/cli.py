"""The `camelid` command: a thin layer over the library; each stage brings its own commands."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading

import click
import typer

from camelid import _interrupted_while_starting
from camelid.core.errors import CamelidError, forget_notes, interrupted_line, os_error_line

HELP = "Generate instruction data, fine-tune, chat, serve and evaluate: the Alpaca / Self-Instruct / Vicuna loop."
# Each stage's commands: (module, attribute, the top-level names it gives, add_typer options; None: one command).
# A command imports only its own stage (`camelid data dedup` starts without the server's, the trainer's or the
# evaluator's dependencies); `camelid --help` and an unknown name build the whole tree.
STAGES = [
    ("camelid.models.cli", "app", ("ask",), {}),
    ("camelid.generate.cli", "app", ("generate",), {}),
    ("camelid.serve.cli", "app", ("chat", "serve"), {}),
    ("camelid.data.cli", "app", ("data",),
     {"name": "data", "help": "Validate, convert, inspect, render, deduplicate and clean datasets."}),
    ("camelid.modelfiles.cli", "model_app", ("model",),
     {"name": "model", "help": "Inspect models and their special tokens."}),
    ("camelid.evaluate.cli", "app", ("eval",),
     {"name": "eval", "help": "Answer eval sets, judge answers with an LLM, report, benchmark."}),
    ("camelid.evaluate.cli", "arena", ("arena",), None),
    ("camelid.train.cli", "app", ("train",), {}),
    ("camelid.modelfiles.cli", "app", ("export", "weights"), {}),
    ("camelid.pipeline.cli", "app", ("run", "sweep"), {}),
    ("camelid.train.tokenizer_cli", "app", ("tokenizer",),
     {"name": "tokenizer", "help": "Extend a tokenizer's vocabulary for a new language; measure tokens per character."}),
]


def build_app(command: str | None = None) -> typer.Typer:
    """The command tree; with a top-level `command` name, only the stage that gives it."""
    tree = typer.Typer(name="camelid", help=HELP, no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
    stages = [st for st in STAGES if command is None or command in st[2]]
    for module, attr, names, options in stages:
        obj = getattr(importlib.import_module(module), attr)
        if options is None:
            tree.command(names[0])(obj)
        else:
            tree.add_typer(obj, **options)
    if command is not None:
        tree.callback()(lambda: None)  # a group even with one command (typer would make it the whole program)
    return tree


def _command(argv: list[str]) -> str | None:
    """The top-level command name in argv when one stage gives it."""
    first = argv[0] if argv else None
    return first if any(first in names for _, _, names, _ in STAGES) else None


def __getattr__(name: str):
    if name == "app":  # the whole tree, built on first use (`from camelid.cli import app`)
        globals()["app"] = tree = build_app()
        return tree
    raise AttributeError(name)


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


_signalled: list[int] = []  # the signals that interrupted this command (typer hides them: Exit(130) as a return)


def _on_sigterm(signum, frame) -> None:
    _signalled.append(signum)
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt


def _interruption(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind an exception (click turns Ctrl-C into Abort), or None."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return e
        e = e.__cause__ or e.__context__
    return None


def _interrupted(e: BaseException) -> int:
    print(interrupted_line(), file=sys.stderr)
    return 143 if isinstance(_interruption(e), Terminated) or signal.SIGTERM in _signalled[-1:] else 130


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors, OS errors (disk full, a directory for a file, a read-only disk) and interruptions
    print one line and exit non-zero; no tracebacks for what the user can fix."""
    args = sys.argv[1:] if argv is None else argv
    command = _command(args)
    # the commands are imported before camelid's own Ctrl-C handling: an interruption now is one "while starting"
    tree = build_app(command) if command else __getattr__("app")
    old_term = old_int = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) in (_interrupted_while_starting, signal.default_int_handler):
            old_int = signal.signal(signal.SIGINT, _on_sigint)  # KeyboardInterrupt as ever, and noted
    try:
        code = _run(tree, args)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_term is _interrupted_while_starting else old_term)
        if old_int is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if argv is None:
        sys.exit(code)
    return code


def _run(tree: typer.Typer, args: list[str]) -> int:
    _signalled.clear()
    forget_notes()
    try:
        rv = tree(args=args, prog_name="camelid", standalone_mode=False)
        if rv == 130 and _signalled:  # typer returns Exit(130) for a KeyboardInterrupt in non-standalone mode
            print(interrupted_line(), file=sys.stderr)
            return 143 if _signalled[-1] == signal.SIGTERM else 130
        return rv if isinstance(rv, int) else 0
    except EXIT as e:
        if _interruption(e) is not None:  # typer turns Ctrl-C into Exit(130): say so, and what was kept
            return _interrupted(e)
        return getattr(e, "exit_code", getattr(e, "code", 0)) or 0
    except USAGE as e:
        if getattr(e, "ctx", None) is not None and type(e).__name__ == "NoArgsIsHelpError":
            print(e.ctx.get_help())
            return 0
        e.show()
        return e.exit_code
    except (*ABORT, KeyboardInterrupt) as e:
        if _interruption(e) is None:
            print("camelid: aborted", file=sys.stderr)
            return 130
        return _interrupted(e)
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
