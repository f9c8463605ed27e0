"""Frontend dialects. Each module renders errors and knows its stream's terminal event."""

from types import ModuleType

from . import anthropic, openai
from .usage import BackendUsage, from_anthropic, from_openai

DIALECTS: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic}

__all__ = ["DIALECTS", "BackendUsage", "anthropic", "from_anthropic", "from_openai", "openai"]
