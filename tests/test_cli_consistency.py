"""One convention for every command that talks to a running gateway (docs/cli.md).

``fastproxy health``, ``fastproxy top``, ``fastproxy usage stats|export --url`` and
``scripts/inspect_activity.py``: the same ``--url`` (default from the config file's admin
listener), ``--json`` wherever a table is printed, the same exit codes, and one line on
stderr instead of a traceback. Every command runs as a real subprocess against a real
gateway, so exit codes and the split between stdout and stderr are the real ones.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fastproxy.cli_common import DEFAULT_URL, CliError, url_from_config
from fastproxy.config import ENV_VARS, resolve_state_path
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "inspect_activity.py"
FASTPROXY = (sys.executable, "-m", "fastproxy")
INSPECT = (sys.executable, str(SCRIPT))


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without anything that would point the commands at a gateway: no
    FASTPROXY_* variables and an empty XDG config directory."""
    env = {
        k: v for k, v in os.environ.items() if k not in ENV_VARS and not k.startswith("FASTPROXY")
    }
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty-xdg")
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run(
    cmd: tuple[str, ...], *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def one_line_error(out: subprocess.CompletedProcess[str], prog: str) -> str:
    """stderr is exactly one line naming the program, stdout is empty, no traceback."""
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(prog + ": "), lines[0]
    assert out.stdout == "", out.stdout
    return lines[0]


@pytest.fixture
def refused_url() -> Iterator[str]:
    # A port bound but never listening: connections to it are refused for as long as the
    # test holds it, and nothing else can take it meanwhile.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


@pytest.fixture
def busy_gateway(gateway_factory: Callable[..., RunningGateway], mock_llm: Any) -> RunningGateway:
    """Activity and usage tracking on, one healthy backend."""
    return gateway_factory(
        {"backends": {"openai.1": backend_for(mock_llm)}, "enable_activity_tracking": True}
    )


def admin_url(gw: RunningGateway) -> str:
    assert gw.gateway.admin_port is not None
    return f"http://127.0.0.1:{gw.gateway.admin_port}"


# The commands that print a table, what their --json document holds, and a piece of
# their table.
TABLES = {
    "health": ((*FASTPROXY, "health"), "endpoint_health", "Circuit breakers"),
    "top": ((*FASTPROXY, "top", "--once"), "activity_tracking_enabled", "Active Connections"),
    "usage stats": ((*FASTPROXY, "usage", "stats"), "request_count", "by backend"),
    "inspect_activity.py": (INSPECT, "activity_tracking_enabled", "Active Connections"),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_url_flag_and_json(name: str, busy_gateway: RunningGateway, tmp_path: Path) -> None:
    cmd, key, table_text = TABLES[name]
    env = clean_env(tmp_path)
    out = run(cmd, "--url", admin_url(busy_gateway), "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert key in json.loads(out.stdout)  # stdout is the document and nothing else
    table = run(cmd, "--url", admin_url(busy_gateway), env=env)
    assert table.returncode == 0, table.stderr
    assert table_text in table.stdout
    with pytest.raises(ValueError):
        json.loads(table.stdout)


# Every command and mode that reads the gateway, with nothing listening at its URL.
UNREACHABLE = {
    "health": ((*FASTPROXY, "health", "--json"), "fastproxy health"),
    "health --watch": ((*FASTPROXY, "health", "--watch"), "fastproxy health"),
    "top --once": ((*FASTPROXY, "top", "--once", "--json"), "fastproxy top"),
    # Watch mode gives up when the first read fails: a wrong URL is not a restart.
    "top": ((*FASTPROXY, "top"), "fastproxy top"),
    "usage stats": ((*FASTPROXY, "usage", "stats", "--json"), "fastproxy usage"),
    "usage export": ((*FASTPROXY, "usage", "export", "--out", "OUT"), "fastproxy usage"),
    "inspect_activity.py": ((*INSPECT, "--json"), "inspect_activity.py"),
    "inspect_activity.py --watch": ((*INSPECT, "--watch"), "inspect_activity.py"),
}


@pytest.mark.parametrize("name", list(UNREACHABLE))
def test_nothing_listening_exits_1_with_one_line(
    name: str, refused_url: str, tmp_path: Path
) -> None:
    cmd, prog = UNREACHABLE[name]
    target = tmp_path / "export.json"
    cmd = tuple(str(target) if a == "OUT" else a for a in cmd)
    out = run(cmd, "--url", refused_url, env=clean_env(tmp_path), timeout=30)
    assert out.returncode == 1
    line = one_line_error(out, prog)
    assert f"cannot reach the gateway at {refused_url}/" in line
    assert not target.exists()  # no empty export file left behind


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree))
    return path


def test_default_url_comes_from_the_config_lookup(
    busy_gateway: RunningGateway, tmp_path: Path
) -> None:
    port = busy_gateway.gateway.admin_port
    admin = {"admin": {"host": "127.0.0.1", "port": port}}
    # $FASTPROXY_CONFIG
    by_env = write_config(tmp_path / "env" / "config.yaml", admin)
    out = run(
        (*FASTPROXY, "health"), "--json", env=clean_env(tmp_path, FASTPROXY_CONFIG=str(by_env))
    )
    assert out.returncode == 0, out.stderr
    assert "endpoint_health" in json.loads(out.stdout)
    # $XDG_CONFIG_HOME/fastproxy/config.yaml
    write_config(tmp_path / "xdg" / "fastproxy" / "config.yaml", admin)
    out = run(
        (*FASTPROXY, "top"),
        "--once",
        "--json",
        env=clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg")),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["activity_tracking_enabled"] is True
    # --config, on the script; and a wildcard bind is reached over loopback.
    wild = write_config(tmp_path / "wild.yaml", {"admin": {"host": "0.0.0.0", "port": port}})
    out = run(INSPECT, "--config", str(wild), "--json", env=clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["activity_tracking_enabled"] is True
    # With the admin listener off, the data port serves the same monitoring paths.
    data = write_config(
        tmp_path / "data.yaml", {"admin": {"enabled": False}, "port": busy_gateway.port}
    )
    out = run((*FASTPROXY, "health"), "--config", str(data), "--json", env=clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    # The environment layers over the file, as for `fastproxy run`.
    other = write_config(tmp_path / "other.yaml", {"admin": {"port": 1}})
    out = run(
        (*FASTPROXY, "top"),
        "--once",
        "--json",
        "--config",
        str(other),
        env=clean_env(tmp_path, FASTPROXY_ADMIN_PORT=str(port)),
    )
    assert out.returncode == 0, out.stderr


def test_default_url_without_a_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if Path("/etc/fastproxy/config.yaml").exists():
        pytest.skip("this machine has /etc/fastproxy/config.yaml, which the lookup finds")
    for var in [*ENV_VARS, "FASTPROXY_CONFIG"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert url_from_config(None) == DEFAULT_URL == "http://127.0.0.1:8001"
    v6 = write_config(tmp_path / "v6.yaml", {"admin": {"host": "::", "port": 9001}})
    assert url_from_config(str(v6)) == "http://[::1]:9001"
    free = write_config(tmp_path / "free.yaml", {"admin": {"port": 0}})
    with pytest.raises(CliError) as err:
        url_from_config(str(free))
    assert err.value.exit_code == 2 and "admin.port is 0" in str(err.value)


def test_old_spellings_still_work(busy_gateway: RunningGateway, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    url = admin_url(busy_gateway)
    # The positional URL of top and of the script, and --raw, from before --url/--json.
    for cmd in ((*FASTPROXY, "top", "--once"), INSPECT):
        out = run(cmd, url, "--raw", env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["activity_tracking_enabled"] is True
    # health --url accepted the full path of its document.
    out = run((*FASTPROXY, "health"), "--url", url + "/internal/health", "--json", env=env)
    assert out.returncode == 0, out.stderr
    # The same URL twice is fine; two different ones are a usage error.
    assert run(INSPECT, url, "--url", url + "/", "--json", env=env).returncode == 0
    out = run(INSPECT, url, "--url", "http://127.0.0.1:1", env=env)
    assert out.returncode == 2
    assert "two different URLs" in one_line_error(out, "inspect_activity.py")


def test_exit_3_when_the_gateway_answers_that_something_is_off(
    gateway_factory: Callable[..., RunningGateway], mock_llm: Any, server_loop: Any, tmp_path: Path
) -> None:
    # A backend refusing its key is "misconfigured", so health is "degraded"; activity
    # and usage tracking are off.
    server_loop.call(lambda: mock_llm.set_behaviour(path_prefix="/v1/models", status=401))
    gw = gateway_factory(
        {"backends": {"openai.1": backend_for(mock_llm)}, "usage_tracking": {"enabled": False}}
    )
    env = clean_env(tmp_path)
    url = admin_url(gw)
    out = run((*FASTPROXY, "health"), "--url", url, "--json", env=env)
    assert out.returncode == 3, out.stderr
    assert json.loads(out.stdout)["status"] == "degraded"  # the document is still printed
    for cmd, prog in (
        ((*FASTPROXY, "top", "--once"), "fastproxy top"),
        (INSPECT, "inspect_activity.py"),
    ):
        out = run(cmd, "--url", url, env=env)
        assert out.returncode == 3
        assert "Activity tracking is off" in one_line_error(out, prog)
        # --json prints the document, and the exit code still says tracking is off.
        out = run(cmd, "--url", url, "--json", env=env)
        assert out.returncode == 3
        assert json.loads(out.stdout)["activity_tracking_enabled"] is False
    for verb in (("stats",), ("export", "--out", str(tmp_path / "x.json"))):
        out = run((*FASTPROXY, "usage", *verb), "--url", url, env=env)
        assert out.returncode == 3
        assert "usage tracking is disabled" in one_line_error(out, "fastproxy usage")


BAD = {
    "not an http URL": ((*FASTPROXY, "health", "--url", "ftp://example"), "fastproxy health"),
    "bad port": ((*FASTPROXY, "top", "--once", "--url", "http://127.0.0.1:99999"), "fastproxy top"),
    "missing --config": (
        (*FASTPROXY, "top", "--once", "--config", "/nonexistent.yaml"),
        "fastproxy top",
    ),
    "broken config": ((*FASTPROXY, "health", "--config", "BROKEN"), "fastproxy health"),
    "script, broken config": ((*INSPECT, "--config", "BROKEN"), "inspect_activity.py"),
    "usage, bad URL": ((*FASTPROXY, "usage", "stats", "--url", "nope://x"), "fastproxy usage"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_or_config_exit_2(name: str, tmp_path: Path) -> None:
    broken = write_config(tmp_path / "broken.yaml", {"admin": {"port": "eighty"}})
    cmd, prog = BAD[name]
    cmd = tuple(str(broken) if a == "BROKEN" else a for a in cmd)
    out = run(cmd, env=clean_env(tmp_path))
    assert out.returncode == 2
    one_line_error(out, prog)


@pytest.mark.parametrize(
    "args",
    [
        ("health", "--interval", "0"),
        ("top", "--timeout", "-1"),
        ("usage", "stats", "--db", "x.db", "--url", "http://h:1"),
    ],
)
def test_argparse_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    out = run(FASTPROXY, *args, env=clean_env(tmp_path))
    assert out.returncode == 2
    assert "error:" in out.stderr and "Traceback" not in out.stderr


def test_usage_through_the_gateway_matches_the_database(
    busy_gateway: RunningGateway, tmp_path: Path
) -> None:
    r = httpx.post(
        busy_gateway.url + "/v1/chat/completions",
        timeout=30,
        headers={"x-session-id": "cli-consistency"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200

    def recorded() -> bool:
        stats = httpx.get(admin_url(busy_gateway) + "/v1/usage/stats", timeout=10).json()
        return bool(stats["request_count"] == 1)

    wait_until(recorded, timeout=20, interval=0.05, what="the usage record")
    config = busy_gateway.gateway.config
    db = resolve_state_path(config, config.usage_tracking.persistence_path)
    env = clean_env(tmp_path)
    via_url = run(
        (*FASTPROXY, "usage", "stats"), "--url", admin_url(busy_gateway), "--json", env=env
    )
    via_db = run((*FASTPROXY, "usage", "stats"), "--db", str(db), "--json", env=env)
    assert via_url.returncode == via_db.returncode == 0, via_url.stderr + via_db.stderr
    assert json.loads(via_url.stdout) == json.loads(via_db.stdout)
    # Filters go to the gateway as they go to the database.
    none = run(
        (*FASTPROXY, "usage", "stats"),
        "--url",
        admin_url(busy_gateway),
        "--json",
        "--backend",
        "anthropic.9",
        env=env,
    )
    assert json.loads(none.stdout)["request_count"] == 0
    bad = run(
        (*FASTPROXY, "usage", "stats"),
        "--url",
        admin_url(busy_gateway),
        "--start-date",
        "nope",
        env=env,
    )
    assert bad.returncode == 2 and "--start-date" in bad.stderr
    target = tmp_path / "out.ndjson"
    out = run(
        (*FASTPROXY, "usage", "export"),
        "--url",
        admin_url(busy_gateway),
        "--format",
        "ndjson",
        "--out",
        str(target),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["session_id"] for r in records] == ["cli-consistency"]


@pytest.mark.parametrize(
    "cmd",
    [(*FASTPROXY, "top"), (*FASTPROXY, "health", "--watch"), (*INSPECT, "--watch")],
    ids=["top", "health", "script"],
)
def test_watch_json_is_one_document_per_line_until_ctrl_c(
    cmd: tuple[str, ...], busy_gateway: RunningGateway, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [*cmd, "--url", admin_url(busy_gateway), "--json", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(tmp_path),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while seen.count(b"\n") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                seen += os.read(proc.stdout.fileno(), 65536)
        lines = seen.splitlines()
        assert len(lines) >= 2, seen
        assert all(isinstance(json.loads(line), dict) for line in lines[:2])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def pythons_without_dependencies() -> list[tuple[str, ...]]:
    # -S leaves out site-packages, where fastproxy's dependencies are installed: this
    # interpreter then behaves like a system Python that never saw the project's venv.
    found: list[tuple[str, ...]] = [(sys.executable, "-I", "-S")]
    system = shutil.which("python3", path="/usr/bin")
    if (
        system
        and subprocess.run(
            [system, "-I", "-c", "import rich"], capture_output=True, timeout=30, check=False
        ).returncode
        != 0
    ):
        found.append((system, "-I"))
    return found


@pytest.mark.parametrize("python", pythons_without_dependencies(), ids=" ".join)
def test_script_without_dependencies_says_so_in_one_line(
    python: tuple[str, ...], refused_url: str, tmp_path: Path
) -> None:
    out = run((*python, str(SCRIPT)), "--url", refused_url, env=clean_env(tmp_path))
    assert out.returncode == 2
    line = one_line_error(out, "inspect_activity.py")
    assert "lacks fastproxy's dependencies" in line and "fastproxy top --once" in line


def test_test_sh_without_python_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test.sh", tmp_path / "scripts" / "test.sh")
    out = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHON": str(tmp_path / "no-such-python3")},
    )
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "no-such-python3" in lines[0], out.stderr
    assert not (tmp_path / ".venv").exists()
