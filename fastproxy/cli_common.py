"""What every command that talks to a running gateway shares (docs/cli.md).

``fastproxy health``, ``fastproxy top``, ``fastproxy usage stats|export --url`` and the
scripts in scripts/ find the gateway the same way (``--url``, else the config file's
admin listener, else ``http://127.0.0.1:8001``), take ``--timeout`` and ``--json`` the
same way, report a failure as one line on stderr, and exit with the same codes.

Plain ``urllib``: the gateway's runtime has no HTTP client dependency, and a tool that
only reads a few JSON documents needs none. Nothing here imports ``rich``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPResponse
from typing import Any, NoReturn

# The exit codes. health and top used these meanings before they were written down here,
# and docs/health.md / docs/activity.md promise them, so a script branching on `$? -eq 3`
# keeps meaning "the gateway answered and something is off".
EXIT_OK = 0
EXIT_NO_ANSWER = 1  # nothing usable came back: nothing listens, timeout, HTTP error, not JSON
EXIT_USAGE = 2  # bad arguments or config (argparse exits 2 as well); a Python without deps
EXIT_NOT_OK = 3  # the gateway answered, and says something is off (degraded, tracking off)

DEFAULT_URL = "http://127.0.0.1:8001"


class CliError(Exception):
    """A failure the operator reads as one line; ``exit_code`` is one of the EXIT_*."""

    def __init__(
        self,
        message: str,
        exit_code: int = EXIT_NO_ANSWER,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status  # the HTTP status when the gateway answered an error
        self.detail = detail  # its {"detail": ...} text, when it sent one


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_url_argument(parser: Any, *, instead_of: str = "") -> None:
    """``--url`` on a parser or a mutually exclusive group; ``instead_of`` names what
    the URL replaces where reading a gateway is optional (``usage``: the database file)."""
    text = (
        "the gateway's base URL, e.g. http://127.0.0.1:8001 (default: the admin "
        "listener of the config file found by the usual lookup, else "
        f"{DEFAULT_URL})"
    )
    if instead_of:
        text = f"read from the running gateway at this base URL instead of {instead_of}"
    parser.add_argument("--url", metavar="URL", help=text)


def add_gateway_arguments(parser: argparse.ArgumentParser, *, positional_url: bool) -> None:
    """``--url``, ``--config``, ``--timeout`` and ``--json`` for a command that needs a gateway.

    ``positional_url`` keeps the older spelling (``fastproxy top URL``,
    ``scripts/inspect_activity.py URL``) working as an alias of ``--url``.
    """
    add_url_argument(parser)
    if positional_url:
        parser.add_argument(
            "legacy_url",
            nargs="?",
            metavar="URL",
            help="the same as --url (the older spelling, still accepted)",
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file whose admin.host/admin.port give the default URL "
        "(default lookup: $FASTPROXY_CONFIG, "
        "$XDG_CONFIG_HOME/fastproxy/config.yaml, /etc/fastproxy/config.yaml)",
    )
    add_timeout_argument(parser)
    parser.add_argument(
        "--json", action="store_true", help="print the gateway's JSON document instead of a table"
    )


def add_timeout_argument(parser: Any) -> None:
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="HTTP timeout per request in seconds (default 5)",
    )


def normalise_url(text: str, flag: str = "--url") -> str:
    """``host:port`` or ``scheme://host:port[/prefix]`` -> ``scheme://host:port[/prefix]``."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urllib.parse.urlsplit(raw)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as exc:
        raise CliError(f"{flag}: {text!r} is not a URL ({exc})", EXIT_USAGE) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{flag}: {text!r} is not an http:// or https:// URL", EXIT_USAGE)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def gateway_url(ns: argparse.Namespace) -> str:
    """The base URL the command talks to: --url, the positional alias, or the config."""
    flag = getattr(ns, "url", None)
    legacy = getattr(ns, "legacy_url", None)
    if flag and legacy and normalise_url(flag) != normalise_url(legacy, "URL"):
        raise CliError(
            f"two different URLs given ({legacy} and --url {flag}); give one", EXIT_USAGE
        )
    if flag:
        return normalise_url(flag)
    if legacy:
        return normalise_url(legacy, "URL")
    return url_from_config(getattr(ns, "config", None))


