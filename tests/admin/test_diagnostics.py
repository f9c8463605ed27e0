"""GET /v1/diagnostics and friends: shapes, validation, rate limits, breaker, reactivate."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import backend_for

from .conftest import Admin

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
INSTANCE_KEYS = {
    "name",
    "connector_type",
    "is_rate_limited",
    "retry_after_seconds",
    "is_functional",
    "circuit_state",
    "validation_errors",
    "models",
    "activity",
}
ACTIVITY_KEYS = {
    "active_connections",
    "connections",
    "total_bytes_rx",
    "total_bytes_tx",
    "lifetime_bytes_rx",
    "lifetime_bytes_tx",
}


def diag(admin: Admin) -> dict:
    r = httpx.get(admin.url + "/v1/diagnostics", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def instance(doc: dict, name: str) -> dict:
    return next(i for i in doc["instances"] if i["name"] == name)


def test_shape_with_tracking_off(admin: Admin) -> None:
    doc = diag(admin)
    assert set(doc) == {
        "timestamp",
        "timestamp_iso",
        "activity_tracking_enabled",
        "instances",
        "global_activity",
    }
    assert isinstance(doc["timestamp"], float) and ISO_Z.match(doc["timestamp_iso"])
    assert doc["activity_tracking_enabled"] is False
    assert doc["global_activity"] is None
    assert sorted(i["name"] for i in doc["instances"]) == ["anthropic.1", "openai.1"]
    for inst in doc["instances"]:
        assert set(inst) == INSTANCE_KEYS
        assert inst["activity"] is None
        assert inst["models"] == sorted(inst["models"]) and "gpt-4o" in inst["models"]
        assert (inst["is_rate_limited"], inst["retry_after_seconds"]) == (False, None)
        assert (inst["is_functional"], inst["circuit_state"]) == (True, "closed")
        assert inst["validation_errors"] == []
    assert instance(doc, "anthropic.1")["connector_type"] == "anthropic"
    # No secret ever appears in diagnostics.
    assert "sk-backend" not in httpx.get(admin.url + "/v1/diagnostics").text


def test_shape_with_tracking_on(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"enable_activity_tracking": True})
    doc = diag(admin)
    assert doc["activity_tracking_enabled"] is True
    assert doc["global_activity"] == {
        "total_active_connections": 0,
        "total_bytes_rx": 0,
        "total_bytes_tx": 0,
    }
    for inst in doc["instances"]:
        assert set(inst["activity"]) == ACTIVITY_KEYS
    r = httpx.get(admin.url + "/v1/diagnostics/activity")
    assert r.json() == {
        "enabled": True,
        "total_active_connections": 0,
        "total_bytes_rx": 0,
        "total_bytes_tx": 0,
    }


def test_missing_key_env_is_a_validation_error(
    admin_factory: Callable[..., Admin], mock_llm: object
) -> None:
    admin = admin_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai"),  # type: ignore[arg-type]
                "openai.2": {
                    "type": "openai",
                    "api_url": mock_llm.url,  # type: ignore[attr-defined]
                    "api_key_env": "FASTPROXY_TEST_UNSET_KEY",
                    "models": ["m1"],
                },
            }
        }
    )
    inst = instance(diag(admin), "openai.2")
    assert inst["validation_errors"] == [
        "API key environment variable FASTPROXY_TEST_UNSET_KEY is not set"
    ]
    assert inst["is_functional"] is False
    assert inst["models"] == ["m1"]
    assert "FASTPROXY_TEST_UNSET_KEY" not in str(instance(diag(admin), "openai.1"))


def test_rate_limited_after_a_429_until_success_or_reactivate(admin: Admin) -> None:
    headers = {"x-mock-status": "429", "x-mock-retry-after": "30"}
    r = httpx.post(admin.gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 429
    inst = instance(diag(admin), "openai.1")
    assert inst["is_rate_limited"] is True
    assert 0 < inst["retry_after_seconds"] <= 60
    assert instance(diag(admin), "anthropic.1")["is_rate_limited"] is False
    # A success on the backend clears the mark.
    assert httpx.post(admin.gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
    assert instance(diag(admin), "openai.1")["is_rate_limited"] is False
    httpx.post(admin.gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert instance(diag(admin), "openai.1")["is_rate_limited"] is True
    r = httpx.post(admin.url + "/v1/diagnostics/backends/openai.1/reactivate")
    assert r.status_code == 200
    assert instance(diag(admin), "openai.1")["is_rate_limited"] is False


def test_open_breaker_shows_and_reactivate_closes_it(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory(
        {"circuit_breaker": {"failure_threshold": 1, "open_cooldown_seconds": 600}}
    )
    r = httpx.post(
        admin.gw.url + "/v1/chat/completions", json=CHAT, headers={"x-mock-status": "503"}
    )
    assert r.status_code == 503
    inst = instance(diag(admin), "openai.1")
    assert (inst["circuit_state"], inst["is_functional"]) == ("open", False)
    r = httpx.post(admin.url + "/v1/diagnostics/backends/openai.1/reactivate")
    assert r.status_code == 200
    assert r.json() == {"backend": "openai.1", "circuit_state": "closed"}
    inst = instance(diag(admin), "openai.1")
    assert (inst["circuit_state"], inst["is_functional"]) == ("closed", True)


def test_reactivate_unknown_backend_and_foreign_origin(admin: Admin) -> None:
    r = httpx.post(admin.url + "/v1/diagnostics/backends/nope/reactivate")
    assert r.status_code == 404
    assert r.json() == {"detail": "no such backend: nope"}
    r = httpx.get(admin.url + "/v1/diagnostics/backends/openai.1/reactivate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # A page on another origin must not flip breakers through the operator's browser.
    r = httpx.post(
        admin.url + "/v1/diagnostics/backends/openai.1/reactivate",
        headers={"origin": "https://evil.example"},
    )
    assert r.status_code == 403
    r = httpx.post(
        admin.url + "/v1/diagnostics/backends/openai.1/reactivate",
        headers={"origin": "http://localhost:3000"},
    )
    assert r.status_code == 200


def test_data_port_serves_the_same_diagnostics(admin: Admin) -> None:
    on_data = httpx.get(admin.gw.url + "/v1/diagnostics").json()
    on_admin = diag(admin)
    for doc in (on_data, on_admin):
        doc.pop("timestamp")
        doc.pop("timestamp_iso")
    assert on_data == on_admin


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None,
    reason="curl and jq are needed to run the seed document's examples",
)
def test_seed_curl_examples(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"enable_activity_tracking": True})
    for port in (admin.port, admin.gw.port):  # the admin port, and the seed's data port
        base = f"http://localhost:{port}"

        def sh(cmd: str) -> str:
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", cmd],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            return done.stdout.strip()

        assert sh(f"curl -s {base}/v1/diagnostics | jq '.activity_tracking_enabled'") == "true"
        out = sh(f"curl -s {base}/v1/diagnostics | jq -c '.instances[].activity'")
        assert out.count("active_connections") == 2
        out = sh(f"curl -s {base}/v1/diagnostics/activity | jq -c 'keys'")
        assert out == ('["enabled","total_active_connections","total_bytes_rx","total_bytes_tx"]')
        assert sh(f"curl -s -o /dev/null -w '%{{http_code}}' {base}/v1/diagnostics") == "200"
