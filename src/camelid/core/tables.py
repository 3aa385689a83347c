"""Datasets that are not JSON: Parquet, Arrow and CSV files, directories of them (Hub-style shards, the output of
`datasets.save_to_disk`) and Hugging Face Hub ids, read through 🤗 `datasets` into the same `(line, index, record)`
stream as the JSON reader (`core.records.iter_records`), so every command that reads data reads these too.

Names (`NAME` is `owner/dataset`, optionally `@revision`):
- `hf://datasets/NAME` or `hf://datasets/NAME/SPLIT`, and `NAME:SPLIT`: a Hub dataset, loaded once into the local
  `datasets` cache (offline, `HF_HUB_OFFLINE=1`, it is read from there);
- `FILE.parquet`, `FILE.arrow`, `FILE.csv`, a directory of such files, a `save_to_disk` directory; `DIR:SPLIT` picks a
  split where the directory holds several (shards named the Hub's way: `train-00000-of-00002.parquet`, ...).

Local files are streamed (`streaming=True`: nothing is copied into the cache, memory stays flat); a Hub dataset is
memory-mapped from the cache. A record has no line, so problems name the record index (`FILE: record N`), counted
across a directory's files in sorted order; a file that cannot be read is named itself.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from camelid.core.errors import CamelidError, Problem

TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
KIND_NAMES = {"parquet": "Parquet", "arrow": "Arrow", "csv": "CSV", "json": "JSON/JSONL"}
_JSON_SUFFIXES = (".json", ".jsonl")
_HUB_PREFIXES = ("hf://datasets/", "hf:/datasets/")  # pathlib turns the first into the second
_PART = r"[A-Za-z0-9][\w.-]*"
_HUB_NAME = re.compile(rf"({_PART}/{_PART})(?:@([\w./-]+?))?")
_SPLIT = re.compile(r"[\w.-]+")


@dataclass(frozen=True)
class HubId:
    repo: str
    split: str | None = None
    revision: str | None = None


def hub_id(name: str) -> HubId | None:
    """The Hub dataset a name means (`hf://datasets/NAME[/SPLIT]` or `NAME:SPLIT`), or None for a local path.
    `NAME:SPLIT` is a Hub id only when no such local path exists and NAME is not a local directory."""
    for prefix in _HUB_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):].strip("/")
            m = re.fullmatch(rf"{_HUB_NAME.pattern}(?:/({_SPLIT.pattern}))?", rest)
            if not m:
                raise CamelidError(f"{name}: not a Hub dataset id; expected hf://datasets/OWNER/NAME[@REVISION]"
                                   "[/SPLIT]")
            return HubId(m.group(1), m.group(3), m.group(2))
    if ":" in name and not os.path.exists(name):
        base, split = name.rsplit(":", 1)
        m = _HUB_NAME.fullmatch(base)
        if m and _SPLIT.fullmatch(split) and not os.path.exists(base):
            return HubId(m.group(1), split, m.group(2))
    return None


def _local_split(name: str) -> tuple[str, str | None]:
    """`DIR:SPLIT` -> (DIR, SPLIT) when DIR is a local directory and no path `DIR:SPLIT` exists."""
    if ":" in name and not os.path.exists(name):
        base, split = name.rsplit(":", 1)
        if _SPLIT.fullmatch(split) and os.path.isdir(base):
            return base, split
    return name, None


def is_table(path: str | os.PathLike) -> bool:
    """Whether `path` is read here (a Hub id, a Parquet/Arrow/CSV file, a directory) rather than as JSON."""
    name = str(path)
    if name == "-":
        return False
    if hub_id(name) is not None:
        return True
    base, _ = _local_split(name)
    return Path(base).suffix.lower() in TABLE_SUFFIXES or os.path.isdir(base)


def check_table(path: str | os.PathLike) -> None:
    """CamelidError unless a local table source exists and is readable (a Hub id is checked when it is read)."""
    name = str(path)
    if hub_id(name) is not None:
        return
    base, _ = _local_split(name)
    p = Path(base)
    try:
        p.stat()
    except FileNotFoundError:
        raise CamelidError(f"{name}: no such file") from None
    except PermissionError:
        raise CamelidError(f"{name}: permission denied") from None
    if not p.is_dir() and not os.access(p, os.R_OK):
        raise CamelidError(f"{name}: permission denied")


# ---------------------------------------------------------------------------------------------- values


def _jsonable(value: Any, where: str) -> Any:
    """A row value as JSON's types; ValueError(field, message) for what JSON has no form for."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise _Bad(where, f"{value} is not a JSON number")
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        raise _Bad(where, f"a {type(value).__name__} value; camelid reads text, numbers, booleans, lists and objects "
                   "(cast the column to a string, or map another column with --columns)")
    if isinstance(value, (bytes, bytearray)):
        raise _Bad(where, "binary data; camelid reads text (map a text column with --columns)")
    raise _Bad(where, f"a {type(value).__name__} value, which has no JSON form")


