"""Options shared by every command that talks to a model, and the console used for progress and tables."""

from __future__ import annotations

import logging
import warnings
from typing import Annotated, Optional

import typer
from rich.console import Console

# stdout carries results (answers, JSON); progress, tables and logs go to stderr
console = Console(stderr=True)

# Dependency noise that no user can act on, silenced for every command:
# peft 0.21 still calls transformers' renamed (activation) checkpointing methods;
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing(_enable)?` is deprecated",
                        category=FutureWarning)
# bitsandbytes on an AVX512-BF16 CPU looks for an optional hub kernel and, absent, falls back to its built-in one.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

ColumnsOpt = Annotated[Optional[str], typer.Option(
    "--columns", help="Read inputs whose field names differ: instruction=prompt,output=completion reads column "
    "'prompt' as 'instruction' (TARGET=COLUMN, comma-separated; any format, Parquet and Hub datasets too).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec: embedded | gguf:PATH | hf:PATH | "
                                       "openai:NAME (a run directory or .gguf path works too).")]
BaseUrlOpt = Annotated[Optional[list[str]], typer.Option(
    "--base-url", help="OpenAI-compatible server URL for openai: specs (repeat to spread load round-robin; "
    "default $OPENAI_BASE_URL).")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="OPENAI_API_KEY", show_envvar=False,
                                                  help="API key for openai: specs (default $OPENAI_API_KEY).")]
TemplateOpt = Annotated[Optional[str], typer.Option(
    "--template", help="Prompt template (alpaca, alpaca_ko, chinese_alpaca, vicuna_v1.1, llama-2, chatml, "
    "self-instruct, tokenizer); default: the run's camelid.json, else the tokenizer's chat_template.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | mps (transformers and GGUF "
                                                  "offload); default: cuda when available.")]
NumGpusOpt = Annotated[Optional[int], typer.Option("--num-gpus", help="Spread layers over N GPUs (device_map).")]
Load8Opt = Annotated[bool, typer.Option("--load-8bit", help="Load transformers weights in 8-bit (bitsandbytes).")]
Load4Opt = Annotated[bool, typer.Option("--load-4bit", help="Load transformers weights in 4-bit (bitsandbytes).")]
