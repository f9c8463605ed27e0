"""Fixtures of the named-key tests: a gateway whose data port takes two named keys and
the plain list's key, in front of the real mock LLM, with usage tracking on."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway

from .e2e import ENV, NOTEBOOK_ENV, ci_key, keyed_tree, notebook_key


@pytest.fixture
def keyed(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> RunningGateway:
    # The secret's variable is only in the env the gateway is given (not this process's):
    # the loader checks it there and the data plane reads it from there.
    assert NOTEBOOK_ENV not in os.environ
    return gateway_factory(keyed_tree(mock_llm, [ci_key(), notebook_key()]), env=dict(ENV))
