"""The mock LLM server: a deterministic OpenAI + Anthropic stand-in.

Used by the gateway's tests, its benchmarks and the embedded demo backend. A raw asyncio
protocol on uvloop + httptools, steerable per request (``x-mock-*`` headers, ``model@k=v``)
or persistently (``set_behaviour``, ``POST /_mock/behaviour``). See docs/mock-llm.md.
"""

from .behaviour import FAULT_KINDS, MockBehaviour, SteeringError
from .cli import main
from .server import DEFAULT_MODELS, MockLLMServer, MockStats, RecordedRequest

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_KINDS",
    "MockBehaviour",
    "MockLLMServer",
    "MockStats",
    "RecordedRequest",
    "SteeringError",
    "main",
]
