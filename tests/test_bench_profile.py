"""bench.profile's report: own time per request by function and by module, from a real
cProfile dump (the load run itself needs wrk and lives in bench/, not in the suite)."""

from __future__ import annotations

import cProfile
from pathlib import Path

from bench.profile.__main__ import report


def _busy(n: int) -> int:
    return sum(i * i for i in range(n))


def test_report_divides_own_time_by_requests(tmp_path: Path) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(40):
        _busy(20_000)
    prof.disable()
    out = tmp_path / "p.prof"
    prof.dump_stats(out)
    text = report(out, requests=40, top=10)
    first = text.splitlines()[0]
    assert first.startswith("requests: 40; profiled loop time:")
    # The busy function is called once per "request" and shows under this test module.
    row = next(line for line in text.splitlines() if "(_busy)" in line)
    calls = float(row.split("|")[2])
    assert calls == 1.0
    assert "| `tests/test_bench_profile.py` |" in text
