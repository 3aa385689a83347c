"""`camelid chat` (terminal) and `camelid serve` (OpenAI-compatible API + chat page)."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Optional

import typer

from camelid.core.cli import (ApiKeyOpt, BaseUrlOpt, DeviceOpt, Load4Opt, Load8Opt, ModelOpt, NumGpusOpt, TemplateOpt,
                              console)
from camelid.core.io import CamelidError
from camelid.models import Sampling, load_model
from camelid.serve.chat import chat_loop
from camelid.serve.server import create_app, serve as run

app = typer.Typer()

UpstreamKeyOpt = Annotated[Optional[str], typer.Option(
    "--upstream-api-key", help="API key for openai: specs (default $OPENAI_API_KEY).")]
NCtxOpt = Annotated[int, typer.Option("--n-ctx", min=128, help="Context length for GGUF models (llama.cpp).")]


@app.command()
def chat(
    model: ModelOpt = "embedded",
    template: TemplateOpt = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System message.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, max=2.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest answer, in tokens.")] = 512,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    n_ctx: NCtxOpt = 4096,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    device: DeviceOpt = None,
    num_gpus: NumGpusOpt = None,
    load_8bit: Load8Opt = False,
    load_4bit: Load4Opt = False,
) -> None:
    """Chat in the terminal (streaming). Commands: !!exit, !!reset, !!regen, !!save FILE, !!load FILE.
    With piped input: one message per line, one answer per message on stdout."""
    m = load_model(model, base_urls=base_url, api_key=api_key, template=template, n_ctx=n_ctx,
                   device=device, num_gpus=num_gpus, load_8bit=load_8bit, load_4bit=load_4bit)
    try:
        chat_loop(m, Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed), system)
    finally:
        m.close()


@app.command()
def serve(
    model: ModelOpt = "embedded",
    host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes the server to the "
                                      "network (set --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="CAMELID_API_KEY", show_envvar=False,
        help="Require 'Authorization: Bearer KEY' on /v1 (default $CAMELID_API_KEY; none: open).")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="Allow browser calls from this origin (repeatable; '*' for any). Default: none "
        "(cross-origin requests are refused).")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(
        "--allow-host", help="Also answer requests whose Host header names this host (repeatable). Bound to a "
        "loopback address the server answers only loopback names by default (DNS rebinding protection).")] = None,
    max_body_mib: Annotated[float, typer.Option("--max-body-mib", min=0.001, help="Largest request body, in MiB "
                                                "(413 beyond).")] = 8.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=0, help="Requests that may wait for the model "
                                           "beyond those running; the next get 429 + Retry-After.")] = 16,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Name in /v1/models and responses "
                                                      "(default: the model's own).")] = None,
    default_max_tokens: Annotated[int, typer.Option("--default-max-tokens", min=1, help="Chat answer limit "
                                                    "when a request sets no max_tokens.")] = 1024,
    template: TemplateOpt = None,
    n_ctx: NCtxOpt = 4096,
    base_url: BaseUrlOpt = None,
    upstream_api_key: UpstreamKeyOpt = None,
    device: DeviceOpt = None,
    num_gpus: NumGpusOpt = None,
    load_8bit: Load8Opt = False,
    load_4bit: Load4Opt = False,
) -> None:
    """Serve a model with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models) and a chat page at /.
    `--model openai:NAME --base-url A --base-url B` fronts several OpenAI-compatible workers round-robin."""
    if api_key is not None and not api_key.strip():
        raise CamelidError("--api-key is empty")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can reach it can use it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # an upstream is tried once more (the next --base-url, if any) and then its failure is answered with a
    # 502/503/504 at once: the client decides whether to retry, not a backoff hidden in the server
    m = load_model(model, base_urls=base_url, api_key=upstream_api_key or os.environ.get("OPENAI_API_KEY"),
                   template=template, n_ctx=n_ctx, device=device, num_gpus=num_gpus, load_8bit=load_8bit,
                   load_4bit=load_4bit, max_retries=1)
    app_ = create_app(m, model_name=model_name, api_key=api_key, cors_origins=cors_origin, max_queue=max_queue,
                      default_max_tokens=default_max_tokens, allowed_hosts=allow_host or (),
                      max_body=int(max_body_mib * 1024 * 1024))
    console.print(f"serving {app_.state.served_name} on http://{host}:{port} (chat page at /, API at /v1)",
                  soft_wrap=True)
    try:
        run(app_, host=host, port=port)
    finally:
        m.close()
