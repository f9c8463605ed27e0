"""``fastproxy mock-llm`` / ``python -m fastproxy.mockllm``: run the mock until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence

import uvloop

from ..logs import configure_logging
from .from_capture import CaptureReplayServer, load_answers
from .server import DEFAULT_MODELS, MockLLMServer

log = logging.getLogger("fastproxy.mockllm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastproxy mock-llm",
        description="A deterministic OpenAI + Anthropic stand-in for tests, benchmarks and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=9000, help="bind port (default 9000; 0 picks a free port)"
    )
    parser.add_argument(
        "--models",
        default=None,
        metavar="A,B,...",
        help=f"comma-separated model ids for /v1/models (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    parser.add_argument(
        "--from-capture",
        metavar="FILE",
        action="append",
        help="serve the backend answers of this wire capture (file or directory; repeatable)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="with --from-capture: stream pacing, 1 as captured, 0 no pauses (default 1)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        type=str.upper,
    )
    return parser


def _tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _serve(server: MockLLMServer | CaptureReplayServer) -> None:
    await server.start()
    # The first stdout line is a contract: scripts and tests read the bound URL from it.
    print(f"mock-llm listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    log.info("mock-llm stopped")


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(ns.log_level)
    if ns.tls_key and not ns.tls_cert:
        print("fastproxy mock-llm: --tls-key needs --tls-cert", file=sys.stderr)
        return 2
    if ns.from_capture:
        return _main_from_capture(ns)
    models = [m.strip() for m in ns.models.split(",") if m.strip()] if ns.models else None
    try:
        tls = _tls_context(ns.tls_cert, ns.tls_key) if ns.tls_cert else None
    except (OSError, ssl.SSLError) as exc:
        print(f"fastproxy mock-llm: cannot load TLS certificate: {exc}", file=sys.stderr)
        return 2
    server = MockLLMServer(host=ns.host, port=ns.port, models=models, ssl=tls)
    try:
        uvloop.run(_serve(server))
    except OSError as exc:
        print(f"fastproxy mock-llm: cannot listen on {ns.host}:{ns.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _main_from_capture(ns: argparse.Namespace) -> int:
    from ..storage.capture_reader import CaptureError

    if ns.tls_cert or ns.models:
        print("fastproxy mock-llm: --from-capture takes no --tls-cert or --models", file=sys.stderr)
        return 2
    if ns.speed < 0:
        print("fastproxy mock-llm: --speed must be 0 or more", file=sys.stderr)
        return 2
    try:
        answers = load_answers(ns.from_capture)
    except CaptureError as exc:
        print(f"fastproxy mock-llm: {exc}", file=sys.stderr)
        return 2
    log.info("mock-llm: %d captured backend answers", len(answers))
    server = CaptureReplayServer(answers, host=ns.host, port=ns.port, speed=ns.speed)
    try:
        uvloop.run(_serve(server))
    except OSError as exc:
        print(f"fastproxy mock-llm: cannot listen on {ns.host}:{ns.port}: {exc}", file=sys.stderr)
        return 1
    return 0
