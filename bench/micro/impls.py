"""The two builds of ``fastproxy._speedups`` a micro-benchmark can be run on.

Imported directly (not through ``fastproxy._speedups``) so that both are measured in one
run whatever FASTPROXY_NO_EXTENSIONS says; the compiled one is skipped when not built.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from fastproxy._speedups import _pure

core: ModuleType | None
try:
    core = importlib.import_module("fastproxy._speedups._core")
except ImportError:
    core = None

IMPLS = [
    pytest.param(
        "cython", id="cython", marks=pytest.mark.skipif(core is None, reason="_core not built")
    ),
    pytest.param("python", id="python"),
]


def impl_module(name: str) -> ModuleType:
    """The build a parameter of ``IMPLS`` names."""
    if name == "python":
        return _pure
    assert core is not None
    return core
