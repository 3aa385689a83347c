"""Experiment tracking (`report_to: [tensorboard, wandb, mlflow]`): the scalars camelid prints, sent to dashboards.

`TrainLog.write(row)` appends a row to trainer_log.jsonl (camelid's own log, always written) and sends its scalars
to each tracker under Hugging Face Trainer's names (`train/loss`, `train/learning_rate`, `train/grad_norm`,
`train/tokens_per_s`, `train/epoch`, `eval/loss`), at the row's optimizer step. The run's config goes with them as
hyperparameters. Everything stays under the run directory unless the user's environment points elsewhere:
- tensorboard: event files in RUN/tensorboard/ (a resumed run hides the events past its checkpoint: purge_step);
- wandb: RUN/wandb/ (`WANDB_MODE=offline` writes there only; `wandb sync` uploads later), project
  `$WANDB_PROJECT` or camelid;
- mlflow: `$MLFLOW_TRACKING_URI`, else the local file store file:RUN/mlruns (MLflow 3 wants
  MLFLOW_ALLOW_FILE_STORE=true for it, which camelid sets; `mlflow ui` needs it too), experiment
  `$MLFLOW_EXPERIMENT_NAME` or camelid.
Only the main process creates a TrainLog (train/sft.py), so a multi-process run logs once.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from camelid.core.io import CamelidError, JsonlAppender

REPORT_TO = ("tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # import name -> pip name
PIP_NAMES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny (or mlflow)"}
# trainer_log.jsonl key -> tracker name (transformers' Trainer names, so dashboards compare runs of both)
SCALARS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
           "tokens_per_s": "train/tokens_per_s", "epoch": "train/epoch", "eval_loss": "eval/loss"}
TB_DIR, WANDB_DIR, MLFLOW_DIR = "tensorboard", "wandb", "mlruns"


def check_report_to(report_to: list[str]) -> None:
    """A requested tracker whose package is missing: one line naming it, before any model is loaded."""
    for name in report_to:
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError:
            raise CamelidError(f"report_to {name}: the {PACKAGES[name]} package is not installed "
                               f"(pip install {PIP_NAMES[name]}, or pip install 'camelid[tracking]')") from None


def scalars(row: dict) -> dict[str, float]:
    """The tracked scalars of one trainer_log.jsonl row (sample rows have none)."""
    return {SCALARS[k]: float(v) for k, v in row.items()
            if k in SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat_config(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """`{"lora": {"r": 8}}` -> `{"lora.r": 8}`; lists and None as their JSON text (trackers take scalars only)."""
    out: dict = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        elif isinstance(v, (str, int, float, bool)):
            out[prefix + k] = v
        else:
            out[prefix + k] = json.dumps(v, ensure_ascii=False)
    return out


class _TensorBoard:
    def __init__(self, out: Path, config: dict, start_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # resumed after step N: events of steps > N (logged before the kill) are hidden; steps are 1-based
        self.w = SummaryWriter(str(out / TB_DIR), purge_step=start_step + 1 if start_step else None)
        if not start_step:  # hyperparameters once per run (the HPARAMS tab) and the config as text
            exp, ssi, sei = hparams(flat_config(config), {"eval/loss": float("nan")})
            for summary in (exp, ssi, sei):
                self.w.file_writer.add_summary(summary)
            self.w.add_text("config", "```\n" + json.dumps(config, indent=2, ensure_ascii=False) + "\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


class _Wandb:
    def __init__(self, out: Path, config: dict, start_step: int):
        import wandb

        (out / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "camelid"), name=out.name,
                                  dir=str(out), config=config, reinit="create_new")
        except Exception as e:  # no API key and no WANDB_MODE=offline, no network...: one line, not a traceback
            raise CamelidError(f"report_to wandb: {str(e).splitlines()[0] if str(e) else type(e).__name__} (set "
                               "WANDB_MODE=offline to log into the run directory only)") from None

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, out: Path, config: dict, start_step: int):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the local file store, which MLflow 3 keeps behind an opt-in (its default is now a database)
            uri = (out / MLFLOW_DIR).as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "camelid")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=out.name, tags={
            "camelid.output_dir": str(out), "camelid.start_step": str(start_step)}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


class TrainLog:
    """trainer_log.jsonl plus the trackers in `report_to` (main process only)."""

    def __init__(self, out: Path, report_to: list[str], config: dict, start_step: int = 0):
        if not start_step:  # a fresh run: the trackers' files of a run killed before its first checkpoint go too
            shutil.rmtree(out / TB_DIR, ignore_errors=True)
        self.jsonl = JsonlAppender(out / "trainer_log.jsonl")
        self.trackers: list = []
        try:
            for name in dict.fromkeys(report_to):
                self.trackers.append(BACKENDS[name](out, config, start_step))
        except BaseException:
            self.close()
            raise

    def write(self, row: dict) -> None:
        self.jsonl.write(row)
        values = scalars(row)
        if values and "step" in row:
            for t in self.trackers:
                t.log(values, int(row["step"]))

    def close(self) -> None:
        self.jsonl.close()
        for t in self.trackers:
            t.close()
        self.trackers = []
