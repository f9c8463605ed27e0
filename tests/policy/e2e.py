"""What the policy tests that run a real gateway share: the prompt and the two mocks."""

from __future__ import annotations

from fastproxy.mockllm import MockLLMServer

MSGS = [{"role": "user", "content": "Name a prime number."}]
Mocks = tuple[MockLLMServer, MockLLMServer]
