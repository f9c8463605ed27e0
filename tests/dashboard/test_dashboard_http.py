"""The dashboard's page and assets over HTTP: content types and security headers,
revalidation, methods, the same access rules as the JSON endpoints (Host guard, peers,
admin keys), the admin listener only, and the files shipped as package data.

Remote peers are real: the admin listener binds 0.0.0.0 and the test connects to this
machine's own non-loopback address (tests/admin/test_remote_admin_keys.py does the same).
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from fastproxy.admin import dashboard
from fastproxy.mockllm import MockLLMServer
from tests.admin.conftest import non_loopback_ipv4
from tests.conftest import RunningGateway, backend_for

from .conftest import console_errors

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "adm-5b0c9e8d7f6a4b3c2d1e0f9a8b7c6d5e"
ASSETS = {
    "/": "text/html; charset=utf-8",
    "/dashboard": "text/html; charset=utf-8",
    "/dashboard/app.js": "text/javascript; charset=utf-8",
    "/dashboard/app.css": "text/css; charset=utf-8",
    "/dashboard/icon.svg": "image/svg+xml",
}


@pytest.fixture
def gw(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> Callable[..., RunningGateway]:
    def make(**admin: Any) -> RunningGateway:
        return gateway_factory(
            {
                "backends": {"openai.1": backend_for(mock_llm)},
                "admin": {"port": 0, **admin},
                "health_check": {"enabled": False},
                "enable_activity_tracking": True,
            }
        )

    return make


def admin_url(gw: RunningGateway, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{gw.gateway.admin_port}"


@pytest.fixture
def remote_addr() -> str:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    return addr


def test_page_and_assets_carry_their_types_and_strict_headers(
    gw: Callable[..., RunningGateway],
) -> None:
    url = admin_url(gw())
    for path, ctype in ASSETS.items():
        r = httpx.get(url + path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == ctype, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        # Kept by the browser, revalidated by ETag on every load: one Cache-Control.
        assert r.headers.get_list("cache-control") == ["no-cache"], path
        etag = r.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{20}"', etag)
        again = httpx.get(url + path, headers={"if-none-match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert "content-length" not in again.headers
        other = httpx.get(url + path, headers={"if-none-match": '"0000"'})
        assert other.status_code == 200 and other.content == r.content
        head = httpx.head(url + path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(r.content))
        assert head.headers["content-type"] == ctype
    # The JSON endpoints keep no-store: the dashboard's caching is its own.
    assert httpx.get(url + "/internal/health").headers["cache-control"] == "no-store"


def test_other_methods_405_and_unknown_assets_404(gw: Callable[..., RunningGateway]) -> None:
    url = admin_url(gw())
    for method in ("POST", "PUT", "DELETE"):
        r = httpx.request(method, url + "/")
        assert r.status_code == 405, method
        assert r.headers["allow"] == "GET, HEAD"
        assert r.json()["detail"].startswith(f"method {method} not allowed")
    for path in ("/dashboard/nope.js", "/dashboard/../pyproject.toml", "/dashboard/app.js/x"):
        r = httpx.get(url + path)
        assert r.status_code == 404, path
        assert "content-security-policy" not in r.headers


def test_the_page_runs_no_inline_code() -> None:
    """The CSP forbids inline script and style; the page must not need them."""
    html = dashboard.ASSETS["index.html"].body.decode()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all('src="/dashboard/' in s for s in scripts), scripts
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None  # no inline body
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline handlers
    assert re.search(r"\sstyle\s*=|<style\b", html) is None
    js = dashboard.ASSETS["app.js"].body.decode()
    # Endpoint strings reach the DOM as text only.
    sinks = r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function"
    assert re.search(sinks, js) is None


def test_a_foreign_host_is_refused_like_the_json_endpoints(
    gw: Callable[..., RunningGateway],
) -> None:
    url = admin_url(gw())
    for path in ("/", "/dashboard/app.js", "/v1/usage/stats"):
        r = httpx.get(url + path, headers={"host": "rebind.example.com"})
        assert r.status_code == 421, path
        assert "DNS-rebinding" in r.json()["detail"]
        assert r.headers["connection"] == "close"
    assert httpx.get(url + "/", headers={"host": "localhost"}).status_code == 200


def test_only_the_admin_listener_serves_it(gw: Callable[..., RunningGateway]) -> None:
    g = gw()
    r = httpx.get(g.url + "/")
    assert r.status_code == 404
    assert b"<html" not in r.content
    assert httpx.get(g.url + "/dashboard/app.js").status_code == 404


def test_remote_peers_need_the_admin_key_like_the_json_endpoints(
    gw: Callable[..., RunningGateway], remote_addr: str
) -> None:
    url = admin_url(gw(host="0.0.0.0", api_keys=[ADMIN_KEY]), remote_addr)
    for path in ("/", "/dashboard/app.js", "/v1/usage/stats"):
        r = httpx.get(url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer ")
        r = httpx.get(url + path, headers={"authorization": "Bearer wrong-key-0123456789"})
        assert r.status_code == 401, path
        r = httpx.get(url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200, path


def test_without_keys_a_remote_peer_is_refused(
    gw: Callable[..., RunningGateway], remote_addr: str
) -> None:
    url = admin_url(gw(host="0.0.0.0"), remote_addr)
    for path in ("/", "/v1/usage/stats"):
        r = httpx.get(url + path)
        assert r.status_code == 403, path
        assert r.json()["detail"] == "Diagnostic endpoint is restricted to local access only"


def test_a_key_typed_into_the_page_opens_the_loopback_only_views(
    driver: Any, gw: Callable[..., RunningGateway], remote_addr: str
) -> None:
    """A browser in ``admin.allow_networks`` loads the page without a key; the live
    connections (``/v1/diagnostics``, loopback-only) need the admin key, which the page
    asks for and then sends as ``Authorization: Bearer`` on its own fetches."""
    g = gw(host="0.0.0.0", allow_networks=[f"{remote_addr}/32"], api_keys=[ADMIN_KEY])
    url = admin_url(g, remote_addr)
    driver.get("about:blank")
    driver.get_log("browser")
    try:
        driver.get(url + "/")  # a new origin (a new port): its sessionStorage is empty
        note = driver.find_element(By.ID, "conns-note")
        WebDriverWait(driver, 20, poll_frequency=0.1).until(lambda d: note.is_displayed())
        assert "admin keys only" in note.text
        # The refused fetch is the only console error: the browser reports the 403.
        errors = console_errors(driver)
        assert errors and all("403" in e["message"] for e in errors), errors
        driver.find_element(By.ID, "key-button").click()
        box = driver.find_element(By.ID, "key-input")
        assert box.get_attribute("type") == "password"
        box.send_keys(ADMIN_KEY)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        WebDriverWait(driver, 20, poll_frequency=0.1).until(lambda d: not note.is_displayed())
        WebDriverWait(driver, 20, poll_frequency=0.1).until(
            lambda d: d.find_element(By.ID, "kpi-active").text == "0"
        )
        assert ADMIN_KEY not in driver.current_url
        assert console_errors(driver) == []
    finally:
        with contextlib.suppress(WebDriverException):
            driver.execute_script("sessionStorage.clear()")
        driver.get("about:blank")


def test_every_asset_is_served_and_shipped_as_package_data() -> None:
    folder = ROOT / "fastproxy" / "admin" / dashboard.PACKAGE_DIR
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert files == set(dashboard.CONTENT_TYPES), "an asset without a content type, or missing"
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = meta["tool"]["setuptools"]["package-data"]["fastproxy.admin"]
    for name in files:
        assert any(fnmatch(f"{dashboard.PACKAGE_DIR}/{name}", g) for g in globs), name
