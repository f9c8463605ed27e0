"""The load benchmark's generated gateway config is one the gateway's loader accepts.

``bench.load`` measures each monitoring variant with a config made by
``processes.fastproxy_config``; a key the loader refuses would make every fastproxy
target fail to start (or be skipped as "rejected"). Wire capture is not built yet, so its
section is refused whatever it says: it must appear only in the config of the variant
that asks for capture, and that variant is then reported as rejected, not run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.load.processes import fastproxy_config
from fastproxy.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load(tree: dict[str, object], tmp_path: Path) -> object:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_config(None, config_file=str(path), env={}, use_files=False).config


@pytest.mark.parametrize(
    "flags", [{}, {"usage": True}, {"activity": True}, {"usage": True, "activity": True}]
)
def test_every_built_variant_loads(tmp_path: Path, flags: dict[str, bool]) -> None:
    tree = fastproxy_config(9, tmp_path, **flags)
    assert "wire_capture" not in tree
    config = _load(tree, tmp_path)
    assert config.usage_tracking.enabled is bool(flags.get("usage"))  # type: ignore[attr-defined]
    assert config.enable_activity_tracking is bool(flags.get("activity"))  # type: ignore[attr-defined]


def test_the_capture_variant_is_refused_as_not_built(tmp_path: Path) -> None:
    tree = fastproxy_config(9, tmp_path, capture=True)
    assert tree["wire_capture"]["enabled"] is True
    with pytest.raises(ConfigError, match="not built yet"):
        _load(tree, tmp_path)


def test_the_load_benchmark_cli_starts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()
