"""The PostgreSQL usage store's settings: refused without a DSN, the DSN never printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy.config.loader import ConfigError, load_config

DSN = "postgresql://gw:hunter2-pg-pass@db.internal:5432/usage"


def test_postgresql_without_a_dsn_is_refused_with_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"usage_tracking.store": "postgresql"}, env={}, use_files=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("usage_tracking.store: got 'postgresql' without a DSN")


def test_dsn_env_must_be_set() -> None:
    cli = {"usage_tracking.store": "postgresql", "usage_tracking.postgresql_dsn_env": "PG_DSN"}
    with pytest.raises(ConfigError, match="'PG_DSN' is not set"):
        load_config(cli, env={}, use_files=False)
    loaded = load_config(cli, env={"PG_DSN": DSN}, use_files=False)
    assert loaded.config.usage_tracking.store == "postgresql"


def test_env_vars_select_the_store_and_its_dsn() -> None:
    env = {"FASTPROXY_USAGE_STORE": "postgresql", "FASTPROXY_USAGE_DSN": DSN}
    usage = load_config(env=env, use_files=False).config.usage_tracking
    assert (usage.store, usage.postgresql_dsn) == ("postgresql", DSN)
    assert load_config(env={}, use_files=False).config.usage_tracking.store == "sqlite"


def test_check_config_masks_the_dsn(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"usage_tracking:\n  store: postgresql\n  postgresql_dsn: {DSN}\n")
    out = subprocess.run(
        [sys.executable, "-m", "fastproxy", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "hunter2-pg-pass" not in out.stdout + out.stderr
    assert "postgresql_dsn" in out.stdout
    flag = subprocess.run(
        [sys.executable, "-m", "fastproxy", "check-config", "--usage-store", "postgresql"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert flag.returncode != 0 and "without a DSN" in flag.stderr


def test_without_the_driver_the_config_is_refused(tmp_path: Path) -> None:
    """A machine without the optional extra: refused at load with the pip line, not a
    recorder failing at every start. (The driver is hidden from this one interpreter.)"""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"usage_tracking:\n  store: postgresql\n  postgresql_dsn: {DSN}\n")
    hide = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # what an interpreter without the package sees\n"
        "from fastproxy.cli import main\n"
        f"sys.exit(main(['check-config', '--config', {str(cfg)!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", hide], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode != 0
    assert "pip install 'fastproxy[postgresql]'" in out.stderr, out.stderr
    assert "hunter2-pg-pass" not in out.stdout + out.stderr
