"""The disk, the path and the process as a user meets them: every failure is one line naming the path, exit 1, and
nothing half-written; outputs keep the modes the umask gives; pairs of files change together; inputs may come from
a pipe; an output is never its own input unless asked."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import atomic_write, clean_stale_temps, write_json
from camelid.data.formats import validate_file

ROWS = [{"instruction": f"Describe the colour number {i} of the rainbow in detail.", "input": "",
         "output": f"Colour {i}."} for i in range(40)]


def alpaca(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def one_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("camelid: error:")]
    assert len(lines) == 1, err
    return lines[0]


def listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("argv", [
    ["data", "convert", "{src}", "{out}", "--to", "openai"],
    ["data", "dedup", "{src}", "-o", "{out}"],
    ["data", "clean", "{sg}", "-o", "{out}"],
    ["generate", "-o", "{out}", "--num", "1"],
])
@pytest.mark.parametrize("where", ["a directory", "under a regular file"])
def test_an_output_that_cannot_be_a_file_is_one_line(tmp_path, capsys, argv, where):
    src = alpaca(tmp_path / "in.jsonl")
    sg = tmp_path / "sg.jsonl"
    sg.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
                  + "\n")
    out = tmp_path / "outdir" if where == "a directory" else src / "x.jsonl"
    if where == "a directory":
        out.mkdir()
    before = listing(tmp_path)
    code, err = run(capsys, *(a.format(src=src, sg=sg, out=out) for a in argv))
    assert code == 1
    line = one_error(err)
    assert ("is a directory" in line) if where == "a directory" else (f"{src} is a file" in line), line
    assert listing(tmp_path) == before


@pytest.mark.parametrize("argv", [
    ["data", "dedup", "{d}", "-o", "{out}"],
    ["data", "convert", "{d}", "{out}", "--to", "openai"],
    ["generate", "--seeds", "{d}", "-o", "{out}", "--num", "1"],
    ["train", "--data", "{d}", "-o", "{out}"],
])
def test_an_input_directory_without_data_files_is_one_line(tmp_path, capsys, argv):
    """A directory is read as dataset shards (Parquet/Arrow/CSV); one that holds none is a located error."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "notes.txt").write_text("not a shard\n")
    code, err = run(capsys, *(a.format(d=d, out=tmp_path / "out.jsonl") for a in argv))
    assert code == 1 and f"{d}: no data files" in one_error(err)
    assert listing(tmp_path) == ["data", "data/notes.txt"]


