"""Steering: how a test tells the mock what to do with a request.

Three sources, lowest to highest precedence:

1. persistent behaviour (``MockLLMServer.set_behaviour`` or ``POST /_mock/behaviour``), first
   the one set for all paths, then those whose ``path_prefix`` matches, shorter prefixes first;
2. the model name, ``gpt-4o@tokens=50,fault=reset_after:3``, for clients that cannot set
   headers (the echoed model is the part before ``@``);
3. ``x-mock-<field>`` request headers (dashes for underscores), because the test that sends a
   request knows best what it wants from that one request.

Values are validated where they enter, so a typo in a test fails loudly with a 400 naming the
field instead of silently producing a normal response.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

FAULT_KINDS = frozenset(
    {"reset_after", "close_after", "hang", "hang_after_headers", "malformed_sse", "trickle", "drop"}
)
_COUNTED_FAULTS = frozenset({"reset_after", "close_after"})

DEFAULT_TOKENS = 16


class SteeringError(ValueError):
    """A steering value that cannot be used; rendered as a 400 in the caller's dialect."""


@dataclass(slots=True)
class MockBehaviour:
    """Optional steering fields; ``None`` means "not set here, fall through to a lower source"."""

    tokens: int | None = None  # completion tokens (content events)
    ttfb_ms: float | None = None  # delay before the status line
    ttft_ms: float | None = None  # streams: delay after the headers, before the first event
    interval_ms: float | None = None  # delay between stream events (or trickle pieces)
    event_bytes: int | None = None  # pad each content token to about this many bytes
    status: int | None = None  # answer this status with a dialect error body
    retry_after: float | None = None  # seconds, sent as Retry-After
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None  # reported as usage.cost, as OpenRouter does
    fault: str | None = None  # see FAULT_KINDS; counted faults take ":N"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "behaviour") -> MockBehaviour:
        """Validate and coerce ``{field: value}`` (strings allowed, as from headers)."""
        out = cls()
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in _FIELD_TYPES:
                raise SteeringError(f"unknown steering field {key!r} in {source}")
            setattr(out, name, None if raw is None else _coerce(name, raw, source))
        return out

    def merged(self, higher: MockBehaviour | None) -> MockBehaviour:
        """A copy where every field set in ``higher`` overrides this one."""
        if higher is None:
            return self
        changes = {f: v for f in _FIELD_NAMES if (v := getattr(higher, f)) is not None}
        return replace(self, **changes) if changes else self

    def as_dict(self) -> dict[str, Any]:
        return {f: v for f in _FIELD_NAMES if (v := getattr(self, f)) is not None}


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(MockBehaviour))
_INT_FIELDS = frozenset(
    {"tokens", "event_bytes", "status", "cache_read", "cache_write", "reasoning_tokens"}
)
_FIELD_TYPES: dict[str, str] = {
    name: ("fault" if name == "fault" else "int" if name in _INT_FIELDS else "float")
    for name in _FIELD_NAMES
}


def _coerce(name: str, raw: Any, source: str) -> Any:
    kind = _FIELD_TYPES[name]
    where = f"{name}={raw!r} ({source})"
    if kind == "fault":
        if not isinstance(raw, str):
            raise SteeringError(f"invalid steering {where}: expected a string")
        parse_fault(raw, where)
        return raw
    if isinstance(raw, bool):
        raise SteeringError(f"invalid steering {where}: expected a number")
    try:
        value: float | int = int(raw) if kind == "int" else float(raw)
    except (TypeError, ValueError):
        raise SteeringError(
            f"invalid steering {where}: expected {'an integer' if kind == 'int' else 'a number'}"
        ) from None
    if value < 0 or value != value:
        raise SteeringError(f"invalid steering {where}: must be >= 0")
    if name == "status" and not 100 <= int(value) <= 599:
        raise SteeringError(f"invalid steering {where}: must be an HTTP status (100-599)")
    return value


def parse_fault(raw: str, where: str = "fault") -> tuple[str, int]:
    """``"reset_after:3"`` → ``("reset_after", 3)``; ``"hang"`` → ``("hang", 0)``."""
    kind, _, arg = raw.strip().partition(":")
    if kind not in FAULT_KINDS:
        raise SteeringError(
            f"invalid steering {where}: unknown fault (allowed: {', '.join(sorted(FAULT_KINDS))})"
        )
    if kind in _COUNTED_FAULTS:
        if not arg.strip().isdigit():
            raise SteeringError(f"invalid steering {where}: {kind} needs ':N' (N >= 0)")
        return kind, int(arg)
    if arg:
        raise SteeringError(f"invalid steering {where}: {kind} takes no argument")
    return kind, 0


def from_headers(mock_headers: Iterable[tuple[str, str]]) -> MockBehaviour | None:
    """Build the header layer from ``(name, value)`` pairs whose names start with ``x-mock-``."""
    data = {name[7:]: value for name, value in mock_headers}
    return MockBehaviour.from_mapping(data, "header") if data else None


