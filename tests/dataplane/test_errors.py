"""Bad requests get an error in the caller's dialect with the right status, and the
gateway keeps serving."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import RunningGateway, backend_for

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MSG = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


def is_openai_error(resp: httpx.Response, code: str) -> None:
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["message"]


def is_anthropic_error(resp: httpx.Response, etype: str) -> None:
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == etype and body["error"]["message"]


@pytest.mark.parametrize(
    ("what", "path", "kwargs", "status", "code", "etype"),
    [
        (
            "body is not JSON",
            "/v1/chat/completions",
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
            "invalid_request_error",
        ),
        (
            "body is a JSON array",
            "/v1/messages",
            {"content": b"[1,2]", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
            "invalid_request_error",
        ),
        (
            "model missing",
            "/v1/chat/completions",
            {"json": {"messages": []}},
            400,
            "missing_model",
            "invalid_request_error",
        ),
        (
            "model is a number",
            "/v1/messages",
            {"json": {"model": 5, "messages": []}},
            400,
            "missing_model",
            "invalid_request_error",
        ),
        (
            "wrong content type",
            "/v1/chat/completions",
            {"content": orjson.dumps(CHAT), "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
            "invalid_request_error",
        ),
        (
            "request looping back through a gateway",
            "/v1/messages",
            {"json": MSG, "headers": {"x-fastproxy-hop": "1"}},
            508,
            "loop_detected",
            "invalid_request_error",
        ),
    ],
)
def test_bad_requests_in_dialect(
    gateway: RunningGateway,
    mock_llm,
    what: str,
    path: str,
    kwargs: dict,
    status: int,
    code: str,
    etype: str,
) -> None:
    r = httpx.post(gateway.url + path, timeout=10, **kwargs)
    assert r.status_code == status, (what, r.text)
    if path == "/v1/messages":
        is_anthropic_error(r, etype)
    else:
        is_openai_error(r, code)
    assert mock_llm.stats.requests_total == 0, f"{what}: nothing may reach the backend"
    assert (
        httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
    )


def test_unknown_path_and_wrong_method(gateway: RunningGateway) -> None:
    r = httpx.get(gateway.url + "/v2/nothing", timeout=5)
    assert r.status_code == 404
    is_openai_error(r, "not_found")
    r = httpx.get(gateway.url + "/v1/chat/completions", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.get(gateway.url + "/v1/messages", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    is_anthropic_error(r, "invalid_request_error")
    r = httpx.post(gateway.url + "/v1/models", timeout=5)
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_unknown_model_without_default_backend(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, models=["gpt-4o"]),
                "anthropic.1": backend_for(mock_llm, "anthropic", models=["claude-x"]),
            }
        }
    )
    r = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "gpt-9"}, timeout=5)
    assert r.status_code == 404
    is_openai_error(r, "model_not_found")
    r = httpx.post(gw.url + "/v1/messages", json={**MSG, "model": "gpt-4o"}, timeout=5)
    assert r.status_code == 404
    is_anthropic_error(r, "not_found_error")
    # Explicit backend of the wrong dialect: a clear 400, not a confusing backend error.
    r = httpx.post(gw.url + "/v1/messages", json={**MSG, "model": "openai.1:gpt-4o"}, timeout=5)
    assert r.status_code == 400
    assert "speaks openai" in r.json()["error"]["message"]
    assert mock_llm.stats.requests_by_path.get("/v1/chat/completions", 0) == 0
    assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=5).status_code == 200


def test_backend_4xx_is_relayed_not_retried(gateway_factory, mock_factory) -> None:
    a, b = mock_factory(), mock_factory()
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(a), "openai.2": backend_for(b)},
            "default_backend": "openai.1",
            "failover_routes": {"gpt-4o": ["openai.2:gpt-4o"]},
        }
    )
    for status in (400, 401, 403, 404):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json=CHAT,
            headers={"x-mock-status": str(status)},
            timeout=5,
        )
        assert r.status_code == status
        assert r.headers["x-fastproxy-backend"] == "openai.1"
        assert "error" in r.json()
    assert b.stats.requests_total == 0


def test_auth_required_when_keys_configured(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {"backends": {"openai.1": backend_for(mock_llm)}, "default_backend": "openai.1"},
        env={"FASTPROXY_API_KEYS": "good-key-1,good-key-2"},
    )
    url = gw.url + "/v1/chat/completions"
    r = httpx.post(url, json=CHAT, timeout=5)
    assert r.status_code == 401
    is_openai_error(r, "invalid_api_key")
    r = httpx.post(gw.url + "/v1/messages", json=MSG, headers={"x-api-key": "bad"}, timeout=5)
    assert r.status_code == 401
    is_anthropic_error(r, "authentication_error")
    assert mock_llm.stats.requests_total == 0
    assert (
        httpx.post(
            url, json=CHAT, headers={"authorization": "Bearer good-key-2"}, timeout=5
        ).status_code
        == 200
    )
    assert (
        httpx.post(url, json=CHAT, headers={"x-api-key": "good-key-1"}, timeout=5).status_code
        == 200
    )
    # The client's key is never forwarded to the backend.
    assert b"good-key" not in repr(mock_llm.stats.requests[-1].headers).encode()
