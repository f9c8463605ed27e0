"""ICMP ping in its three modes, against 127.0.0.1 only, each in a subprocess whose
privileges are set up for the mode:

- privileged: root with CAP_NET_RAW, and a ping_group_range that refuses datagram ICMP;
- unprivileged: a fresh network namespace (``unshare -n``) whose
  ``net.ipv4.ping_group_range`` admits us, and CAP_NET_RAW dropped (``setpriv``), so
  only datagram ICMP sockets can work;
- unavailable: the same namespace with a range that admits nobody and no CAP_NET_RAW.

Each subprocess runs a real gateway against a real mock LLM and prints its
/internal/health document: "unavailable" must never make the endpoint unhealthy.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

SCRIPT = r"""
import asyncio, json, tempfile, time
import uvloop, yaml
from fastproxy.admin.health_views import health_document
from fastproxy.admin.views import Views
from fastproxy.config import load_config
from fastproxy.gateway import Gateway
from fastproxy.mockllm import MockLLMServer

async def main():
    mock = MockLLMServer(host="127.0.0.1", port=0)
    await mock.start()
    d = tempfile.mkdtemp()
    tree = {"port": 0, "admin": {"port": 0}, "state_dir": d,
            "backends": {"openai.1": {"api_url": mock.url, "api_key": "k", "models": ["m"]}},
            "health_check": {"ping": {"interval_seconds": 0.05, "timeout_seconds": 1,
                                      "failure_threshold": 1},
                             "http": {"interval_seconds": 0.05, "failure_threshold": 1}}}
    with open(d + "/c.yaml", "w") as fh:
        yaml.safe_dump(tree, fh)
    gw = Gateway(load_config({}, config_file=d + "/c.yaml", env={}).config, env={})
    await gw.start()
    ep = gw.health.endpoint_of["openai.1"]
    first_ping = ep.last_ping_at
    deadline = time.monotonic() + 20
    # several rounds of both probes, so a wrong verdict would have had time to show
    while (ep.last_ping_at == first_ping
           or mock.stats.requests_by_path.get("/v1/models", 0) < 4):
        assert time.monotonic() < deadline, "probes did not run"
        await asyncio.sleep(0.02)
    views = Views(config=gw.config, backends=gw.plane.backends, plane=gw.plane,
                  health=gw.health, rate_limits=gw.rate_limits, metrics=gw.metrics,
                  usage=gw.usage)
    doc = health_document(views)
    print(json.dumps({"mode": gw.health.pinger.mode(), "doc": doc}))
    await gw.stop()
    await mock.close()

uvloop.run(main())
"""

NO_RAW = "setpriv --inh-caps=-net_raw --bounding-set=-net_raw"


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if shutil.which("ip") is None or shutil.which("sysctl") is None:
        return "ip(8)/sysctl(8) are not installed"
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"unshare -n is not permitted here: {r.stderr.strip()}"
    return None


def _run(shell_prefix: str) -> dict:
    cmd = f"{shell_prefix} {shlex.quote(sys.executable)} -c {shlex.quote(SCRIPT)}"
    r = subprocess.run(
        ["sh", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert r.returncode == 0, f"subprocess failed:\n{r.stderr[-3000:]}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["stderr"] = r.stderr
    return result


def _netns(range_: str, then: str) -> str:
    return (
        f"unshare -n sh -c 'ip link set lo up && "
        f'sysctl -qw net.ipv4.ping_group_range="{range_}" && exec {then} "$@"\' sh'
    )


def _endpoint(result: dict) -> dict:
    (ep,) = result["doc"]["endpoint_health"]["endpoints"]
    return ep


def test_privileged_mode_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("privileged ICMP needs root (or CAP_NET_RAW); not running as root")
    why = _can_unshare()
    if why is None:
        result = _run(_netns("1 0", ""))  # datagram ICMP refused: raw sockets must carry it
    else:
        with open("/proc/sys/net/ipv4/ping_group_range") as fh:
            lo, hi = (int(x) for x in fh.read().split())
        if lo <= os.getgid() <= hi:
            pytest.skip(f"{why}, and ping_group_range admits us, so the mode would be unprivileged")
        result = _run("")
    assert result["mode"] == "privileged"
    ep = _endpoint(result)
    assert ep["ping_status"] == "ok" and ep["ping_check_success"] is True
    assert ep["last_ping_latency_ms"] is not None and ep["is_healthy"] is True


def test_unprivileged_mode_in_a_namespace() -> None:
    why = _can_unshare()
    if why is not None:
        pytest.skip(why)
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv(1) is not installed: cannot drop CAP_NET_RAW")
    result = _run(_netns("0 2147483647", NO_RAW))
    assert result["mode"] == "unprivileged"
    ep = _endpoint(result)
    assert ep["ping_status"] == "ok" and ep["ping_check_success"] is True
    assert ep["ping_mode"] == "unprivileged" and ep["is_healthy"] is True


def test_unavailable_never_makes_an_endpoint_unhealthy() -> None:
    why = _can_unshare()
    if why is not None:
        pytest.skip(why)
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv(1) is not installed: cannot drop CAP_NET_RAW")
    result = _run(_netns("1 0", NO_RAW))
    assert result["mode"] == "unavailable"
    doc = result["doc"]
    ep = _endpoint(result)
    assert ep["ping_status"] == "unavailable" and ep["ping_check_success"] is None
    assert "CAP_NET_RAW" in ep["last_ping_error"]
    assert result["stderr"].count("ping unavailable") == 1  # said once, not every round
    assert ep["consecutive_ping_failures"] == 0
    assert ep["is_healthy"] is True and ep["http_check_success"] is True
    assert doc["status"] == "ok"
    assert doc["endpoint_health"]["backends"][0]["circuit_state"] == "closed"
