"""Parquet, Arrow, CSV, directories of them, `save_to_disk` output and Hub ids, read through `datasets` by the one
record reader: the same records as the JSON they were written from, through every command that reads data, and one
located line for each hostile case. Offline: a Hub id fails with one line; a dataset in the local `datasets` cache
is read from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

from camelid.cli import main  # noqa: E402
from camelid.core.errors import CamelidError  # noqa: E402
from camelid.core.records import iter_records  # noqa: E402
from camelid.core.tables import HubId, hub_id  # noqa: E402
from camelid.data.formats import read_conversations  # noqa: E402
from tests.data.test_hostile import ALPACA, COMMANDS, SHAREGPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"instruction": f"Name fruit number {i}.", "input": "" if i % 2 else f"list {i}", "output": f"Fruit {i}."}
        for i in range(6)]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process (the Hub's offline switches are read at import)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "camelid", *argv], capture_output=True, text=True, env=e,
                          timeout=300)


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, want", [
    ("hf://datasets/tatsu-lab/alpaca", HubId("tatsu-lab/alpaca")),
    ("hf:/datasets/tatsu-lab/alpaca/train", HubId("tatsu-lab/alpaca", "train")),  # as pathlib.Path leaves it
    ("hf://datasets/yahma/alpaca-cleaned@main/train", HubId("yahma/alpaca-cleaned", "train", "main")),
    ("nlpai-lab/kullm-v2:train", HubId("nlpai-lab/kullm-v2", "train")),
    ("data/alpaca.json", None),
    ("alpaca.parquet", None),
    ("tatsu-lab/alpaca", None),  # no split: a (missing) local path
])
def test_hub_ids_are_told_from_local_paths(name, want):
    assert hub_id(name) == want


def test_a_malformed_hub_url_is_one_line():
    with pytest.raises(CamelidError, match="expected hf://datasets/OWNER/NAME"):
        hub_id("hf://datasets/alpaca")


def test_a_local_path_with_a_colon_stays_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a").mkdir()
    Path("a/b:train").write_text(json.dumps(ALPACA) + "\n")
    assert hub_id("a/b:train") is None


# ---------------------------------------------------------------------------------------------- same records


def test_parquet_arrow_csv_and_save_to_disk_give_the_records_json_gives(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    want = list(read_conversations(jsonl))
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(tmp_path / "rows.parquet")
    ds.to_csv(tmp_path / "rows.csv", index=False)
    ds.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(tmp_path / "saved_dict")
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for src in ("rows.parquet", "rows.csv", "saved", "saved_dict:train", str(arrow)):
        assert list(read_conversations(tmp_path / src if not src.startswith("/") else src)) == want, src
    assert len(list(read_conversations(f"{tmp_path / 'saved_dict'}:test"))) == 2


def test_a_directory_of_parquet_shards_is_read_in_order_with_the_hubs_split_naming(tmp_path):
    flat = tmp_path / "flat"
    write_parquet(flat / "part-0.parquet", ROWS[:4])
    write_parquet(flat / "part-1.parquet", ROWS[4:])
    write_parquet(flat / "part-2.parquet", [])  # an empty shard adds nothing
    assert [rec for _, _, rec in iter_records(flat)] == ROWS
    assert [i for _, i, _ in iter_records(flat)] == list(range(6))  # indices run across the shards
    hub = tmp_path / "hub"
    write_parquet(hub / "data" / "train-00000-of-00002.parquet", ROWS[:3])
    write_parquet(hub / "data" / "train-00001-of-00002.parquet", ROWS[3:])
    write_parquet(hub / "data" / "test-00000-of-00001.parquet", ROWS[:1])
    assert [rec for _, _, rec in iter_records(f"{hub}:train")] == ROWS
    assert [rec for _, _, rec in iter_records(f"{hub}:test")] == ROWS[:1]


def test_nested_sharegpt_records_survive_parquet(tmp_path):
    rows = [SHAREGPT, {**SHAREGPT, "id": "b"}]
    path = write_parquet(tmp_path / "chat.parquet", rows)
    assert [rec for _, _, rec in iter_records(path)] == rows


# ---------------------------------------------------------------------------------------------- commands


def test_data_stats_reads_a_directory_of_parquet(tmp_path, capsys):
    shards = tmp_path / "shards"
    write_parquet(shards / "a.parquet", ROWS[:3])
    write_parquet(shards / "b.parquet", ROWS[3:] + ROWS[:1])  # one duplicate across shards
    code, out, _ = run(capsys, "data", "stats", str(shards) + "/", "--json")
    assert code == 0
    s = json.loads(out)
    assert (s["format"], s["records"], s["duplicates"]["conversations"]) == ("alpaca", 7, 1)


def test_every_data_command_reads_parquet(tmp_path, capsys):
    src = write_parquet(tmp_path / "in.parquet", ROWS)
    assert run(capsys, "data", "validate", str(src))[0] == 0
    assert run(capsys, "data", "convert", str(src), str(tmp_path / "out.jsonl"), "--to", "alpaca")[0] == 0
    assert [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()] == ROWS
    assert run(capsys, "data", "show", str(src), "-n", "2")[0] == 0
    assert run(capsys, "data", "dedup", str(src), "-o", str(tmp_path / "dd.jsonl"))[0] == 0
    chat = write_parquet(tmp_path / "chat.parquet", [SHAREGPT])
    assert run(capsys, "data", "clean", str(chat), "-o", str(tmp_path / "clean.jsonl"))[0] == 0


def test_generate_seeds_and_eval_questions_read_parquet(tmp_path):
    from camelid.evaluate.questions import load_questions
    from camelid.generate.prompts import load_seeds

    src = write_parquet(tmp_path / "in.parquet", ROWS)
    assert [t.instruction for t in load_seeds(src)] == [r["instruction"] for r in ROWS]
    assert [q.turns[0] for q in load_questions(src)] == [r["instruction"] for r in ROWS]


@pytest.mark.slow
def test_train_alpaca_lora_on_a_local_parquet_file(tmp_path, capsys):
    from tests.train.conftest import ALPACA_30

    src = write_parquet(tmp_path / "alpaca.parquet", json.loads(ALPACA_30.read_text()))
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "alpaca_lora", f"data=[{src}]", f"output_dir={out}", "max_steps=2",
                       "global_batch_size=8", "max_length=64")
    assert code == 0, err
    info = json.loads((out / "camelid.json").read_text())
    data = info.get("data") or info.get("train", {}).get("data")
    assert str(src) in json.dumps(data), info
    assert (out / "adapter_config.json").is_file()
    from huggingface_hub import ModelCard  # the run's model card, as the Hub reads it

    card = ModelCard.load(out / "README.md")
    d = card.data.to_dict()
    assert (d["base_model"], d["library_name"], d["license"]) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "peft",
                                                                  "apache-2.0")
    assert "lora" in d["tags"] and "datasets" not in d and "alpaca.parquet" in card.text


# ---------------------------------------------------------------------------------------------- columns


def test_columns_map_other_field_names_in_parquet_and_json(tmp_path, capsys):
    renamed = [{"prompt": r["instruction"], "context": r["input"], "completion": r["output"]} for r in ROWS]
    src = write_parquet(tmp_path / "renamed.parquet", renamed)
    jsonl = tmp_path / "renamed.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in renamed))
    mapping = "instruction=prompt,input=context,output=completion"
    for f in (src, jsonl):
        code, out, _ = run(capsys, "data", "validate", str(f), "--columns", mapping)
        assert code == 0 and "alpaca, 6 records, ok" in out, out
    code, out, _ = run(capsys, "data", "convert", str(src), str(tmp_path / "o.jsonl"), "--to", "alpaca",
                       "--columns", mapping)
    assert code == 0
    assert [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()] == ROWS
    code, _, err = run(capsys, "data", "validate", str(src))  # without the mapping: the format is unknown
    assert code == 1


@pytest.mark.parametrize("mapping, line", [
    ("instruction=prompt,output=answer", "record 0: field 'answer': missing (the column mapping reads it as 'output'"),
    ("output=prompt", "record 0: field 'output': already present"),
    ("instruction", "--columns: 'instruction' is not TARGET=COLUMN"),
    ("instruction=prompt,output=prompt", "--columns: column 'prompt' is mapped twice"),
])
def test_a_column_mapping_that_does_not_fit_is_one_located_line(tmp_path, capsys, mapping, line):
    src = write_parquet(tmp_path / "r.parquet", [{"prompt": "p", "completion": "c", "output": "o"}])
    code, _, err = run(capsys, "data", "stats", str(src), "--columns", mapping)
    assert code == 1
    errors = [x for x in err.splitlines() if x.startswith("camelid: error:")]
    assert len(errors) == 1 and line in errors[0], err


@pytest.mark.parametrize("argv", [
    ["generate", "--seeds", "{src}", "--columns", "instruction=nosuch", "-o", "{out}.jsonl", "--num", "1"],
    ["eval", "answer", "--questions", "{src}", "--columns", "instruction=nosuch", "-o", "{out}.jsonl"],
    ["train", "--data", "{src}", "columns=instruction=nosuch", "-o", "{out}"],
    ["data", "dedup", "{src}", "--columns", "instruction=nosuch", "-o", "{out}.jsonl"],
])
def test_every_reading_command_applies_its_column_mapping(tmp_path, capsys, argv):
    src = write_parquet(tmp_path / "in.parquet", [{"prompt": "p", "output": "o"}])
    code, _, err = run(capsys, *[a.format(src=src, out=tmp_path / "out") for a in argv])
    assert code == 1
    assert f"{src}: record 0: field 'nosuch': missing (the column mapping reads it as 'instruction'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]  # nothing written


def test_train_config_columns_reach_the_reader(tmp_path, capsys):
    from camelid.train.config import load_config

    cfg = load_config(None, ["columns=instruction=prompt,output=completion"], data=["x.parquet"])
    assert cfg.columns == {"instruction": "prompt", "output": "completion"}
    assert load_config(None, [], columns={"instruction": "q"}, data=["x"]).columns == {"instruction": "q"}


# ---------------------------------------------------------------------------------------------- hostile


def _hostile(tmp_path: Path, case: str, rec: dict) -> Path:
    d = tmp_path / "in"
    key = "instruction" if "instruction" in rec else "conversations"
    if case == "a column of the wrong type":
        return write_parquet(d / "wrong.parquet", [{**rec, key: 7}, {**rec, key: 8}])  # an int64 column
    if case == "a missing column":
        return write_parquet(d / "missing.parquet", [{k: v for k, v in rec.items() if k not in ("output", key)}])
    if case == "an empty Parquet file":
        return write_parquet(d / "empty.parquet", [])
    if case == "corrupt Parquet bytes":
        good = write_parquet(d / "x.parquet", [rec]).read_bytes()
        (d / "x.parquet").write_bytes(good[: len(good) // 2])
        return d / "x.parquet"
    if case == "a directory mixing formats":
        write_parquet(d / "mixed" / "a.parquet", [rec])
        (d / "mixed" / "b.csv").write_text("instruction,output\nx,y\n")
        return d / "mixed"
    if case == "a split that does not exist":
        write_parquet(d / "hub" / "data" / "train-00000-of-00001.parquet", [rec])
        return Path(f"{d / 'hub'}:nosuch")
    raise AssertionError(case)


HOSTILE = ["a column of the wrong type", "a missing column", "an empty Parquet file", "corrupt Parquet bytes",
           "a directory mixing formats", "a split that does not exist"]


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_hostile_tables_are_one_located_error_and_nothing_is_written(tmp_path, capsys, command, case):
    argv, rec = COMMANDS[command]
    path = _hostile(tmp_path, case, rec)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = run(capsys, *argv(str(path), str(tmp_path / "out")))
    assert code == 1, out + err
    name = str(path).split(":")[0]
    if command == "validate":
        problems = [x for x in out.splitlines() if not x.endswith(("ok", "problem", "problems"))]
        assert problems and all(name in x for x in problems), out
    else:
        errors = [x for x in err.splitlines() if x.startswith("camelid: error:")]
        assert len(errors) == 1, err
        assert name in errors[0], err
    key = "instruction" if "instruction" in rec else "conversations"
    if case == "a column of the wrong type" and command not in ("clean", "split"):
        assert f"record 0: field '{key}'" in out + err, out + err  # located: the record and the field
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------------------------- the Hub, offline


def test_a_hub_id_offline_and_not_cached_is_one_clear_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for name in ("hf://datasets/tatsu-lab/alpaca", "tatsu-lab/alpaca:train"):
        r = cli("data", "stats", name, env=env)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1, r.stderr
        assert "cannot reach the Hugging Face Hub (offline mode" in lines[0], lines
        assert "tatsu-lab/alpaca" in lines[0]


def _cache_as_if_loaded_online(cache: Path, repo: str, rows: list[dict]) -> None:
    """The layout `load_dataset(repo)` leaves in the datasets cache (OWNER___NAME/CONFIG/VERSION/COMMIT/ with
    NAME-SPLIT.arrow and dataset_info.json), built by datasets' own Parquet builder from a local file."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = write_parquet(cache.parent / "src" / "train.parquet", rows)
    name = repo.split("/")[1]
    b = Parquet(cache_dir=str(cache / "build"), dataset_name=name, config_name="default",
                data_files=DataFilesDict.from_patterns({"train": [str(src)]}, base_path=str(src.parent)))
    b.download_and_prepare()
    built = Path(b.cache_dir)
    dst = cache / repo.replace("/", "___") / "default" / "0.0.0" / ("0" * 40)
    dst.parent.mkdir(parents=True)
    shutil.copytree(built, dst)
    info = json.loads((dst / "dataset_info.json").read_text())
    info["config_name"] = "default"
    (dst / "dataset_info.json").write_text(json.dumps(info))
    shutil.rmtree(cache / "build")


