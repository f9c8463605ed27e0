"""bench/micro runs, with and without timing, from a tree that has no tests/ directory.

The micro-benchmarks are only run by hand, so nothing else notices when one breaks: two
of them failed under ``--benchmark-disable`` (they read timing statistics that mode does
not collect), and the suite read its corpus from tests/. Here it runs in a copy of the
checkout holding bench/micro, pyproject.toml and the fastproxy package only, once with
``--benchmark-disable`` and once timed with the least rounds pytest-benchmark allows, so
both code paths run in a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("checkout-without-tests")
    shutil.copytree(
        ROOT / "bench" / "micro",
        tree / "bench" / "micro",
        ignore=shutil.ignore_patterns("__pycache__", ".benchmarks"),
    )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    # The package itself (with its compiled core, if built), as in the checkout.
    (tree / "fastproxy").symlink_to(ROOT / "fastproxy", target_is_directory=True)
    assert not (tree / "tests").exists()
    return tree


def run_micro(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "bench/micro", "-q", "-p", "no:cacheprovider", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def passed(out: subprocess.CompletedProcess[str]) -> int:
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    m = re.search(r"(\d+) passed", out.stdout)
    assert m, out.stdout[-2000:]
    assert not re.search(r"\d+ (failed|error)", out.stdout), out.stdout[-2000:]
    return int(m.group(1))


def test_micro_suite_passes_with_benchmarks_disabled(bench_tree: Path) -> None:
    assert passed(run_micro(bench_tree, "--benchmark-disable")) >= 30


def test_micro_suite_passes_timed(bench_tree: Path, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    out = run_micro(
        bench_tree,
        "--benchmark-min-rounds=1",
        "--benchmark-max-time=0.000001",
        "--benchmark-warmup=off",
        f"--benchmark-json={report}",
    )
    assert passed(out) >= 30
    # Timed, the throughput figure of estimate-tokens is still computed.
    benches = json.loads(report.read_text())["benchmarks"]
    estimate = [b for b in benches if b["group"] == "estimate-tokens"]
    assert estimate and all(b["extra_info"]["MB_per_s"] > 0 for b in estimate)
