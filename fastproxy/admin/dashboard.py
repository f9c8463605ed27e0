"""The dashboard: ``GET /`` on the admin listener, one page and its assets (docs/dashboard.md).

Decisions (and why):

* **Admin listener only.** The page is not in the route table (table.py), so the data
  port, which serves that table, never answers it: the dashboard is an operator's tool
  and lives where the operator's port is.
* **Same access as the JSON endpoints.** The protocol admits a request head (peer, Host
  guard, admin key) before any path is looked at, so the page and its assets pass exactly
  the checks ``/v1/usage/stats`` passes; nothing here relaxes them.
* **Served from memory.** The files are read once, when this module is imported (at
  gateway start), with their ETags computed then: answering never touches the disk, so
  an admin callback never blocks. A broken install (an asset missing from the wheel)
  fails the import, loudly, instead of serving a page that cannot run.
* **Strict headers.** ``default-src 'self'`` and no inline script or style: the page
  puts endpoint data into the DOM (session ids, model names, error texts), and the CSP
  is the second fence behind its textContent-only rendering. ``nosniff`` and
  ``X-Frame-Options: DENY`` (plus ``frame-ancestors 'none'``) stop content sniffing and
  click-jacking. ``Cache-Control: no-cache`` with an ETag lets a browser keep the files
  but revalidate each load, so an upgraded gateway is never shown with stale assets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from .routes import AdminRequest, AdminResponse, Handler

PACKAGE_DIR = "dashboard"  # beside this module, shipped as package data (pyproject.toml)
CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "index.html": "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "icon.svg": "image/svg+xml",
    }
)
PAGE = "index.html"
# The page answers at "/" and "/dashboard"; its assets under "/dashboard/NAME".
PAGE_PATHS = frozenset({"/", "/dashboard", "/dashboard/"})
ASSET_PREFIX = "/dashboard/"
METHODS = ["GET", "HEAD"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load() -> Mapping[str, Asset]:
    root = resources.files(__package__ or "fastproxy.admin").joinpath(PACKAGE_DIR)
    assets = {}
    for name, content_type in CONTENT_TYPES.items():
        body = root.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[name] = Asset(body, content_type, etag)
    return MappingProxyType(assets)


ASSETS = _load()


def asset_for(path: str) -> Asset | None:
    """The asset a dashboard path names; None when the path is not the dashboard's."""
    if path in PAGE_PATHS:
        return ASSETS[PAGE]
    if path.startswith(ASSET_PREFIX):
        return ASSETS.get(path[len(ASSET_PREFIX) :])
    return None


def resolve(method: str, path: str) -> tuple[Handler | None, list[str]] | None:
    """The handler for a dashboard path (None and the allowed methods for another
    method), or None when the path is not the dashboard's: the route table decides then."""
    asset = asset_for(path)
    if asset is None:
        return None
    if method not in METHODS:
        return None, METHODS

    async def answer(req: AdminRequest) -> AdminResponse:
        return respond(asset, req.headers.get("if-none-match"))

    return answer, METHODS


def respond(asset: Asset, if_none_match: str | None) -> AdminResponse:
    headers = [*SECURITY_HEADERS, ("etag", asset.etag)]
    if if_none_match is not None and _matches(if_none_match, asset.etag):
        return AdminResponse(status=304, body=b"", content_type=asset.content_type, headers=headers)
    return AdminResponse(body=asset.body, content_type=asset.content_type, headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    # RFC 9110: a list of entity tags, weak ones compared weakly, or "*".
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