def split_model(model: str) -> tuple[str, MockBehaviour | None]:
    """``"gpt-4o@tokens=5,ttft_ms=10"`` → ``("gpt-4o", MockBehaviour(tokens=5, ttft_ms=10))``."""
    if "@" not in model:
        return model, None
    name, _, spec = model.partition("@")
    data: dict[str, str] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise SteeringError(f"invalid steering in model name {model!r}: {item!r} is not k=v")
        data[key.strip()] = value.strip()
    return name, MockBehaviour.from_mapping(data, "model name")


class Plan:
    """The resolved, concrete steering for one request (times in seconds)."""

    __slots__ = (
        "cache_read",
        "cache_write",
        "cost",
        "event_bytes",
        "fault",
        "fault_after",
        "interval",
        "reasoning_tokens",
        "retry_after",
        "status",
        "tokens",
        "tokens_steered",
        "ttfb",
        "ttft",
    )

    def __init__(self, b: MockBehaviour) -> None:
        self.tokens_steered = b.tokens is not None
        self.tokens: int = DEFAULT_TOKENS if b.tokens is None else b.tokens
        self.ttfb: float = (b.ttfb_ms or 0.0) / 1000.0
        self.ttft: float = (b.ttft_ms or 0.0) / 1000.0
        self.interval: float = (b.interval_ms or 0.0) / 1000.0
        self.event_bytes: int = b.event_bytes or 0
        self.status: int | None = b.status if b.status not in (None, 200) else None
        self.retry_after: float | None = b.retry_after
        self.cache_read: int = b.cache_read or 0
        self.cache_write: int = b.cache_write or 0
        self.reasoning_tokens: int = b.reasoning_tokens or 0
        self.cost: float | None = b.cost
        self.fault: str | None = None
        self.fault_after = 0
        if b.fault:
            self.fault, self.fault_after = parse_fault(b.fault)

    @property
    def immediate(self) -> bool:
        """True when a JSON answer can be written synchronously (no delay, no fault)."""
        return self.ttfb == 0.0 and self.fault is None

    def completion_tokens(self, requested_max: Any) -> tuple[int, bool]:
        """Tokens to produce and whether the request's max_tokens cut them ("length").

        An explicitly steered count wins over ``max_tokens`` (a benchmark asking for a
        million tokens means it); the default 16 respects it, as a real model would.
        """
        if (
            not self.tokens_steered
            and isinstance(requested_max, int)
            and not isinstance(requested_max, bool)
            and 0 < requested_max < self.tokens
        ):
            return requested_max, True
        return self.tokens, False


DEFAULT_PLAN = Plan(MockBehaviour())


class BehaviourTable:
    """Persistent steering: one layer for all paths plus one per path prefix.

    Prefixes are compared against the canonical ``/v1/...`` form of the request path, so
    ``/models`` and ``/v1/models`` name the same endpoint whichever way a backend is configured.
    """

    __slots__ = ("_by_prefix", "_global")

    def __init__(self) -> None:
        self._global: MockBehaviour | None = None
        self._by_prefix: list[tuple[str, MockBehaviour]] = []

    def set(self, path_prefix: str | None, fields_: Mapping[str, Any]) -> None:
        """Merge ``fields_`` into the layer for ``path_prefix`` (a ``None`` value unsets)."""
        update = MockBehaviour.from_mapping(fields_, "set_behaviour")
        prefix = canonical_path(path_prefix) if path_prefix else None
        current = self._global if prefix is None else dict(self._by_prefix).get(prefix)
        merged = (current or MockBehaviour()).merged(update)
        for name in fields_:
            if fields_[name] is None:
                setattr(merged, name.replace("-", "_"), None)
        if prefix is None:
            self._global = merged
            return
        layers = dict(self._by_prefix)
        layers[prefix] = merged
        # Shorter prefixes first, so the most specific one is applied last and wins.
        self._by_prefix = sorted(layers.items(), key=lambda kv: len(kv[0]))

    def clear(self) -> None:
        self._global = None
        self._by_prefix = []

    def lookup(self, canon_path: str) -> MockBehaviour | None:
        result = self._global
        for prefix, layer in self._by_prefix:
            if canon_path.startswith(prefix):
                result = layer if result is None else result.merged(layer)
        return result

    def snapshot(self) -> dict[str, Any]:
        return {
            "all": self._global.as_dict() if self._global else {},
            "by_prefix": {p: b.as_dict() for p, b in self._by_prefix},
        }


def canonical_path(path: str) -> str:
    """``/chat/completions`` → ``/v1/chat/completions``; control paths stay as they are."""
    if path.startswith(("/v1/", "/_mock")) or path == "/v1":
        return path
    return "/v1" + (path if path.startswith("/") else "/" + path)


def resolve(
    persistent: MockBehaviour | None, model: MockBehaviour | None, header: MockBehaviour | None
) -> Plan:
    """Combine the three layers; the common no-steering case allocates nothing."""
    if persistent is None and model is None and header is None:
        return DEFAULT_PLAN
    base = persistent or MockBehaviour()
    return Plan(base.merged(model).merged(header))
