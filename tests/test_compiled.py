"""The request path's compiled build: which copy of a module runs.

setup.py compiles the request path's own ``.py`` modules with Cython and records the
SHA-256 of each source in ``fastproxy/_compiled.json``; ``fastproxy._compiled`` lets a
compiled copy run only while its source is unchanged and never with
FASTPROXY_NO_EXTENSIONS=1. These tests check both rules on a scratch module, and on the
installed gateway that the compiled copies really are the ones running.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy import _compiled
from fastproxy._compiled import SourceGuard

ROOT = Path(_compiled.__file__).resolve().parent
PLANE = ("fastproxy.dataplane.cycle", "fastproxy.dataplane.protocol", "fastproxy.httpclient.pool")


def _probe(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "probe.py"
    src.write_text("VALUE = 1\n")
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_an_unchanged_source_is_left_to_its_compiled_copy(tmp_path: Path) -> None:
    _, digest = _probe(tmp_path)
    guard = SourceGuard(tmp_path, {"fastproxy.probe": digest}, pure=False)
    assert guard.find_spec("fastproxy.probe", [str(tmp_path)]) is None
    assert guard.compiled == ["fastproxy.probe"] and guard.stale == []


def test_a_source_edited_after_the_build_runs_as_source(tmp_path: Path) -> None:
    """The bad input: a module whose .py no longer has the hash it was compiled from."""
    src, digest = _probe(tmp_path)
    src.write_text("VALUE = 2\n")
    guard = SourceGuard(tmp_path, {"fastproxy.probe": digest}, pure=False)
    spec = guard.find_spec("fastproxy.probe", [str(tmp_path)])
    assert spec is not None and spec.origin == str(src)
    assert guard.stale == ["fastproxy.probe"]


def test_no_extensions_runs_every_listed_module_as_source(tmp_path: Path) -> None:
    src, digest = _probe(tmp_path)
    guard = SourceGuard(tmp_path, {"fastproxy.probe": digest}, pure=True)
    spec = guard.find_spec("fastproxy.probe", [str(tmp_path)])
    assert spec is not None and spec.origin == str(src)
    # A build told not to compile (an empty hash) runs the source without a warning.
    quiet = SourceGuard(tmp_path, {"fastproxy.probe": ""}, pure=False)
    assert quiet.find_spec("fastproxy.probe", [str(tmp_path)]) is not None
    assert quiet.stale == []
    # Modules the manifest does not list are none of the guard's business.
    assert guard.find_spec("fastproxy.other", [str(tmp_path)]) is None


def _loaded_from(env: dict[str, str]) -> dict[str, str]:
    code = (
        "import fastproxy.gateway, sys\n"
        f"for name in {PLANE!r}:\n"
        "    print(name, sys.modules[name].__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


@pytest.mark.skipif(
    not (ROOT / _compiled.MANIFEST).exists(), reason="pure-Python build: nothing compiled"
)
def test_the_installed_gateway_runs_its_compiled_request_path() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASTPROXY_NO_EXTENSIONS"}
    compiled = _loaded_from(env)
    pure = _loaded_from({**env, "FASTPROXY_NO_EXTENSIONS": "1"})
    for name in PLANE:
        assert not compiled[name].endswith(".py"), f"{name} runs from {compiled[name]}"
        assert pure[name].endswith(".py"), f"{name} runs from {pure[name]} with no extensions"
