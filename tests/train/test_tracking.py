"""report_to: TensorBoard, W&B (offline) and MLflow (local file store) get the scalars of trainer_log.jsonl and the
config, read back with each tool's own reader."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import read_jsonl
from camelid.train.sft import train
from camelid.train.tracking import SCALARS
from tests.train.conftest import tiny_config

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model, alpaca_30) -> Path:
    """A tiny run that reports to all three trackers, with eval losses (every 2 steps and at the end)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    saved = {k: os.environ.get(k) for k in (*env, "MLFLOW_TRACKING_URI", "WANDB_DIR")}
    os.environ.update(env)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("WANDB_DIR", None)
    try:
        train(tiny_config(tiny_model, alpaca_30, out, report_to=["tensorboard", "wandb", "mlflow"], val_size=4,
                          eval_steps=2, max_steps=4))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def expected(run: Path) -> dict[str, dict[int, float]]:
    """tracker name -> {step: value}, from trainer_log.jsonl (camelid's own log)."""
    want: dict[str, dict[int, float]] = {}
    for _, row in read_jsonl(run / "trainer_log.jsonl"):
        for key, name in SCALARS.items():
            if key in row:
                want.setdefault(name, {})[row["step"]] = float(row[key])
    return want


@pytest.mark.slow  # the tracked run (all three trackers, W&B's service starting): ~30 s
def test_tensorboard_event_file_holds_the_scalars_of_trainer_log(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((tracked_run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    want = expected(tracked_run)
    assert set(want) == set(SCALARS.values()) and len(want["train/loss"]) == 4 and len(want["eval/loss"]) == 2
    assert set(acc.Tags()["scalars"]) == set(want)
    for name, by_step in want.items():
        got = {e.step: e.value for e in acc.Scalars(name)}
        assert got == pytest.approx(by_step, rel=1e-6), name  # TensorBoard stores float32
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"report_to"' in config and '"max_steps": 4' in config
    assert acc.summary_metadata  # the hparams plugin's session records are in the same file


def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb): LevelDB-log blocks of protobuf Records, the format of
    wandb/sdk/internal/datastore.py (wandb <= 0.19; the reader is no longer shipped with the client)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow  # the tracked run (all three trackers, W&B's service starting): ~30 s
def test_wandb_offline_run_under_the_run_directory_holds_the_scalars_and_config(tracked_run):
    import json

    runs = list((tracked_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    got: dict[str, dict[int, float]] = {}
    config: dict = {}
    for record in _wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for k, v in items.items():
                if k in SCALARS.values():
                    got.setdefault(k, {})[items["_step"]] = v
        elif kind in ("run", "config"):  # the config given to wandb.init travels in the run record
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
    want = expected(tracked_run)
    assert set(got) == set(want)
    for name, by_step in want.items():
        assert got[name] == pytest.approx(by_step, rel=1e-12), name
    assert config["max_steps"] == 4 and config["report_to"] == ["tensorboard", "wandb", "mlflow"]


@pytest.mark.slow  # the tracked run (all three trackers, W&B's service starting): ~30 s
def test_mlflow_local_store_holds_the_scalars_and_config(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("camelid").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["max_steps"] == "4" and run.data.params["lora.r"] == "8"
    for name, by_step in expected(tracked_run).items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert got == pytest.approx(by_step, rel=1e-12), name


def test_a_run_without_report_to_writes_no_tracker_files(tiny_model, alpaca_30, tmp_path):
    out = tmp_path / "plain"
    train(tiny_config(tiny_model, alpaca_30, out, max_steps=1))
    assert not [p for p in ("tensorboard", "wandb", "mlruns") if (out / p).exists()]


@pytest.mark.parametrize("backend,package", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                             ("mlflow", "mlflow")])
def test_a_tracker_whose_package_is_missing_is_one_line_before_the_model_loads(tiny_model, alpaca_30, tmp_path,
                                                                               backend, package):
    # sys.modules[NAME] = None is how Python blocks an import (as if the package were not installed)
    code = (f"import sys; sys.modules[{package!r}] = None; from camelid.cli import main; "
            f"sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "train", f"model=hf:{tmp_path / 'no-such-model'}",
                           f"data=[{alpaca_30}]", f"output_dir={tmp_path / 'out'}", "--report-to", backend],
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"report_to {backend}: the {package} package is not installed" in err and "pip install" in err
    assert not (tmp_path / "out").exists()


def test_report_to_is_checked_with_the_config(tmp_path, capsys):
    assert main(["train", "alpaca_lora", "report_to=[tensorboard,comet]", "--show-config"]) == 1
    err = capsys.readouterr().err
    assert "field 'report_to.1'" in err and "'tensorboard', 'wandb' or 'mlflow'" in err
    assert main(["train", "alpaca_lora", "report_to=tensorboard", "--show-config"]) == 0
    assert "report_to:\n- tensorboard\n" in capsys.readouterr().out
    # a recipe's train section is the same config
    from camelid.core.io import CamelidError
    from camelid.pipeline.recipe import load_recipe

    recipe = Path(__file__).parents[2] / "recipes" / "alpaca.yaml"
    assert load_recipe(recipe, ["train.report_to=[wandb,mlflow]"]).train.report_to == ["wandb", "mlflow"]
    with pytest.raises(CamelidError, match=r"field 'train\.report_to\.0'"):
        load_recipe(recipe, ["train.report_to=[neptune]"])


def test_a_resumed_run_leaves_tensorboard_one_value_per_step(tiny_model, alpaca_30, tmp_path):
    import json
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = dict(max_steps=4, save_steps=2, report_to=["tensorboard"])
    whole = train(tiny_config(tiny_model, alpaca_30, tmp_path / "whole", **kw))
    # killed after step 3: its checkpoint of step 2, a log and TensorBoard events running to step 3 (here 4: the
    # events past the checkpoint must not show twice)
    killed = tmp_path / "killed"
    ckpt = tmp_path / "whole" / "checkpoints" / "step-000002"
    shutil.copytree(ckpt, killed / "checkpoints" / ckpt.name)
    shutil.copytree(tmp_path / "whole" / "tensorboard", killed / "tensorboard")
    rows = [r for _, r in read_jsonl(tmp_path / "whole" / "trainer_log.jsonl") if r["step"] <= 3]
    (killed / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(tiny_config(tiny_model, alpaca_30, killed, **kw))
    acc = EventAccumulator(str(killed / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert [e.value for e in events] == pytest.approx(whole.losses, abs=1e-5)
    assert [e.value for e in events] == pytest.approx(
        [r["loss"] for _, r in read_jsonl(killed / "trainer_log.jsonl")], rel=1e-6)
