"""``GET /v1/models`` in the caller's dialect: the union of the backends' models.

An OpenAI client gets OpenAI's list shape with every backend's models. An Anthropic client
(one that sends ``anthropic-version``, as Anthropic's SDK always does) gets Anthropic's
shape (``type``, ``display_name``, ``created_at``; a page with ``has_more``, ``first_id``,
``last_id``) listing only the models of backends that speak its dialect, since those are
the only ones it can call. Every model is listed plain and as ``backend:model`` (the
explicit form routing understands). A caller holding a named key limited to some models
(``auth.keys[].models``) sees only the ids that key may ask for, in either form: a client
is not shown models it would be refused (core/keys.py).

The gateway does not know when a model was created or its marketing name: ``created``
is 0 (OpenAI) and ``created_at`` the epoch (Anthropic), ``display_name`` the id. Pure:
takes the backends and the query, returns values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..core.errors import RequestRejected

__all__ = ["ModelListError", "anthropic_page", "entry", "openai_list"]

EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_LIMIT = 20  # Anthropic's own default page size
MAX_LIMIT = 1000


class _Backend(Protocol):
    name: str
    models: frozenset[str] | None
    dialects: frozenset[str]


class _Key(Protocol):
    def allows(self, model: str | None) -> bool: ...


class ModelListError(RequestRejected):
    """A bad query parameter; the message names it (answered 400, invalid_request)."""

    code = "invalid_request"


def _ids(
    backends: Iterable[_Backend], dialect: str | None, key: _Key | None = None
) -> list[tuple[str, str]]:
    """(id, owner) for every model, plain and ``backend:model``, first owner wins; with
    ``key``, only the ids it may ask for (the same test a request of that model meets)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for b in backends:
        if dialect is not None and dialect not in b.dialects:
            continue
        for m in sorted(b.models or ()):
            for mid in (m, f"{b.name}:{m}"):
                if mid not in seen and (key is None or key.allows(mid)):
                    seen.add(mid)
                    out.append((mid, b.name))
    return out


def _openai(mid: str, owner: str) -> dict[str, Any]:
    return {"id": mid, "object": "model", "created": 0, "owned_by": owner}


def _anthropic(mid: str) -> dict[str, Any]:
    return {"type": "model", "id": mid, "display_name": mid, "created_at": EPOCH}


def openai_list(backends: Iterable[_Backend], key: _Key | None = None) -> dict[str, Any]:
    return {"object": "list", "data": [_openai(m, o) for m, o in _ids(backends, None, key)]}


def entry(
    backends: Iterable[_Backend], model_id: str, anthropic: bool, key: _Key | None = None
) -> dict[str, Any] | None:
    """One model as ``GET /v1/models/{id}`` returns it, or None (also when ``key`` may
    not use it: a model hidden from the list is not found by id either)."""
    for mid, owner in _ids(backends, "anthropic" if anthropic else None, key):
        if mid == model_id:
            return _anthropic(mid) if anthropic else _openai(mid, owner)
    return None


def anthropic_page(
    backends: Iterable[_Backend], query: Mapping[str, str], key: _Key | None = None
) -> dict[str, Any]:
    """One page of Anthropic's list: ``limit`` (1..1000, default 20), then ``after_id``
    (the page after that id) or ``before_id`` (the page before it)."""
    ids = [mid for mid, _ in _ids(backends, "anthropic", key)]
    raw = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise ModelListError(f"limit: expected an integer from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ModelListError(f"limit: expected an integer from 1 to {MAX_LIMIT}")
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise ModelListError("after_id, before_id: give one of them, not both")
    if after is not None:
        start = _index(ids, after, "after_id") + 1
        page = ids[start : start + limit]
        more = start + limit < len(ids)
    elif before is not None:
        end = _index(ids, before, "before_id")
        page = ids[max(0, end - limit) : end]
        more = end - limit > 0
    else:
        page = ids[:limit]
        more = limit < len(ids)
    return {
        "data": [_anthropic(m) for m in page],
        "has_more": more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def _index(ids: list[str], mid: str, name: str) -> int:
    try:
        return ids.index(mid)
    except ValueError:
        raise ModelListError(f"{name}: no model {mid!r} in this list") from None
