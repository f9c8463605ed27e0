"""fastproxy._speedups picks the compiled core unless told not to (fresh interpreters)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .helpers import pure

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import fastproxy._speedups as s; print(s.IMPLEMENTATION); print(s.SSEScanner.__module__)"


def run_probe(no_extensions: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTPROXY_NO_EXTENSIONS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if no_extensions is not None:
        env["FASTPROXY_NO_EXTENSIONS"] = no_extensions
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_env_forces_pure(speedups_impl: ModuleType) -> None:
    impl, module = run_probe("1")
    assert impl == "python" and module.startswith("fastproxy._speedups._pure")


def test_default_is_what_is_built(speedups_impl: ModuleType) -> None:
    expected = "python" if speedups_impl is pure else "cython"
    if expected == "python":
        # Only the compiled parameter can tell that the default picks the core.
        pytest.skip("the default choice is checked by the cython parameter")
    assert run_probe(None) == ["cython", "fastproxy._speedups._core"]
    assert run_probe("0") == ["cython", "fastproxy._speedups._core"]


def test_public_names(speedups_impl: ModuleType) -> None:
    import fastproxy._speedups as s

    for name in s.__all__:
        assert hasattr(s, name), name
        if name != "IMPLEMENTATION":
            assert hasattr(speedups_impl, name), name
    assert s.IMPLEMENTATION in {"cython", "python"}