def url_from_config(config_file: str | None) -> str:
    """Where a gateway started with this config and environment answers monitoring requests.

    The same lookup and layers as ``fastproxy run`` (``--config`` > ``$FASTPROXY_CONFIG`` >
    XDG > /etc, then the environment), so ``FASTPROXY_ADMIN_PORT=9001 fastproxy health``
    finds the gateway started with that variable. With no file and no variable this is
    DEFAULT_URL.
    """
    from .config import ConfigError, load_config

    try:
        loaded = load_config(config_file=config_file)
    except ConfigError as exc:
        raise CliError(f"config error: {exc} (or give --url)", EXIT_USAGE) from None
    cfg = loaded.config
    if cfg.admin.enabled:
        host, port, key = cfg.admin.host, cfg.admin.port, "admin.port"
    else:  # the data port serves the same monitoring paths
        host, port, key = cfg.host, cfg.port, "port"
    if port == 0:
        where = loaded.origin(key)
        raise CliError(
            f"{key} is 0 ({where}): the gateway picks a free port and logs it; "
            "give --url with that port",
            EXIT_USAGE,
        )
    return f"http://{_connectable(host)}:{port}"


def _connectable(host: str) -> str:
    # A wildcard bind is reached through loopback (the monitoring paths prefer loopback
    # peers anyway); an IPv6 literal needs brackets in a URL.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def endpoint(base: str, path: str, query: dict[str, str] | None = None) -> str:
    """``base`` + ``path``; a base that already ends with the path (an older habit of
    ``fastproxy health --url .../internal/health``) is used as it is."""
    url = base if base.endswith(path) else base + path
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


# No proxies: the monitoring paths judge the peer address (loopback, admin.allow_networks),
# and through an http_proxy variable the peer would be the proxy, or a request for
# localhost would be sent somewhere else entirely.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def open_url(url: str, timeout: float) -> HTTPResponse:
    """The response to ``GET url`` (status 2xx); ``CliError`` for anything else."""
    try:
        return _OPENER.open(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = _detail(exc)
        raise CliError(
            f"{url} answered HTTP {exc.code}: {detail or exc.reason}",
            EXIT_NO_ANSWER,
            status=exc.code,
            detail=detail,
        ) from None
    except (OSError, ValueError) as exc:  # URLError, refused, reset, timeout, bad host
        raise CliError(unreachable(url, exc), EXIT_NO_ANSWER) from None


def unreachable(url: str, exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return (
        f"cannot reach the gateway at {url} ({reason}); is it running, and is this its "
        "admin listener (--url, or admin.host/admin.port in the config)?"
    )


def get_json(url: str, timeout: float) -> Any:
    try:
        with open_url(url, timeout) as resp:
            body = resp.read()
    except (OSError, ValueError) as exc:  # the connection broke or timed out mid-body
        raise CliError(unreachable(url, exc), EXIT_NO_ANSWER) from None
    try:
        return json.loads(body)
    except ValueError:
        raise CliError(
            f"{url} did not answer JSON; is this a fastproxy gateway?", EXIT_NO_ANSWER
        ) from None


def _detail(exc: urllib.error.HTTPError) -> str | None:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        return None
    return None if detail is None else str(detail)


def say(prog: str, message: str) -> None:
    """One line on stderr, whatever the message holds (a script greps one line)."""
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr, flush=True)


def fail(prog: str, err: CliError) -> int:
    say(prog, str(err))
    return err.exit_code


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def watch(
    prog: str, first: Any, fetch: Callable[[], Any], ns: Any, table: Callable[[], None]
) -> int:
    """``--watch``: JSON lines with ``--json``, else the live table, until Ctrl-C."""
    # Ctrl-C is how a watch ends, even when the shell that started it ignores SIGINT (a
    # background job without job control): Python keeps an inherited SIG_IGN otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if ns.json:
            watch_json(prog, first, fetch, ns.interval)
        table()
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def watch_json(prog: str, first: Any, fetch: Callable[[], Any], interval: float) -> NoReturn:
    """``--watch --json``: one compact document per line (for jq or a log) until Ctrl-C.
    A failed read is one line on stderr, and the next refresh tries again."""
    doc = first
    while True:
        if doc is not None:
            print(json.dumps(doc), flush=True)
        time.sleep(interval)
        try:
            doc = fetch()
        except CliError as err:
            say(prog, str(err))
            doc = None
