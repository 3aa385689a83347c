"""`camelid train CONFIG.yaml [key=value ...]`: a thin layer over `camelid.train.sft.train`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
import yaml

from camelid.core.cli import console
from camelid.core.io import CamelidError
from camelid.core.config import cli_options, schema_yaml
from camelid.train.config import CONFIG_DIR, TrainConfig, is_staged, load_config, read_config_file
from camelid.train.sft import train
from camelid.train.multistage import load_stages, run_stages, show

app = typer.Typer()

EPILOG = ("Examples: camelid train alpaca_lora data=alpaca_data.json  |  camelid train my.yaml lora.r=16 lr=1e-4  |  "
          "torchrun --nproc_per_node 2 -m camelid train my.yaml  |  accelerate launch --config_file "
          "$(camelid train --config-path fsdp) -m camelid train alpaca_full")


@app.command("train", epilog=EPILOG)
@cli_options(TrainConfig, only=("data", "model", "template", "method", "output_dir", "epochs", "max_steps", "lr",
                                "report_to"))
def train_command(
    settings: dict,
    args: Annotated[Optional[list[str]], typer.Argument(
        help="CONFIG.yaml (or a shipped config: alpaca_lora, alpaca_full, qlora, vicuna, kollama2_two_stage), then "
             "key=value overrides (dotted: lora.r=16; a staged config: STAGE.key=value).", show_default=False)] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the resolved config as YAML and exit "
                                              "(with no CONFIG: the commented schema with every default).")] = False,
    config_path: Annotated[Optional[str], typer.Option("--config-path", help="Print the path of a shipped config "
                                                       "(e.g. fsdp, deepspeed_zero3) and exit.")] = None,
) -> None:
    """Fine-tune a model (full, LoRA, DoRA, QLoRA) on instruction data; writes a run directory that chat, serve
    and eval load with the same template (camelid.json). A config with `stages:` runs its stages in order,
    skipping finished ones."""
    if config_path:
        p = CONFIG_DIR / (config_path if config_path.endswith(".yaml") else f"{config_path}.yaml")
        if not p.is_file():
            raise CamelidError(f"no shipped config {config_path!r}: {', '.join(x.stem for x in CONFIG_DIR.glob('*.yaml'))}")
        print(p)
        return
    args = list(args or [])
    config = args.pop(0) if args and "=" not in args[0] else None
    if show_config and config is None and not args:
        print(schema_yaml(TrainConfig), end="")
        return
    if config is not None and is_staged(read_config_file(config)[1]):
        if settings:
            raise CamelidError(f"{config} has stages: set them with STAGE.key=value (or key=value for every stage), "
                               "not with options")
        run = load_stages(config, args)
        if show_config:
            print(show(run), end="")
            return
        run_stages(run, console=console)
        return
    cfg = load_config(config, args, **settings)
    if show_config:
        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True), end="")
        return
    train(cfg, console=console)
