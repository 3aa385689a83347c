"""`camelid ask`: a one-shot answer from any backend."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from camelid.core.cli import ApiKeyOpt, BaseUrlOpt, ModelOpt, TemplateOpt
from camelid.models import Sampling, load_model
from camelid.models.base import collect

app = typer.Typer()


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
        out = collect(chunks, m.name).to_dict()
        print(json.dumps({**out, "backend": type(m).__name__}, ensure_ascii=False, indent=2))
        return
    for c in chunks:
        sys.stdout.write(c.text)
        if stream:
            sys.stdout.flush()
    sys.stdout.write("\n")
