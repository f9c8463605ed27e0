"""`fastproxy service unit`: the printed unit, read back the way systemd reads it.

Every test runs the command as a process. systemd-analyze (when installed) is the judge
of whether systemd knows every option; without it those tests skip, the rest still run.
"""

from __future__ import annotations

import configparser
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fastproxy.config import load_config
from fastproxy.config.lint import fds_needed, lint
from fastproxy.gateway import CUT_EXCHANGES_WAIT_S
from fastproxy.service_unit import MIN_NOFILE
from fastproxy.storage.recorder_link import STOP_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]
INSTALL_PYTHON = "/opt/fastproxy/.venv/bin/python"  # where docs/OPERATIONS.md installs it


def unit_text(*args: str, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY")}
    proc = subprocess.run(
        [sys.executable, "-m", "fastproxy", "service", "unit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def parse(text: str) -> configparser.ConfigParser:
    # strict: a key twice in a section is an error here (systemd would take both, and
    # for most keys the second silently wins).
    cp = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def exec_argv(service: configparser.SectionProxy) -> list[str]:
    """ExecStart= split as systemd splits it, for the quoting exec_arg produces."""
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(service["ExecStart"])]


def test_the_unit_parses_and_runs_this_install(tmp_path: Path) -> None:
    unit = parse(unit_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "StateDirectory": "fastproxy",
        "DynamicUser": "yes",
        "EnvironmentFile": "-/etc/fastproxy/env",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert int(service["WatchdogSec"]) > 0
    assert "AmbientCapabilities" not in service
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    argv = exec_argv(service)
    assert argv[3:] == ["run", "--config", "/etc/fastproxy/config.yaml"]
    assert argv[0] == sys.executable and os.access(argv[0], os.X_OK)
    # The interpreter it names has this fastproxy: run it as the unit would, asking only
    # for the version.
    version = subprocess.run(
        [*argv[:3], "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    from fastproxy import __version__

    assert version.stdout.strip() == f"fastproxy {__version__}", version.stderr


def test_stop_timeout_and_file_limit_follow_the_config(tmp_path: Path) -> None:
    after_drain = CUT_EXCHANGES_WAIT_S + STOP_TIMEOUT_S + 5.0
    default = parse(unit_text("--config", str(tmp_path / "absent.yaml")))["Service"]
    assert int(default["TimeoutStopSec"]) == math.ceil(30 + after_drain)
    assert int(default["LimitNOFILE"]) == MIN_NOFILE

    path = tmp_path / "config.yaml"
    path.write_text("timeouts:\n  drain_seconds: 100\nlimits:\n  max_connections: 50000\n")
    service = parse(unit_text("--config", str(path)))["Service"]
    assert int(service["TimeoutStopSec"]) == math.ceil(100 + after_drain)
    nofile = int(service["LimitNOFILE"])
    config = load_config(config_file=str(path), env={}, use_files=False).config
    assert nofile == fds_needed(config) > MIN_NOFILE
    # The unit's limit is one check-config accepts for the same config.
    assert [f.code for f in lint(config, nofile=(nofile, nofile))] == []
    assert exec_argv(service)[-1] == str(path)


def test_a_relative_config_path_is_made_absolute(tmp_path: Path) -> None:
    service = parse(unit_text("--config", "conf/fp.yaml", cwd=tmp_path))["Service"]
    assert exec_argv(service)[-1] == str(tmp_path / "conf" / "fp.yaml")


def test_a_broken_config_file_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("timeouts:\n  drain_secs: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fastproxy", "service", "unit", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "timeouts.drain_secs: unknown key" in proc.stderr


def test_cap_net_raw_grants_only_that_capability() -> None:
    service = parse(unit_text("--cap-net-raw"))["Service"]
    assert service["AmbientCapabilities"] == "CAP_NET_RAW"
    assert service["CapabilityBoundingSet"] == "CAP_NET_RAW"


def test_the_repo_unit_is_the_command_output() -> None:
    if Path("/etc/fastproxy/config.yaml").exists():
        pytest.skip("/etc/fastproxy/config.yaml exists here and would shape the unit")
    committed = (REPO / "scripts" / "fastproxy.service").read_text()
    made = unit_text("--python", INSTALL_PYTHON)
    assert committed == made, (
        "scripts/fastproxy.service is stale: regenerate it with "
        f"`python -m fastproxy service unit --python {INSTALL_PYTHON} > "
        "scripts/fastproxy.service`"
    )


# -- systemd's own reading ------------------------------------------------------------------
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def verify(path: Path) -> list[str]:
    """What `systemd-analyze verify` says about the unit file itself (unknown keys and
    sections, bad values, a missing executable); empty when systemd takes all of it."""
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    # Unknown or bad settings are reported as "<path>:<line>: ..., ignoring." with exit
    # status 0; a missing executable is "<name>: Command ... is not executable" and 1.
    said = [line for line in proc.stderr.splitlines() if path.name in line]
    if proc.returncode != 0 and not said:
        said = proc.stderr.splitlines() or [f"exit {proc.returncode}"]
    return said


@needs_systemd_analyze
@pytest.mark.parametrize("flags", [(), ("--cap-net-raw",)], ids=["default", "cap-net-raw"])
def test_systemd_knows_every_option(tmp_path: Path, flags: tuple[str, ...]) -> None:
    path = tmp_path / "fastproxy.service"
    path.write_text(unit_text(*flags))
    assert verify(path) == []


@needs_systemd_analyze
def test_the_verify_check_sees_a_misspelt_option(tmp_path: Path) -> None:
    """The check above must fail for an option systemd does not know."""
    path = tmp_path / "fastproxy.service"
    path.write_text(unit_text().replace("WatchdogSec=", "WatchdogSecs="))
    said = verify(path)
    assert len(said) == 1 and "WatchdogSecs" in said[0], said


@needs_systemd_analyze
def test_paths_with_spaces_and_percent_reach_systemd_intact(tmp_path: Path) -> None:
    """systemd reads % as a specifier, $ as a variable and splits on spaces: the unit
    quotes and escapes them, and systemd then finds the interpreter at its real path."""
    venv_bin = tmp_path / "my venv 100%$x" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.symlink_to(sys.executable)
    path = tmp_path / "fastproxy.service"
    path.write_text(unit_text("--python", str(python), "--config", str(venv_bin / "c 1%.yaml")))
    assert verify(path) == []
    argv = exec_argv(parse(path.read_text())["Service"])
    assert argv[0] == str(python) and argv[-1] == str(venv_bin / "c 1%.yaml")


def test_the_exec_start_line_runs_a_gateway_that_keeps_state_in_the_state_directory(
    tmp_path: Path,
) -> None:
    """Run ExecStart= as systemd would: its exact argv, a notify socket, $STATE_DIRECTORY,
    the working directory /. READY=1 names the port; a request's usage record lands in
    the state directory; SIGTERM ends it with status 0 well within TimeoutStopSec=."""
    config = tmp_path / "config.yaml"
    config.write_text("port: 0\nadmin:\n  port: 0\nlimits:\n  max_connections: 100\n")
    service = parse(unit_text("--config", str(config)))["Service"]
    state = tmp_path / "state"
    state.mkdir()
    notify = tmp_path / "notify.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTPROXY", "USAGE_"))}
    env.update(NOTIFY_SOCKET=str(notify), STATE_DIRECTORY=str(state))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(30)
        proc = subprocess.Popen(
            exec_argv(service),
            cwd="/",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            message = ""
            while "READY=1" not in message:
                message = sock.recv(4096).decode()
            m = re.search(r"STATUS=listening on [^\s:]+:(\d+)", message)
            assert m, message
            r = httpx.post(
                f"http://127.0.0.1:{m.group(1)}/v1/chat/completions",
                json={"model": "demo", "messages": [{"role": "user", "content": "x"}]},
                timeout=10,
            )
            assert r.status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=int(service["TimeoutStopSec"]))
        assert proc.returncode == 0, err
    assert "level=ERROR" not in err, err
    # The record was written where the unit says state lives (/ is not writable there).
    db = str(state / "usage.db")
    stats = subprocess.run(
        [sys.executable, "-m", "fastproxy", "usage", "stats", "--json", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["request_count"] == 1
