"""Host the benchmark's backends in one process: one traffic mock on 127.0.0.1 and N probe
targets, each on its own loopback address (127.0.0.2, 127.0.0.3, ...), so N distinct
normalised api_urls exist and every one of them is really pinged and really probed.

Prints one JSON line {"traffic": URL, "probed": [URL, ...]} once all are listening, then
serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys

import uvloop

from fastproxy.mockllm import MockLLMServer


async def serve(count: int, first: str) -> None:
    traffic = MockLLMServer(host="127.0.0.1", port=0)
    await traffic.start()
    base = ipaddress.ip_address(first)
    probed = []
    for i in range(count):
        server = MockLLMServer(host=str(base + i), port=0, models=[f"probe-{i}"])
        await server.start()
        probed.append(server)
    print(json.dumps({"traffic": traffic.url, "probed": [s.url for s in probed]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in [traffic, *probed]:
        await s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--first", default="127.0.0.2", help="address of the first probe target")
    ns = p.parse_args(argv)
    uvloop.run(serve(ns.count, ns.first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
