"""A real OpenAI-compatible server (llama.cpp's, with the embedded GGUF) for the generation tests."""

from __future__ import annotations

import pytest

from camelid.models import embedded_gguf

from ..models.servers import LlamaCppServer


@pytest.fixture(scope="module")
def llama_server():
    server = LlamaCppServer(str(embedded_gguf()), n_ctx=2048)
    yield server
    server.close()
