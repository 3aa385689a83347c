"""Dataset statistics, the generation extras (similarity, rejected reasons), plots and `show`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from camelid.core.io import DataError
from camelid.data.stats import distribution, rejected_path, show, stats

FIX = Path(__file__).parent / "fixtures"


def test_alpaca_counts_lengths_and_duplicates():
    s = stats(FIX / "alpaca.json")
    assert (s["format"], s["records"], s["conversations"], s["messages"], s["turns"]) == ("alpaca", 8, 8, 16, 8)
    assert s["empty_inputs"] == 4  # two empty, one missing, plus the duplicate row
    assert s["duplicates"] == {"conversations": 1, "prompts": 1}
    assert s["words"]["assistant"]["count"] == 8 and s["words"]["assistant"]["min"] == 1  # "positive"
    assert s["words"]["user"]["max"] == 11  # the instruction with its input joined, as a model sees it
    assert s["tokens"] is None and s["similarity"] is None and s["rejected"] is None


def test_multi_turn_and_seed_task_counts(shared_data):
    s = stats(FIX / "sharegpt.json")
    assert (s["records"], s["messages"], s["turns"], s["system_messages"]) == (2, 7, 3, 1)
    assert s["turns_per_conversation"]["max"] == 2 and s["empty_inputs"] is None
    s = stats(shared_data / "self-instruct/seed_tasks.jsonl")
    instances = sum(len(json.loads(line)["instances"]) for line in open(shared_data / "self-instruct/seed_tasks.jsonl"))
    assert (s["records"], s["conversations"]) == (175, instances)


def test_token_lengths_use_the_models_tokenizer(embedded):
    s = stats(FIX / "openai.jsonl", tokenizer=embedded)
    assert s["tokens"]["assistant"] == distribution([embedded.count_tokens("4"), embedded.count_tokens("서울")])
    s = stats(FIX / "openai.jsonl", tokenizer=len)  # any text -> int callable works too
    assert s["tokens"]["user"]["max"] == len("Capital of Korea?")


def test_generated_data_reports_similarity_and_rejected_reasons():
    s = stats(FIX / "generated.json")
    assert s["similarity"]["records"] == 2
    assert s["similarity"]["avg_similarity_score"]["max"] == 0.4
    assert s["similarity"]["max_similarity"]["min"] == 0.4 and s["similarity"]["max_similarity"]["max"] == 0.5
    assert s["rejected"] == {"file": str(FIX / "generated.rejected.jsonl"), "total": 3,
                             "by_reason": {"too_similar": 2, "blacklisted_word": 1}}


def test_the_rejected_sidecar_is_found_beside_json_and_jsonl_outputs(tmp_path):
    data = tmp_path / "regen.jsonl"
    shutil.copy(FIX / "alpaca.jsonl", data)
    assert rejected_path(data) is None
    side = tmp_path / "regen.jsonl.rejected.jsonl"
    side.write_text('{"reason": "empty_output"}\n{"instruction": "no reason given"}\n{"reason": "too_lo')  # torn
    assert rejected_path(data) == side
    assert stats(data)["rejected"]["by_reason"] == {"empty_output": 1, "(no reason)": 1, "(unreadable line)": 1}


def test_distribution_uses_nearest_rank_percentiles():
    assert distribution(range(1, 101)) == {"count": 100, "min": 1, "mean": 50.5, "p50": 50, "p90": 90, "p99": 99,
                                           "max": 100}
    assert distribution([]) == {"count": 0}


def test_plot_writes_a_png_atomically(tmp_path):
    png = tmp_path / "plots" / "stats.png"
    stats(FIX / "generated.json", plot=png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["stats.png"]
    stats(FIX / "sharegpt.json", plot=tmp_path / "multi.png", tokenizer=len)
    assert (tmp_path / "multi.png").stat().st_size > 10_000


def test_stats_of_a_broken_file_raise_a_located_error():
    with pytest.raises(DataError, match="wrong_type.jsonl:2: field 'input'"):
        stats(FIX / "wrong_type.jsonl")


def test_show_prints_the_first_records_of_any_format_and_reads_no_further(tmp_path):
    buf = io.StringIO()
    assert show(FIX / "alpaca.jsonl", n=3, console=Console(file=buf, width=100)) == 3
    text = buf.getvalue()
    assert "Translate the sentence into French." in text and "The cat sleeps." in text and "kullm_7" in text
    assert "Classify the sentiment" not in text
    buf = io.StringIO()
    # the second record is broken: showing one never reaches it
    assert show(FIX / "missing_field.json", n=1, console=Console(file=buf, width=100)) == 1
    buf = io.StringIO()
    assert show(FIX / "sharegpt.json", n=10, console=Console(file=buf, width=100)) == 2
    assert "Be brief." in buf.getvalue() and "system" in buf.getvalue()