def test_a_hub_dataset_in_the_local_cache_is_read_offline(tmp_path):
    cache = tmp_path / "hf" / "datasets"
    _cache_as_if_loaded_online(cache, "tatsu-lab/alpaca", ROWS)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache)}
    r = cli("data", "stats", "tatsu-lab/alpaca:train", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"] == 6
    r = cli("data", "validate", "hf://datasets/tatsu-lab/alpaca", env=env)  # one split: no need to name it
    assert r.returncode == 0 and "alpaca, 6 records, ok" in r.stdout, r.stdout + r.stderr
    r = cli("data", "stats", "tatsu-lab/alpaca:nosuch", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [x for x in r.stderr.splitlines() if x.strip()] == [
        "camelid: error: tatsu-lab/alpaca:nosuch: no split 'nosuch' (splits: train)"]


# ---------------------------------------------------------------------------------------------- recipes


def test_a_recipe_keeps_hub_ids_and_gives_its_columns_to_the_train_stage(tmp_path):
    from camelid.pipeline.recipe import load_recipe
    from camelid.pipeline.run import train_stage

    write_parquet(tmp_path / "rows.parquet", [{"prompt": r["instruction"], "completion": r["output"]} for r in ROWS])
    (tmp_path / "r.yaml").write_text("name: t\ndata: [rows.parquet, tatsu-lab/alpaca:train, hf://datasets/a/b/test]\n"
                                     "columns: {instruction: prompt, output: completion}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.data == [str(tmp_path / "rows.parquet"), "tatsu-lab/alpaca:train", "hf://datasets/a/b/test"]
    recipe.data = recipe.data[:1]
    _, inputs = train_stage(recipe, tmp_path / "run", {})
    assert inputs["settings"]["columns"] == {"instruction": "prompt", "output": "completion"}
    from camelid.core.columns import using_columns
    from camelid.data.examples import check_data_files

    with using_columns(inputs["settings"]["columns"]):
        check_data_files(recipe.data)  # the mapped file reads as alpaca
    with pytest.raises(CamelidError, match="cannot tell the format"):
        check_data_files(recipe.data)


# ---------------------------------------------------------------------------------------------- fuzz

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.data.test_hostile import through_readers  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".parquet", ".arrow", ".csv"]),
       keep_magic=st.booleans())
def test_random_bytes_as_a_table_never_raise_anything_but_a_located_error(tmp_path, data, suffix, keep_magic):
    if keep_magic and suffix == ".parquet":
        data = b"PAR1" + data + b"PAR1"  # past the magic-number check, into the footer parser
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    through_readers(path)
