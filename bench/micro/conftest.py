"""Make ``pytest bench/micro --benchmark-only -o testpaths=bench`` work from a checkout.

pyproject's pytest config is written for tests/ (test_*.py files, testpaths=tests). The
benchmarks live in bench_*.py files, collected by the hook below, and import fastproxy
from the checkout even when it is not installed. Their data is under bench/micro/corpus,
so tests/ need not be there. ``pytest bench/micro --benchmark-disable -q`` runs each
benchmark once, untimed, as a quick check that they all still work
(tests/test_bench_micro.py does that, and a timed run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        # A file named on the command line is collected by pytest itself already.
        named = {
            (Path(parent.config.invocation_params.dir) / a.split("::")[0]).resolve()
            for a in parent.config.args
        }
        if file_path.resolve() in named:
            return None
        return pytest.Module.from_parent(parent, path=file_path)
    return None
