"""What the named-key tests that run a real gateway share: the keys, the config tree
that names them, and clients of the admin listener."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for

MSGS = [{"role": "user", "content": "Name a prime number."}]
# ci-bot is configured by its digest, notebook through a variable: both ways a secret
# stays out of the file. The plain list's key is the pre-named-keys way.
CI_SECRET = "sk-ci-bot-7f3c9a1e5b2d4680"
CI_SHA256 = hashlib.sha256(CI_SECRET.encode()).hexdigest()
NOTEBOOK_SECRET = "sk-notebook-2b8e6d4f0a1c3957"
NOTEBOOK_ENV = "KEYS_TEST_NOTEBOOK_SECRET"
PLAIN_SECRET = "sk-plain-list-5e7a9c1b3d"
ENV = {NOTEBOOK_ENV: NOTEBOOK_SECRET}
CI_MODELS = ["gpt-4o", "gpt-4o-mini", "claude-haiku-*"]


def ci_key(**extra: Any) -> dict[str, Any]:
    return {
        "name": "ci-bot",
        "secret_sha256": CI_SHA256,
        "team": "platform",
        "models": CI_MODELS,
        **extra,
    }


def notebook_key(**extra: Any) -> dict[str, Any]:
    return {"name": "notebook", "secret_env": NOTEBOOK_ENV, "team": "research", **extra}


def keyed_tree(
    mock: MockLLMServer, keys: list[dict[str, Any]], tracked: bool = True
) -> dict[str, Any]:
    return {
        "backends": {
            "openai.1": backend_for(mock, "openai"),
            "anthropic.1": backend_for(mock, "anthropic"),
        },
        "default_backend": "openai.1",
        "auth": {"api_keys": [PLAIN_SECRET], "keys": keys},
        "usage_tracking": {"enabled": tracked, "flush_interval_seconds": 0.05},
    }


def admin(gw: RunningGateway, path: str, **params: str) -> Any:
    """A GET on the admin listener (loopback, no admin keys configured), as JSON."""
    port = gw.gateway.admin_port
    assert port is not None
    r = httpx.get(f"http://127.0.0.1:{port}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def admin_text(gw: RunningGateway, path: str) -> str:
    port = gw.gateway.admin_port
    assert port is not None
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert r.status_code == 200, r.text
    return r.text
