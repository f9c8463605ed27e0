"""Config: layering (defaults < YAML < env < CLI), provenance, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, load_config, resolve_state_path


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_match_the_contract() -> None:
    c = load_config(env={}, use_files=False).config
    assert (c.host, c.port, c.admin.host, c.admin.port) == ("127.0.0.1", 8000, "127.0.0.1", 8001)
    assert c.health_check.ping.interval_seconds == 30.0
    assert c.health_check.ping.failure_threshold == 3
    assert c.health_check.http.interval_seconds == 60.0
    assert c.health_check.http.failure_threshold == 2
    assert c.health_check.http.path == "/models"
    assert c.usage_tracking.persistence_path == "./var/usage.db"
    assert c.usage_tracking.flush_interval_seconds == 1.0
    assert c.usage_tracking.max_records_in_memory == 100_000
    assert c.wire_capture.enabled is False
    assert c.wire_capture.max_file_bytes == 100 * 1024 * 1024
    assert c.enable_activity_tracking is False
    assert c.activity.stale_timeout_seconds == 300
    assert c.limits.max_request_line_bytes == 8192
    assert c.limits.max_head_bytes == 65536
    assert c.limits.max_body_bytes == 64 * 1024 * 1024
    assert (c.timeouts.header_seconds, c.timeouts.body_idle_seconds) == (10, 30)
    assert (c.timeouts.keepalive_seconds, c.timeouts.drain_seconds) == (75, 30)
    assert (c.circuit_breaker.failure_threshold, c.circuit_breaker.open_cooldown_seconds) == (5, 30)


def test_config_is_frozen() -> None:
    c = load_config(env={}, use_files=False).config
    with pytest.raises(AttributeError):
        c.port = 1  # type: ignore[misc]


def test_yaml_then_env_then_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path, "port: 9100\nusage_tracking:\n  flush_interval_seconds: 5\nlog_level: WARNING\n"
    )
    only_file = load_config(config_file=path, env={})
    assert only_file.config.port == 9100
    assert only_file.origin("port") == f"file {path}"

    env = {"FASTPROXY_PORT": "9200", "USAGE_TRACKING_FLUSH_INTERVAL_SECONDS": "2.5"}
    with_env = load_config(config_file=path, env=env)
    assert with_env.config.port == 9200
    assert with_env.config.usage_tracking.flush_interval_seconds == 2.5
    assert with_env.origin("port") == "env FASTPROXY_PORT"
    assert with_env.config.log_level == "WARNING"  # file value untouched by env

    with_cli = load_config({"port": "9300", "log_level": "DEBUG"}, config_file=path, env=env)
    assert with_cli.config.port == 9300
    assert with_cli.origin("port") == "flag --port"
    assert with_cli.config.log_level == "DEBUG"
    assert with_cli.config.usage_tracking.flush_interval_seconds == 2.5


@pytest.mark.parametrize(
    ("var", "value", "key", "expected"),
    [
        ("USAGE_TRACKING_ENABLED", "false", ("usage_tracking", "enabled"), False),
        (
            "USAGE_TRACKING_PERSISTENCE_PATH",
            "/tmp/u.db",
            ("usage_tracking", "persistence_path"),
            "/tmp/u.db",
        ),
        (
            "USAGE_TRACKING_MAX_RECORDS_IN_MEMORY",
            "500",
            ("usage_tracking", "max_records_in_memory"),
            500,
        ),
        ("WIRE_CAPTURE_ENABLED", "false", ("wire_capture", "enabled"), False),
        ("REPLACEMENT_ENABLED", "0", ("replacement", "enabled"), False),
        ("REPLACEMENT_PROBABILITY", "0.5", ("replacement", "probability"), 0.5),
        ("REPLACEMENT_TURN_COUNT", "4", ("replacement", "turn_count"), 4),
        ("ENABLE_ACTIVITY_TRACKING", "1", ("enable_activity_tracking",), True),
        ("FASTPROXY_API_KEYS", "k1, k2", ("auth", "api_keys"), ("k1", "k2")),
        ("FASTPROXY_LOG_LEVEL", "ERROR", ("log_level",), "ERROR"),
        ("FASTPROXY_ACCESS_LOG", "yes", ("access_log",), True),
        ("FASTPROXY_WORKERS", "1", ("workers",), 1),
        ("FASTPROXY_ADMIN_PORT", "9999", ("admin", "port"), 9999),
        ("FASTPROXY_ADMIN_HOST", "::1", ("admin", "host"), "::1"),
        (
            "FASTPROXY_ADMIN_API_KEYS",
            "adm-0123456789abcdef, adm-fedcba9876543210",
            ("admin", "api_keys"),
            ("adm-0123456789abcdef", "adm-fedcba9876543210"),
        ),
    ],
)
def test_every_documented_env_var_is_read(
    var: str, value: str, key: tuple[str, ...], expected: object
) -> None:
    c = load_config(env={var: value}, use_files=False).config
    node: object = c
    for part in key:
        node = getattr(node, part)
    assert node == expected


def test_replacement_keys_load_from_every_source(tmp_path: Path) -> None:
    # Random model replacement is built: its keys load from YAML, env and flags, each
    # layer above the one below (invalid rules: tests/replacement/test_config.py).
    from fastproxy.config import parse_replacement_rule

    path = write(
        tmp_path,
        "replacement:\n  enabled: true\n  probability: 0.1\n  turn_count: 2\n"
        "  replacement_rules:\n    - {from_pattern: gpt-4o, to_backend: demo, to_model: a}\n",
    )
    from_file = load_config(config_file=path, env={}).config.replacement
    assert (from_file.enabled, from_file.probability, from_file.turn_count) == (True, 0.1, 2)
    assert from_file.replacement_rules[0].to_model == "a"
    env = {
        "REPLACEMENT_PROBABILITY": "0.25",
        "REPLACEMENT_TURN_COUNT": "3",
        "REPLACEMENT_RULES": '[{"from_pattern": "*", "to_backend": "demo", "to_model": "b"}]',
    }
    from_env = load_config(config_file=path, env=env).config.replacement
    assert (from_env.probability, from_env.turn_count) == (0.25, 3)
    assert [r.to_model for r in from_env.replacement_rules] == ["b"]
    cli = {
        "replacement.probability": "1",
        "replacement.replacement_rules": [
            parse_replacement_rule("gpt=demo:c"),
            parse_replacement_rule("*=demo:d"),
        ],
    }
    loaded = load_config(cli, config_file=path, env=env)
    rep = loaded.config.replacement
    assert rep.probability == 1.0 and [r.to_model for r in rep.replacement_rules] == ["c", "d"]
    assert loaded.origin("replacement.replacement_rules") == (
        "flag --random-model-replacement-from-to"
    )
    empty = load_config(env={"REPLACEMENT_RULES": "[]"}, use_files=False).config
    assert empty.replacement.replacement_rules == ()
    with pytest.raises(ConfigError, match="FROM=BACKEND:MODEL"):
        parse_replacement_rule("nonsense")


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        # a misspelt key
        (
            "health_check:\n  ping:\n    intervl_seconds: 3\n",
            ["health_check.ping.intervl_seconds", "unknown key"],
        ),
        # a string where a number belongs
        (
            "usage_tracking:\n  flush_interval_seconds: soon\n",
            ["usage_tracking.flush_interval_seconds", "'soon'", "expected a number"],
        ),
        # a probability out of range
        ("replacement:\n  probability: 1.5\n", ["replacement.probability", "1.5", "<= 1.0"]),
        # a bad backend field names the backend
        (
            "backends:\n  openai.1:\n    api_url: http://x/v1\n    max_connections: 0\n",
            ["backends.openai.1.max_connections", "0", ">= 1"],
        ),
        ("backends:\n  mine:\n    api_url: http://x/v1\n", ["backends.mine.type", "missing"]),
        (
            "usage_tracking:\n  persistence_path: ./var/usage_data.json\n",
            ["usage_tracking.persistence_path", "SQLite"],
        ),
        ("default_backend: nope\n", ["default_backend", "'nope'"]),
        ("admin:\n  allow_networks: [not-a-net]\n", ["admin.allow_networks[0]", "CIDR"]),
        ("port: 70000\n", ["port", "70000", "<= 65535"]),
    ],
)
def test_bad_values_give_one_line_naming_the_key(
    tmp_path: Path, yaml_text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_admin_keys_off_by_default_and_separate_from_client_keys() -> None:
    c = load_config(env={}, use_files=False).config
    assert (c.admin.api_keys, c.admin.remote_writes) == ((), False)
    assert c.health_check.log_repeat_window_seconds == 600
    long_key = "adm-0123456789abcdef"
    with pytest.raises(ConfigError) as info:
        load_config(
            env={"FASTPROXY_ADMIN_API_KEYS": long_key, "FASTPROXY_API_KEYS": long_key},
            use_files=False,
        )
    assert str(info.value).startswith("admin.api_keys[0]: the same key is in auth.api_keys")
    assert long_key not in str(info.value)


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        (
            "admin:\n  api_keys: [short-secret]\n",
            ["admin.api_keys[0]", "12 characters", "at least 16"],
        ),
        (
            "admin:\n  api_keys: ['adm-0123456789 abcdef']\n",
            ["admin.api_keys[0]", "whitespace or a comma"],
        ),
        ("admin:\n  remote_writes: true\n", ["admin.remote_writes", "needs admin.api_keys"]),
        # a key written where the list belongs: named, typed, never echoed
        ("admin:\n  api_keys: short-secret\n", ["admin.api_keys", "not shown", "array"]),
        ("auth:\n  api_keys: short-secret\n", ["auth.api_keys", "not shown", "array"]),
        (
            "health_check:\n  log_repeat_window_seconds: -1\n",
            ["health_check.log_repeat_window_seconds", "-1", ">= 0"],
        ),
    ],
)
def test_admin_key_errors_name_the_key_and_never_show_it(
    tmp_path: Path, yaml_text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    message = str(info.value)
    assert "\n" not in message and "short-secret" not in message and "abcdef" not in message
    for fragment in fragments:
        assert fragment in message


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"FASTPROXY_PORT.*'abc'"):
        load_config(env={"FASTPROXY_PORT": "abc"}, use_files=False)
    with pytest.raises(ConfigError, match="ENABLE_ACTIVITY_TRACKING"):
        load_config(env={"ENABLE_ACTIVITY_TRACKING": "maybe"}, use_files=False)


def test_non_loopback_bind_requires_auth() -> None:
    with pytest.raises(ConfigError, match=r"requires auth\.api_keys"):
        load_config({"host": "0.0.0.0"}, env={}, use_files=False)
    with pytest.raises(ConfigError, match="without authentication"):
        load_config(
            {"host": "0.0.0.0", "auth.disable_auth": True},
            env={"FASTPROXY_API_KEYS": "k"},
            use_files=False,
        )
    ok = load_config({"host": "0.0.0.0"}, env={"FASTPROXY_API_KEYS": "k"}, use_files=False)
    assert ok.config.auth.api_keys == ("k",)


def test_file_discovery_order(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "fastproxy").mkdir(parents=True)
    (xdg / "fastproxy" / "config.yaml").write_text("port: 1111\n")
    assert load_config(env={"XDG_CONFIG_HOME": str(xdg)}).config.port == 1111
    other = write(tmp_path, "port: 2222\n")
    env = {"XDG_CONFIG_HOME": str(xdg), "FASTPROXY_CONFIG": other}
    assert load_config(env=env).config.port == 2222
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("port: 3333\n")
    assert load_config(config_file=str(explicit), env=env).config.port == 3333
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=str(tmp_path / "missing.yaml"), env={})


def test_state_directory_under_systemd(tmp_path: Path) -> None:
    c = load_config(env={"STATE_DIRECTORY": str(tmp_path)}, use_files=False).config
    assert resolve_state_path(c, c.usage_tracking.persistence_path) == tmp_path / "usage.db"
    plain = load_config(env={}, use_files=False).config
    assert resolve_state_path(plain, "./var/usage.db") == Path("var/usage.db")
    assert resolve_state_path(plain, "/abs/x.db") == Path("/abs/x.db")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FASTPROXY", "USAGE_", "WIRE_"))
    }
    full_env["XDG_CONFIG_HOME"] = "/nonexistent"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("health_check:\n  ping:\n    intervl_seconds: 3\n", "health_check.ping.intervl_seconds"),
        (
            "usage_tracking:\n  flush_interval_seconds: soon\n",
            "usage_tracking.flush_interval_seconds",
        ),
        ("replacement:\n  probability: 1.5\n", "replacement.probability"),
    ],
)
def test_check_config_cli_rejects_with_exit_2(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = write(tmp_path, yaml_text)
    proc = _cli("check-config", "--config", path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0]
    # `run` refuses the same file the same way, before binding anything.
    proc = _cli("run", "--config", path)
    assert proc.returncode == 2 and key in proc.stderr


def test_check_config_prints_sources_and_masks_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "backends:\n  openai.1:\n    api_url: http://127.0.0.1:1/v1\n"
        "    api_key: sk-live-supersecret\n",
    )
    proc = _cli(
        "check-config",
        "--config",
        path,
        "--port",
        "9999",
        env={"FASTPROXY_API_KEYS": "client-secret-1", "FASTPROXY_ADMIN_PORT": "9998"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sk-live-supersecret" not in out and "client-secret-1" not in out
    assert "backends.openai.1.api_key = ***" in out
    assert "port = 9999    # flag --port" in out
    assert "admin.port = 9998    # env FASTPROXY_ADMIN_PORT" in out
    assert f"# file {path}" in out


def test_version_and_help() -> None:
    from fastproxy import __version__

    assert _cli("--version").stdout.strip() == f"fastproxy {__version__}"
    helped = _cli("run", "--help")
    assert helped.returncode == 0
    for flag in (
        "--enable-activity-tracking",
        "--wire-capture-enabled",
        "--disable-usage-tracking",
        "--random-model-replacement-from-to",
        "--drain-timeout",
        "--admin-port",
    ):
        assert flag in helped.stdout


def test_workers_auto_is_the_usable_cores() -> None:
    import os

    cfg = load_config(env={"FASTPROXY_WORKERS": "auto"}, use_files=False).config
    assert cfg.workers == len(os.sched_getaffinity(0))
    assert load_config(env={"FASTPROXY_WORKERS": "2"}, use_files=False).config.workers == 2
    with pytest.raises(ConfigError, match="workers"):
        load_config(env={"FASTPROXY_WORKERS": "0"}, use_files=False)


def test_redaction_masks_credentials() -> None:
    from fastproxy.logs import redact

    line = redact("auth Bearer sk-live-abcdefghijkl and x-api-key: sk-ant-zyxwvutsrq12 ok")
    assert "abcdefghijkl" not in line and "zyxwvutsrq12" not in line
    assert line.endswith(" ok")
