"""`camelid ask` (one-shot answer from any backend) and `camelid model ...`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from camelid.core.cli import ApiKeyOpt, BaseUrlOpt, ModelOpt, TemplateOpt

app = typer.Typer()
model_app = typer.Typer(no_args_is_help=True)


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The prompt (or '-' to read it from stdin).")],
    model: ModelOpt = "embedded",
    chat: Annotated[bool, typer.Option(
        "--chat/--complete", help="--chat (default): send the prompt as a user message through the model's chat "
        "template, as instruct models expect; --complete: plain text completion of the prompt.")] = True,
    system: Annotated[Optional[str], typer.Option("--system", help="System message (with --chat).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full response with usage as JSON.")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they arrive.")] = True,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    template: TemplateOpt = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries on 429/5xx/timeouts (openai:).")] = 5,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per request (openai:).")] = 120.0,
) -> None:
    """Answer one prompt on stdout: a smoke test for any backend (like the `llm` tool)."""
    import sys

    from camelid.models import Sampling, load_model

    if prompt == "-":
        prompt = sys.stdin.read()
    m = load_model(model, base_urls=base_url, api_key=api_key, template=template, max_retries=retries,
                   timeout=timeout)
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=list(stop or []), seed=seed)
    if chat or system:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        chunks = m.stream_chat(messages, sampling)
    else:
        chunks = m.stream(prompt, sampling)
    if as_json:
        from camelid.models.base import collect

        out = collect(chunks, m.name).to_dict()
        print(json.dumps({**out, "backend": type(m).__name__}, ensure_ascii=False, indent=2))
        return
    for c in chunks:
        sys.stdout.write(c.text)
        if stream:
            sys.stdout.flush()
    sys.stdout.write("\n")


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
    from camelid.core.io import CamelidError
    from camelid.models.check import check_model, fix_model, format_report

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
