"""Fixtures shared by the whole suite: the reference data beside the checkout and the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (public reference files); tests that need it skip cleanly on a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M through llama.cpp, loaded once for the session."""
    from camelid.models import load_model

    model = load_model("embedded", n_ctx=2048)
    yield model
    model.close()


@pytest.fixture(autouse=True, scope="session")
def _quiet_env():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
