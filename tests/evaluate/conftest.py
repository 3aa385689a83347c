"""Fixtures for the evaluate tests: a one-thread embedded model and small answer files in FastChat's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol(embedded):
    """The embedded SmolLM2-135M (llama.cpp, one thread per physical core: see models.llamacpp.default_threads)."""
    return embedded


def write_answers(path: Path, model_id: str, answers: dict) -> Path:
    """An answer file in FastChat's shape: {question_id: [turn texts]}."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, turns in answers.items():
            f.write(json.dumps({"question_id": qid, "answer_id": f"{model_id}-{qid}", "model_id": model_id,
                                "choices": [{"index": 0, "turns": turns, "finish_reason": ["stop"] * len(turns)}],
                                "tstamp": 0.0}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def vicuna10(shared_data, tmp_path) -> Path:
    src = shared_data / "fastchat" / "vicuna_bench_question.jsonl"
    out = tmp_path / "vicuna10.jsonl"
    out.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:10]), encoding="utf-8")
    return out


@pytest.fixture
def two_models(vicuna10, tmp_path) -> tuple[Path, Path]:
    """Two answer files for the 10 questions: `terse` answers in a few words, `verbose` at length (except q3)."""
    from camelid.evaluate.questions import load_questions

    qs = load_questions(vicuna10)
    terse = {q.question_id: [f"Short answer {q.question_id}."] for q in qs}
    verbose = {q.question_id: [("A long, careful answer. " * 8).strip()] for q in qs}
    verbose[3] = ["Tiny."]
    return (write_answers(tmp_path / "terse.jsonl", "terse", terse),
            write_answers(tmp_path / "verbose.jsonl", "verbose", verbose))
