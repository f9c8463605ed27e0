"""The soak benchmark, tiny: 200 streams at c=20 with all four kinds, every check held.

It runs ``python -m bench.soak`` as the operator would (its own mock and gateway
processes, 127.0.0.1 only) and reads the results file it writes. The backend idle
timeout is 1 s here (slow readers stall 1.5 s) to keep the run short; what a slow
reader tests is the same as in the full soak: a stall longer than that timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The soak's own deadline ends it (and its gateway and mock) well before the subprocess
# limit, which only guards against a hang of the benchmark itself.
SOAK_DEADLINE_S = 45
RUN_LIMIT_S = 58


@pytest.mark.timeout(RUN_LIMIT_S + 7)
def test_soak_tiny_run_passes_every_check(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = [
        sys.executable,
        "-m",
        "bench.soak",
        "--streams",
        "200",
        "--concurrency",
        "20",
        "--warmup",
        "40",
        "--seed",
        "3",
        "--backend-idle-timeout",
        "1",
        "--settle-timeout",
        "10",
        "--stream-timeout",
        "10",
        "--deadline",
        str(SOAK_DEADLINE_S),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    # Every kind was drawn, so every check saw all four.
    assert all(
        sum(doc["client_results"][k].values()) > 0 for k in ("normal", "abort", "reset", "slow")
    ), doc["client_results"]
    failed = [f"{c['name']}: {c['detail']}" for c in doc["checks"] if not c["ok"]]
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert doc["records"]["rows"] == 241
    assert len(doc["samples"]) >= 5
