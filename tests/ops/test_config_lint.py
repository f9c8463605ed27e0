"""Config warnings: each rule on its own (the lint function, with the process facts
given), then as `fastproxy check-config` prints them and `fastproxy run` logs them."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastproxy.config import ConfigError, load_config
from fastproxy.config.lint import Finding, fds_needed, lint
from fastproxy.config.schema import AuthConfig, Config
from tests.support.proc import GatewayProcess

ROOMY = (1_000_000, 1_000_000)  # a file limit no rule minds


def codes(config: Config, *, nofile: tuple[int, int] = ROOMY, cores: int = 64) -> list[str]:
    return [f.code for f in lint(config, nofile=nofile, cores=cores)]


def loaded(**cli: Any) -> Config:
    """A config as the loader builds it (so with its refusals), from dotted keys."""
    return load_config(cli, env={}, use_files=False).config


def test_the_defaults_are_quiet() -> None:
    assert codes(loaded()) == []


def test_a_finding_is_a_code_and_one_line() -> None:
    findings = lint(loaded(**{"admin.host": "0.0.0.0"}), nofile=(64, 64), cores=1)
    assert [type(f) for f in findings] == [Finding, Finding]
    for code, message in findings:
        assert code and " " not in code
        assert message and "\n" not in message


# -- the data port ----------------------------------------------------------------------
def test_an_open_data_port_without_keys() -> None:
    # The loader refuses these; a Config made in code still hears about them.
    with pytest.raises(ConfigError):
        loaded(host="0.0.0.0")
    bare = Config(host="0.0.0.0")
    assert codes(bare) == ["open-data-port"]
    disabled = Config(host="0.0.0.0", auth=AuthConfig(disable_auth=True, api_keys=("k",)))
    assert codes(disabled) == ["open-data-port"]
    assert "auth.disable_auth" in lint(disabled, nofile=ROOMY, cores=64)[0].message
    assert codes(Config(host="0.0.0.0", auth=AuthConfig(api_keys=("k",)))) == []
    assert codes(Config(host="::1")) == []


# -- the admin listener -----------------------------------------------------------------
def test_an_admin_listener_that_can_only_refuse_remote_peers() -> None:
    assert codes(loaded(**{"admin.host": "0.0.0.0"})) == ["open-admin-listener"]
    assert codes(loaded(**{"admin.host": "::"})) == ["open-admin-listener"]
    # Someone may read it, so binding wide is meant.
    assert codes(loaded(**{"admin.host": "0.0.0.0", "admin.allow_networks": ["10.0.0.0/8"]})) == []
    keyed = {"admin.host": "0.0.0.0", "admin.api_keys": ["a" * 32]}
    assert codes(loaded(**keyed)) == []
    # No listener, nothing exposed.
    assert codes(loaded(**{"admin.host": "0.0.0.0", "admin.enabled": False})) == []


@pytest.mark.parametrize("net", ["0.0.0.0/0", "::/0", "10.1.2.3/0"])
def test_allow_networks_that_admit_every_address(net: str) -> None:
    assert codes(loaded(**{"admin.allow_networks": ["127.0.0.0/8", net]})) == [
        "allow-every-address"
    ]
    assert "[1]" in lint(loaded(**{"admin.allow_networks": ["127.0.0.0/8", net]}))[0].message


def test_narrow_allow_networks_are_fine() -> None:
    assert codes(loaded(**{"admin.allow_networks": ["10.0.0.0/8", "fd00::/8"]})) == []


# -- pools and file descriptors ---------------------------------------------------------
def _backends(**caps: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cap in caps.items():
        body: dict[str, Any] = {"type": "openai", "api_url": "http://127.0.0.1:9/v1"}
        if cap is not None:
            body["max_connections"] = cap
        out[name] = body
    return out


def test_a_pool_cap_above_max_connections() -> None:
    over = loaded(backends=_backends(a=200, b=50), **{"limits.max_connections": 100})
    assert codes(over) == ["pool-above-max-connections"]
    assert "backends.a.max_connections 200" in lint(over)[0].message
    assert codes(loaded(backends=_backends(a=100), **{"limits.max_connections": 100})) == []


def test_fds_needed_counts_both_ends_of_each_connection() -> None:
    fixed = fds_needed(loaded(**{"limits.max_connections": 1}, backends=_backends(a=1))) - 2
    with_backends = loaded(**{"limits.max_connections": 1000}, backends=_backends(a=None))
    assert fds_needed(with_backends) == 2 * 1000 + fixed
    # Pools capped lower than the clients: the upstream side is what the caps allow.
    capped = loaded(**{"limits.max_connections": 1000}, backends=_backends(a=100, b=200))
    assert fds_needed(capped) == 1000 + 300 + fixed
    # No backend: the demo backend's server end of each upstream connection is here too.
    demo = loaded(**{"limits.max_connections": 1000})
    assert fds_needed(demo) == 3 * 1000 + fixed


def test_a_file_limit_below_what_max_connections_needs() -> None:
    config = loaded(backends=_backends(a=None))
    needed = fds_needed(config)
    assert codes(config, nofile=(needed, needed)) == []
    assert codes(config, nofile=(needed - 1, needed)) == ["fd-limit"]
    assert codes(config, nofile=(resource.RLIM_INFINITY, resource.RLIM_INFINITY)) == []
    (finding,) = lint(config, nofile=(1024, 4096), cores=64)
    assert "may open 1024 (soft RLIMIT_NOFILE; hard 4096)" in finding.message
    assert f"about {needed} open files" in finding.message
    # 1024 descriptors, 352 of them fixed, two per connection: 336 connections fit.
    assert "past about 336 connections" in finding.message


# -- workers ----------------------------------------------------------------------------
def test_more_workers_than_usable_cores() -> None:
    assert loaded(workers=4).workers == 4
    assert codes(Config(workers=4), cores=2) == ["workers-above-cores"]
    assert "2 CPUs" in lint(Config(workers=4), nofile=ROOMY, cores=2)[0].message
    assert codes(Config(workers=4), cores=4) == []


def test_cores_default_to_this_process_affinity() -> None:
    usable = len(os.sched_getaffinity(0))
    assert [f.code for f in lint(Config(workers=usable + 1), nofile=ROOMY)] == [
        "workers-above-cores"
    ]
    assert [f.code for f in lint(Config(workers=usable), nofile=ROOMY)] == []


# -- the commands -----------------------------------------------------------------------
def _limit_nofile(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTPROXY", "USAGE_"))}
    env["XDG_CONFIG_HOME"] = "/nonexistent"
    return env


def test_check_config_prints_each_finding_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("admin:\n  allow_networks: ['0.0.0.0/0']\n")
    argv = [sys.executable, "-m", "fastproxy", "check-config", "--config", str(path)]
    proc = subprocess.run(
        [*argv, "--admin-host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
        # This very process, with a small file limit: the fd rule reads it from there.
        preexec_fn=lambda: _limit_nofile(512),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split("]", 1)[0] for line in lines] == [
        "fastproxy check-config: warning [allow-every-address",
        "fastproxy check-config: warning [fd-limit",
    ], lines
    assert "may open 512 (soft RLIMIT_NOFILE" in lines[1]
    assert "configuration is valid with 2 warning(s) on stderr" in proc.stdout
    # Allowed networks exist, so a wide admin bind is not flagged; without them it is.
    narrow = subprocess.run(
        [sys.executable, "-m", "fastproxy", "check-config", "--admin-host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert narrow.returncode == 0
    assert "warning [open-admin-listener]" in narrow.stderr


def test_check_config_without_findings_prints_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("limits:\n  max_connections: 100\n")  # fits any file limit here
    proc = subprocess.run(
        [sys.executable, "-m", "fastproxy", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert "configuration is valid;" in proc.stdout


def test_run_logs_each_finding_once_at_start(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    # Few connections, so that this machine's file limit adds no finding of its own.
    path.write_text("admin:\n  allow_networks: ['0.0.0.0/0']\nlimits:\n  max_connections: 100\n")
    gw = GatewayProcess(
        ["--config", str(path), "--port", "0", "--admin-port", "0"],
        cwd=str(tmp_path),
        env={"STATE_DIRECTORY": str(tmp_path / "state")},
    )
    try:
        gw.wait_ready()
    finally:
        assert gw.stop() == 0
    warned = [line for line in gw.lines if "config warning" in line]
    assert len(warned) == 1, gw.lines
    assert "level=WARNING" in warned[0] and "code=allow-every-address" in warned[0]
