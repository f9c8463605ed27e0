"""Backend instances at run time: resolved URL, credentials as header bytes, TLS, models.

Built once from `BackendConfig` at start-up. The backend's key is turned into header
bytes here and never stored anywhere else; `__repr__` leaves it out so it cannot reach
a log line or a diagnostics document by accident.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit

from ..config import BackendConfig

# Which frontend dialects a backend type can serve without translation.
_DIALECTS = {"openai": frozenset({"openai"}), "anthropic": frozenset({"anthropic"})}


def normalize_api_url(url: str) -> str:
    """Scheme, lower-cased host, explicit default port, no trailing slash: the unit of
    health probing (instances sharing it share its state)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host_part = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host_part}:{port}{parts.path.rstrip('/')}"


class Backend:
    __slots__ = (
        "api_url",
        "auth_headers",
        "base_path",
        "config",
        "dialects",
        "has_key",
        "host",
        "host_header",
        "models",
        "name",
        "normalized_url",
        "port",
        "scheme",
        "server_hostname",
        "ssl",
        "type",
    )

    def __init__(
        self,
        name: str,
        config: BackendConfig,
        *,
        env: dict[str, str] | None = None,
        dialects: frozenset[str] | None = None,
    ) -> None:
        env = dict(os.environ) if env is None else env
        self.name = name
        self.config = config
        self.type: str = config.type or name.split(".", 1)[0]
        self.dialects = dialects or _DIALECTS[self.type]
        self.api_url = config.api_url.rstrip("/")
        parts = urlsplit(self.api_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        default_port = 443 if self.scheme == "https" else 80
        self.port = parts.port or default_port
        self.base_path = parts.path.rstrip("/").encode()
        self.normalized_url = normalize_api_url(self.api_url)
        # An IPv6 literal keeps its brackets in Host (RFC 9110: host is uri-host).
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if self.port == default_port else f"{host}:{self.port}").encode()
        self.server_hostname = self.host if self.scheme == "https" else None
        self.ssl = _ssl_context(config) if self.scheme == "https" else None
        key = config.api_key or (env.get(config.api_key_env) if config.api_key_env else None)
        self.has_key = bool(key)
        self.auth_headers = _auth_headers(self.type, key, config)
        self.models: frozenset[str] | None = (
            frozenset(config.models) if config.models is not None else None
        )

    def upstream_path(self, client_path: bytes) -> bytes:
        """``/v1/chat/completions`` → api_url's path + ``/chat/completions``.

        api_url carries the API version prefix (``https://api.openai.com/v1``), so the
        client's own ``/v1`` is replaced by it."""
        suffix = client_path[3:] if client_path.startswith(b"/v1/") else client_path
        return self.base_path + suffix

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, type={self.type!r}, url={self.api_url!r})"


def _ssl_context(config: BackendConfig) -> ssl.SSLContext:
    if not config.verify_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=config.ca_bundle)
    # HTTP/1.1 only: we speak it to every backend.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _auth_headers(kind: str, key: str | None, config: BackendConfig) -> bytes:
    out = []
    if key:
        if kind == "anthropic":
            out.append(b"x-api-key: " + key.encode("latin-1") + b"\r\n")
        else:
            out.append(b"authorization: Bearer " + key.encode("latin-1") + b"\r\n")
    for name, value in config.extra_headers.items():
        out.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(out)
