"""The closed vocabularies of a usage record that queries filter on: API kinds, outcomes.

The API kind says which endpoint a request called (`frontend_type` only says which
dialect): the writer thread derives it from the request path with `API_BY_PATH`. The
data plane has its own table of the same paths (``fastproxy.dataplane.request.API_PATHS``),
which maps them to dialect modules; monitoring and storage must not import the data
plane, so the path → kind part is repeated here, and a test keeps the two equal
(tests/usage/test_usage_kinds.py).
"""

from __future__ import annotations

# Values of the record's ``api`` field and of the ``api`` filter, in a fixed order.
API_KINDS = ("chat", "responses", "embeddings", "completions", "messages", "count_tokens")

_V1_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
}
# Clients configured with a base URL lacking /v1 call the same endpoints without it.
API_BY_PATH: dict[str, str] = {**_V1_PATHS, **{p[3:]: k for p, k in _V1_PATHS.items()}}

# Values of the record's ``outcome`` field and of the ``outcome`` filter. The data plane
# sets them; a test checks it sets no other.
OUTCOMES = (
    "ok",
    "rejected",
    "backend_error",
    "timeout",
    "truncated",
    "client_aborted",
    "client_stalled",
    "gateway_shutdown",
)

# The stats key and filter value for requests that got no HTTP status (the client left,
# or was dropped, before one was sent). Stored as 0 in ``http_status_code`` columns.
NO_STATUS = "none"
