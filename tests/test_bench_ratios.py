"""The load benchmark's ratios pair the targets round by round (bench/load/report.py).

A round measures every target back to back, so a slow stretch of the machine hits both
figures of a pair. The published ratio must be the median of those per-round ratios,
not the ratio of two medians taken from different rounds.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.load.report import derive
from bench.load.scenarios import JSON_BODY, Workload


def _scenario(
    rps: dict[str, list[float]],
    cpu: dict[str, list[float]] | None = None,
    p50: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    targets = {}
    for name, values in rps.items():
        rounds = []
        for i, v in enumerate(values):
            r: dict[str, Any] = {"rps": v}
            if cpu and name in cpu:
                r["cpu_s_per_1k_req"] = cpu[name][i]
            if p50 and name in p50:
                r["lat_us"] = {"p50": p50[name][i], "p90": p50[name][i], "p99": p50[name][i]}
            rounds.append(r)
        t: dict[str, Any] = {"rounds": rounds, "rps": sorted(values)[len(values) // 2]}
        if p50 and name in p50:
            m = sorted(p50[name])[len(values) // 2]
            t["lat_us"] = {"p50": m, "p90": m, "p99": m}
        targets[name] = t
    return {"key": "a64", "targets": targets, "workload": Workload("json", 64, JSON_BODY).__dict__}


def test_a_ratio_is_the_median_of_per_round_ratios() -> None:
    # The machine's speed swings from round to round (nginx 20k, 12k, 26k req/s); within
    # a round fastproxy makes 0.55x, 0.50x and 0.45x of nginx. Paired, the median is 0.50x;
    # the ratio of the two medians (11,000 / 20,000) would pair different rounds: 0.55x.
    nginx = [20_000, 12_000, 26_000]
    fastproxy = [11_000, 6_000, 11_700]
    d = derive(_scenario({"direct": [30_000] * 3, "nginx": nginx, "fastproxy": fastproxy}))
    assert d["fastproxy"]["throughput_vs_nginx"] == pytest.approx(0.50)
    assert d["nginx"]["throughput_vs_fastproxy"] == pytest.approx(2.0)
    assert d["fastproxy"]["throughput_vs_direct"] == pytest.approx(11_000 / 30_000)


def test_cpu_and_added_latency_pair_by_round_too() -> None:
    sc = _scenario(
        {"direct": [1.0, 1.0, 1.0], "nginx": [1.0, 1.0, 1.0], "fastproxy": [1.0, 1.0, 1.0]},
        cpu={"nginx": [0.02, 0.04, 0.03], "fastproxy": [0.06, 0.16, 0.12]},
        p50={"direct": [100, 300, 200], "fastproxy": [150, 330, 290]},
    )
    d = derive(sc)["fastproxy"]
    assert d["cpu_per_req_vs_nginx"] == pytest.approx(4.0)  # per round 3, 4, 4
    assert d["added_latency_us"]["p50"] == pytest.approx(50)  # per round 50, 30, 90


def test_rounds_that_do_not_pair_fall_back_to_the_medians() -> None:
    # A target with fewer rounds (one failed to start a round) has no partner per round.
    d = derive(
        _scenario(
            {
                "direct": [30_000, 30_000, 30_000],
                "nginx": [20_000, 22_000, 24_000],
                "fastproxy": [10_000, 12_000],
            }
        )
    )
    assert d["fastproxy"]["throughput_vs_nginx"] == pytest.approx(
        sorted([10_000, 12_000])[1] / 22_000
    )
