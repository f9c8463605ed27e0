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


def test_perf_report_splits_the_measured_cpu_by_perf_shares() -> None:
    """--perf: real CPU per request (from /proc) divided by perf's shares per binary."""
    from bench.profile.__main__ import perf_report, perf_shares

    sample = (
        "# Samples: 12K of event 'cpu-clock'\n"
        "#\n"
        "    50.00%  libpython3.11.so.1.0\n"
        "    40.00%  [kernel.kallsyms]\n"
        "    10.00%  parser.cpython-311-x86_64-linux-gnu.so\n"
    )
    rows = perf_shares(sample)
    assert rows == [
        ("libpython3.11.so.1.0", 50.0),
        ("[kernel.kallsyms]", 40.0),
        ("parser.cpython-311-x86_64-linux-gnu.so", 10.0),
    ]
    text = perf_report(rows, [("[k] _raw_spin_unlock_irqrestore", 20.0)], 1000, 0.05, 10)
    assert "= 50.0 µs per request" in text.splitlines()[0]
    assert "| `kernel (syscalls, TCP, waking peers)` | 20.00 | 40.0% |" in text
    assert "| `[k] _raw_spin_unlock_irqrestore` | 10.00 | 20.0% |" in text
