"""What the rate-limit and budget tests that run a real gateway share: named keys, the
two SDK clients, and the config tree around one mock LLM."""

from __future__ import annotations

import hashlib
from typing import Any

import anthropic
import openai

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for

ALICE, BOB, CAROL = "sk-alice-0123456789", "sk-bob-0123456789", "sk-carol-0123456789"


def key(name: str, secret: str, **extra: Any) -> dict[str, Any]:
    """A named key configured by its digest (the config file holds no secret)."""
    return {"name": name, "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(), **extra}


def tree(mock: MockLLMServer, keys: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """gpt-4o on an OpenAI-type backend, claude-sonnet-4-5 on an Anthropic-type one,
    both the same mock; ``keys`` as ``auth.keys``."""
    auth = {"keys": keys, **extra.pop("auth", {})}
    return {
        "backends": {
            "openai.1": backend_for(mock, "openai", models=["gpt-4o"]),
            "anthropic.1": backend_for(mock, "anthropic", models=["claude-sonnet-4-5"]),
        },
        "default_backend": "openai.1",
        "health_check": {"enabled": False},
        "usage_tracking": {"enabled": False},
        "auth": auth,
        **extra,
    }


def oai(url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)


def ant(url: str, secret: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=secret, max_retries=0)


MSGS = [{"role": "user", "content": "Name a prime number."}]
