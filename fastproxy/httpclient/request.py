"""The request head the gateway sends to a backend, built in one place.

The data plane's POST, the health probe, the webhook notifier and model discovery all
send their requests through this builder, so what a backend receives is decided here:
the request line, ``host``, the framing of a body, the backend's credentials, the
``anthropic-version`` an Anthropic backend requires, and ``connection: close`` for a
one-shot request.

Rules, and why:

- **One ``b"".join`` over one list, no dict, no formatting of constants.** The data
  plane builds one head per attempt on the loop thread; the builder costs what the
  hand-written head did (a few list appends) and nothing more.
- **No validation here.** Every piece is trusted as it is: the caller's header pairs
  come from the client request's parser (which refuses CR, LF and NUL in a header) or
  are the caller's constants, the backend's lines were encoded from the validated
  config at start-up. A check here would be paid per request for nothing.
- **The target is given as it goes on the wire.** The data plane passes
  ``backend.upstream_path(client_path)``; the probe joins the configured probe path to
  the api_url's path, and the webhook sends its URL's own path and query: neither is an
  API path whose ``/v1`` the backend's prefix replaces.
- **The fixed order of the lines** is the order the hand-written heads had: request
  line, ``host``, ``content-type``/``content-length``, ``extra``, ``accept-encoding``,
  ``user-agent``, credentials, the caller's headers, ``anthropic-version``,
  ``connection``. A backend sees the same bytes as before the builder existed.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from .backend import Backend

__all__ = ["JSON", "request_head"]

JSON = b"application/json"
_NOTHING: frozenset[bytes] = frozenset()


def request_head(
    backend: Backend,
    method: bytes,
    target: bytes,
    *,
    content_length: int | None = None,
    content_type: bytes = JSON,
    extra: bytes = b"",
    identity: bool = True,
    user_agent: bytes = b"",
    auth: bool = True,
    headers: Iterable[tuple[bytes, bytes]] = (),
    skip: Container[bytes] = _NOTHING,
    anthropic_version: bool = True,
    close: bool = False,
    body_prefix: bytes = b"",
) -> bytes:
    """The head of one request to ``backend``, ending with its blank line.

    - ``method``, ``target``: the request line (``target`` as sent, see the module
      docstring).
    - ``content_length``: the whole body's length, ``body_prefix`` included; when
      given, ``content-type: {content_type}`` and ``content-length`` are sent. None: no
      body (GET, HEAD).
    - ``extra``: pre-encoded header lines, each ending in CRLF (``x-fastproxy-hop: 1``,
      ``accept: application/json``).
    - ``identity``: ``accept-encoding: identity``. The gateway reads what it relays
      (usage, errors), so it must not receive a compressed body.
    - ``user_agent``: the ``user-agent`` value; empty sends none (the data plane
      forwards the client's own among ``headers``).
    - ``auth``: the backend's credential and configured extra header lines.
    - ``headers``: (name, value) pairs copied as they are, except names in ``skip``
      (lower-case names, as the request parser delivers them).
    - ``anthropic_version``: send the backend's configured ``anthropic-version`` to an
      Anthropic backend when ``headers`` carried none (a client may pin its own).
    - ``close``: ``connection: close``, for a one-shot request on a fresh connection.
    - ``body_prefix``: bytes sent right after the head, before the caller's body (the
      data plane's splice of a member into the client's JSON travels this way, so the
      client's body is written as it is, uncopied).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", backend.host_header, b"\r\n"]
    if content_length is not None:
        parts += (b"content-type: ", content_type, b"\r\ncontent-length: %d\r\n" % content_length)
    if extra:
        parts.append(extra)
    if identity:
        parts.append(b"accept-encoding: identity\r\n")
    if user_agent:
        parts += (b"user-agent: ", user_agent, b"\r\n")
    if auth:
        parts.append(backend.auth_headers)
    has_version = False
    for name, value in headers:
        if name in skip:
            continue
        if name == b"anthropic-version":
            has_version = True
        parts += (name, b": ", value, b"\r\n")
    if anthropic_version and not has_version and backend.type == "anthropic":
        parts += (b"anthropic-version: ", backend.config.anthropic_version.encode(), b"\r\n")
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    if body_prefix:
        parts.append(body_prefix)
    return b"".join(parts)
