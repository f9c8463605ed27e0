"""The wire_capture keys load from every layer (they used to be refused as not built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastproxy.config import load_config
from fastproxy.config.loader import ConfigError
from tests.config.test_config import _cli


def test_every_layer_sets_the_capture_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "wire_capture:\n  max_file_bytes: 1048576\n  max_total_bytes: 4194304\n"
        "  redact_headers: [x-secret]\n"
    )
    env = {"WIRE_CAPTURE_ENABLED": "true", "WIRE_CAPTURE_OUTPUT_DIR": "/tmp/from-env"}
    c = load_config(config_file=str(path), env=env).config.wire_capture
    assert (c.enabled, c.output_dir, c.max_file_bytes, c.max_total_bytes, c.redact_headers) == (
        True,
        "/tmp/from-env",
        1048576,
        4194304,
        ("x-secret",),
    )
    cli = {"wire_capture.output_dir": "/tmp/from-flag"}
    assert load_config(cli, env=env, use_files=False).config.wire_capture.output_dir == (
        "/tmp/from-flag"
    )


def test_the_total_must_hold_one_file() -> None:
    env = {"WIRE_CAPTURE_ENABLED": "true"}
    cli = {"wire_capture.max_file_bytes": 2 * 1024 * 1024, "wire_capture.max_total_bytes": 1048576}
    with pytest.raises(ConfigError, match=r"wire_capture\.max_total_bytes: got 1048576, below"):
        load_config(cli, env=env, use_files=False)


def test_the_flags_are_accepted(tmp_path: Path) -> None:
    proc = _cli("check-config", "--wire-capture-enabled", "--wire-capture-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
