"""A real server on a free loopback port over the session's embedded llama.cpp model."""

from __future__ import annotations

import pytest

from camelid.serve.server import BackgroundServer, create_app


@pytest.fixture(scope="module")
def server(embedded):
    """`camelid serve` in-process (uvicorn in a thread); waits for /health."""
    app = create_app(embedded, max_queue=4)
    with BackgroundServer(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture()
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