def test_a_full_disk_mid_write_is_one_line_and_leaves_nothing(tmp_path):
    """A real write failure from the kernel (the file-size limit: EFBIG, the same path through the code as ENOSPC)."""
    src = alpaca(tmp_path / "in.jsonl", ROWS * 200)
    out = tmp_path / "out.jsonl"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    for argv in (["data", "convert", src, out, "--to", "sharegpt"], ["data", "dedup", src, "-o", out]):
        p = subprocess.run([sys.executable, "-m", "camelid", *map(str, argv)], capture_output=True, text=True,
                           preexec_fn=limit, timeout=300)
        assert p.returncode == 1, p.stderr
        assert "Traceback" not in p.stderr
        line = one_error(p.stderr)
        assert f"{tmp_path}/out." in line and "too large" in line.lower(), line  # the output or its sidecar
        assert listing(tmp_path) == ["in.jsonl"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_one_line(tmp_path, capsys):
    src = alpaca(tmp_path / "in.jsonl")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = run(capsys, "data", "convert", src, ro / "out.jsonl", "--to", "openai")
        assert code == 1 and "permission denied" in one_error(err).lower()
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------------------- inputs from pipes


def test_inputs_may_come_from_a_pipe_stdin_or_a_process_substitution(tmp_path):
    src = alpaca(tmp_path / "in.jsonl")
    want = subprocess.run([sys.executable, "-m", "camelid", "data", "convert", str(src), str(tmp_path / "a.jsonl"),
                           "--to", "sharegpt"], capture_output=True, text=True)
    assert want.returncode == 0, want.stderr
    for i, cmd in enumerate([
        f"{sys.executable} -m camelid data convert <(cat {src}) {tmp_path}/b0.jsonl --to sharegpt",
        f"cat {src} | {sys.executable} -m camelid data convert - {tmp_path}/b1.jsonl --to sharegpt",
        f"{sys.executable} -m camelid data convert /dev/stdin {tmp_path}/b2.jsonl --to sharegpt < {src}",
    ]):
        p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / f"b{i}.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    p = subprocess.run(["bash", "-c", f"cat {src} | {sys.executable} -m camelid data validate -"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "alpaca, 40 records, ok" in p.stdout


# ---------------------------------------------------------------------------------------------- no silent overwrite


def test_an_output_that_is_its_own_input_is_refused_unless_forced(tmp_path, capsys):
    src = alpaca(tmp_path / "in.jsonl")
    before = src.read_bytes()
    for argv in (["data", "convert", src, src, "--to", "openai"], ["data", "dedup", src, "-o", src]):
        code, err = run(capsys, *argv)
        assert code == 1 and "is also the input" in one_error(err) and "--force" in err
        assert src.read_bytes() == before
    code, _ = run(capsys, "data", "convert", src, src, "--to", "openai", "--force")
    assert code == 0 and validate_file(src).format == "openai" and validate_file(src).records == 40


@pytest.mark.parametrize("threshold", ["-1", "0", "1.5", "nan"])
def test_dedup_threshold_must_be_a_rouge_score(tmp_path, capsys, threshold):
    src = alpaca(tmp_path / "in.jsonl")
    code, err = run(capsys, "data", "dedup", src, "-o", tmp_path / "out.jsonl", "--threshold", threshold)
    assert code == 1 and "--threshold" in one_error(err)
    assert listing(tmp_path) == ["in.jsonl"]


# ---------------------------------------------------------------------------------------------- pairs and temps


def test_dedup_replaces_its_output_and_sidecar_together_or_neither(tmp_path, capsys):
    src = alpaca(tmp_path / "in.jsonl", ROWS + ROWS[:5])
    out = tmp_path / "out.jsonl"
    assert run(capsys, "data", "dedup", src, "-o", out)[0] == 0
    old = out.read_bytes(), (tmp_path / "out.rejected.jsonl").read_bytes()
    alpaca(src, ROWS[:10] + ROWS[:3])
    (tmp_path / "out.rejected.jsonl").unlink()
    (tmp_path / "out.rejected.jsonl").mkdir()  # the sidecar cannot be written: the output must not change either
    code, err = run(capsys, "data", "dedup", src, "-o", out)
    assert code == 1 and "out.rejected.jsonl" in one_error(err)
    assert out.read_bytes() == old[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_temp_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.{dead.stdout.strip()}.x1y2.tmp"
    stale.write_text("half")
    alive = tmp_path / f".out.json.{os.getpid()}.other.tmp"  # a writer still running: left alone
    alive.write_text("busy")
    write_json(target, {"v": 1})
    assert not stale.exists() and alive.exists()
    alive.unlink()
    killed = subprocess.Popen([sys.executable, "-c", f"""
import time
from camelid.core.io import atomic_write
with atomic_write({str(target)!r}) as f:
    f.write("x"); f.flush(); print("writing", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "writing"
    killed.kill()
    killed.wait()
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1
    assert clean_stale_temps(target) and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask_and_keep_an_existing_mode(tmp_path, capsys, mask, mode):
    src = alpaca(tmp_path / "in.jsonl")
    old = os.umask(mask)
    try:
        assert run(capsys, "data", "dedup", src, "-o", tmp_path / "d.jsonl")[0] == 0
        assert run(capsys, "data", "convert", src, tmp_path / "c.json", "--to", "openai")[0] == 0
        for name in ("d.jsonl", "d.rejected.jsonl", "c.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
        (tmp_path / "c.json").chmod(0o640)
        assert run(capsys, "data", "convert", src, tmp_path / "c.json", "--to", "sharegpt")[0] == 0
        assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o640
        with atomic_write(tmp_path / "new" / "deeper" / "f.txt") as f:
            f.write("x")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o777 & ~mask
    finally:
        os.umask(old)


def test_a_directory_written_atomically_reads_like_any_other(tmp_path):
    from camelid.core.io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"0")
        assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------------- one reader


def test_clean_writes_roles_validate_accepts(tmp_path, capsys):
    src = tmp_path / "sg.json"
    src.write_text(json.dumps([{"id": "1", "conversations": [{"from": "Human", "value": "Hi there, who are you?"},
                                                             {"from": "GPT", "value": "A helpful assistant."}]}]))
    code, err = run(capsys, "data", "clean", src, "-o", tmp_path / "out.json")
    assert code == 0 and "renamed roles" in err
    assert validate_file(tmp_path / "out.json").ok
    rec = json.loads((tmp_path / "out.json").read_text())[0]
    assert [m["from"] for m in rec["conversations"]] == ["human", "gpt"]


def test_a_bom_before_a_json_list_reads_the_same_everywhere(tmp_path, capsys):
    src = tmp_path / "bom.json"
    src.write_text("\ufeff" + json.dumps(ROWS), encoding="utf-8")
    assert run(capsys, "data", "dedup", src, "-o", tmp_path / "d.jsonl")[0] == 0
    from camelid.generate.prompts import load_seeds

    assert len(load_seeds(src)) == 40


def test_train_names_an_empty_directory_and_a_question_file(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    code, err = run(capsys, "train", "--data", d, "-o", tmp_path / "run")
    assert code == 1 and f"{d}: no data files" in one_error(err)
    q = tmp_path / "mt_bench.jsonl"
    q.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]}) + "\n")
    code, err = run(capsys, "train", "--data", q, "-o", tmp_path / "run")
    line = one_error(err)
    assert code == 1 and str(q) in line and "no answers" in line
    assert listing(tmp_path) == ["data", "mt_bench.jsonl"]