class _Bad(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field or None, message


# ---------------------------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _quiet() -> Iterator[Any]:
    """`datasets`, imported lazily (a few seconds), with its progress bars and log lines off: every problem
    becomes one located line here instead."""
    try:
        import datasets
    except ImportError:
        raise CamelidError("reading Parquet, Arrow, CSV and Hub datasets needs the datasets package: pip install "
                           "'camelid[hub]' (or datasets)") from None

    bars = datasets.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _splits_line(name: str, splits: list[str], split: str | None) -> str:
    have = ", ".join(splits) or "none"
    if split is not None:
        return f"{name}: no split {split!r} (splits: {have})"
    return f"{name}: holds the splits {have}: name one, e.g. {name.rstrip('/')}:{splits[0]}"


def _pick(name: str, splits: list[str], split: str | None) -> str:
    """The split to read: the one named, else the only one (several unnamed is an error, never a silent choice)."""
    if split is not None:
        if split not in splits:
            raise CamelidError(_splits_line(name, splits, split))
        return split
    if len(splits) == 1:
        return splits[0]
    raise CamelidError(_splits_line(name, splits, None))


def _data_files(name: str, root: Path, split: str | None) -> tuple[str, list[Path]]:
    """(kind, files) of a directory: one format only, split by the Hub's file naming."""
    found: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(x.startswith((".", "_")) for x in rel) or not p.is_file():
            continue  # .cache/, _SUCCESS, .gitattributes: not data
        suffix = p.suffix.lower()
        kind = TABLE_SUFFIXES.get(suffix) or ("json" if suffix in _JSON_SUFFIXES else None)
        if kind:
            found.setdefault(kind, []).append(p)
    if not found:
        raise CamelidError(f"{name}: no data files (.parquet, .arrow, .csv) in this directory")
    if len(found) > 1:
        mix = " and ".join(f"{KIND_NAMES[k]} ({len(v)} file{'s' * (len(v) != 1)})" for k, v in found.items())
        raise CamelidError(f"{name}: mixes {mix}: give a directory of one format, or name the files")
    kind, files = next(iter(found.items()))
    if kind == "json":
        raise CamelidError(f"{name}: holds JSON/JSONL files; name them (data=[a.jsonl, b.jsonl]) so that problems "
                           "are located by file and line")
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:  # the Hub's split naming (train-00000-of-00002.parquet, data/test/...): datasets' own resolution
        resolved = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
        wanted = {str(f.resolve()) for f in files}
        by_split = {str(s): [Path(f) for f in fs if str(Path(f).resolve()) in wanted] for s, fs in resolved.items()}
        by_split = {s: fs for s, fs in by_split.items() if fs}
    except Exception:  # nothing matched a split pattern: one unnamed split
        by_split = {}
    if sum(len(fs) for fs in by_split.values()) != len(files):
        by_split = {"train": files}  # files outside the naming scheme: read them all, as one split
    chosen = _pick(name, list(by_split), split)
    return kind, by_split[chosen]


def _rows_of_file(name: str, datasets: Any, kind: str, f: Path) -> Iterator[dict] | Problem:
    """Stream one local file's rows (or a Problem naming it when it cannot be opened)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            if pq.read_metadata(f).num_rows == 0:
                return iter(())  # an empty shard adds nothing (datasets' reader fails on it)
        except Exception as e:
            return Problem(str(f), None, None, f"not a readable Parquet file ({_why(e)})")
    kwargs = {"keep_default_na": False} if kind == "csv" else {}  # "" and "NA" stay text
    try:
        return iter(datasets.load_dataset(kind, data_files=str(f), split="train", streaming=True, **kwargs))
    except Exception as e:
        return Problem(str(f), None, None, f"not a readable {KIND_NAMES[kind]} file ({_why(e)})")


_HUB_LOADED: dict[HubId, Any] = {}


def _hub_rows(name: str, h: HubId, datasets: Any) -> Any:
    """A Hub dataset's split, loaded once per process (downloaded into the cache, or read from it offline)."""
    if h in _HUB_LOADED:
        return _HUB_LOADED[h]
    from datasets.exceptions import DatasetNotFoundError

    try:
        ds = datasets.load_dataset(h.repo, revision=h.revision)
    except ConnectionError:
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise CamelidError(f"{name}: cannot reach the Hugging Face Hub{offline} and {h.repo} is not in the local "
                           f"datasets cache ({datasets.config.HF_DATASETS_CACHE}); load it once online, or pass a "
                           "local Parquet/JSON file") from None
    except DatasetNotFoundError as e:
        raise CamelidError(f"{name}: {_why(e)}") from None
    except Exception as e:
        raise CamelidError(f"{name}: cannot load the Hub dataset {h.repo} ({type(e).__name__}: {_why(e)})") from None
    split = _pick(name, list(ds), h.split)
    _HUB_LOADED[h] = ds[split]
    return ds[split]


def _sources(name: str, datasets: Any) -> Iterator[tuple[str, Any]]:
    """(file name for problems, rows or a Problem) for each part of a table source, in order."""
    h = hub_id(name)
    if h is not None:
        yield name, _hub_rows(name, h, datasets)
        return
    base, split = _local_split(name)
    p = Path(base)
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:
            yield name, Problem(name, None, None, f"not a readable saved dataset ({_why(e)})")
            return
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[_pick(name, list(ds), split)]
        elif split is not None:
            raise CamelidError(_splits_line(name, [], split).replace("splits: none", "a single dataset, no splits"))
        yield name, ds
        return
    if p.is_dir():
        kind, files = _data_files(name, p, split)
    else:
        if split is not None:
            raise CamelidError(f"{name}: a single file has no splits")
        kind, files = TABLE_SUFFIXES[p.suffix.lower()], [p]
    for f in files:
        yield (name if f == p else str(f)), _rows_of_file(name, datasets, kind, f)


def display(name: str) -> str:
    """A source's name as the user wrote it: pathlib (typer's Path arguments) turns hf://datasets/ into hf:/datasets/."""
    return "hf://datasets/" + name[len("hf:/datasets/"):] if name.startswith("hf:/datasets/") else name


def iter_table_records(path: str | os.PathLike) -> Iterator[tuple[None, int, Any] | Problem]:
    """Stream `(None, index, record)` from a table source; problems are yielded in place (a value JSON cannot hold
    names its record and field, and reading goes on; an unreadable file ends the stream)."""
    name = display(str(path))
    index = 0
    try:
        with _quiet() as datasets:
            for where, rows in _sources(name, datasets):
                if isinstance(rows, Problem):
                    yield rows
                    return
                try:
                    for row in rows:
                        try:
                            yield None, index, _jsonable(dict(row), "")
                        except _Bad as e:
                            yield Problem(name, None, e.field, e.message, index)
                        index += 1
                except CamelidError:
                    raise
                except Exception as e:  # a file that breaks part way (truncated Parquet, a ragged CSV line)
                    yield Problem(where, None, None, f"cannot read past record {index} ({_why(e)})", index)
                    return
    except CamelidError as e:
        yield Problem(name, None, None, str(e).removeprefix(f"{name}: "))
        return
    if index == 0:
        yield Problem(name, None, None, "no rows")


def data_sha256(path: str | os.PathLike) -> str:
    """What a run records of its data: a file's SHA-256, a directory's (over its files' names and hashes, in order),
    or for a Hub id the loaded split's `datasets` fingerprint (the cache's content, as the run read it)."""
    name = display(str(path))
    h = hub_id(name)
    if h is not None:
        with _quiet() as datasets:
            return "datasets:" + _hub_rows(name, h, datasets)._fingerprint
    base, split = _local_split(name)
    p = Path(base)
    if not p.is_dir():
        return _file_sha256(p)
    digest = hashlib.sha256((split or "").encode())
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p)
        if not any(part.startswith(".") for part in rel.parts):
            digest.update(f"{rel.as_posix()}\0{_file_sha256(f)}\n".encode())
    return digest.hexdigest()


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def data_path(path: str | os.PathLike) -> str:
    """The name a run records: a local path made absolute, a Hub id as given."""
    name = str(path)
    if hub_id(name) is not None:
        return display(name)
    base, split = _local_split(name)
    return str(Path(base).resolve()) + (f":{split}" if split else "")
