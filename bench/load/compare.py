"""Compare the ratios of two or more result files: is a run reproducible?

    python -m bench.load.compare bench/results/A.json bench/results/B.json

Prints, per scenario and target, the throughput ratios against nginx and direct, the CPU
per request against nginx and the added latency, one column per run, and the spread
(largest minus smallest, as a percentage of their mean) of each ratio. Ratios are derived
again from each file's rounds by the current method (``report.derive``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import derive

ROWS = (
    ("throughput_vs_nginx", "x nginx", None),
    ("throughput_vs_direct", "x direct", None),
    ("throughput_vs_fastproxy", "x fastproxy", None),
    ("cpu_per_req_vs_nginx", "CPU/req x nginx", None),
    ("added_latency_us", "added latency p50 µs", "p50"),
    ("added_latency_us", "added latency p99 µs", "p99"),
    ("added_ttft_us", "added TTFT p50 µs", "p50"),
    ("added_gap_us", "added gap p99 µs", "p99"),
)


def _value(derived: dict[str, Any], key: str, point: str | None) -> float | None:
    v = derived.get(key)
    if point is not None:
        v = v.get(point) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) else None


def rows(runs: list[dict[str, Any]]) -> list[tuple[str, str, str, list[float | None]]]:
    """(scenario, target, figure, values per run) for every ratio present in any run."""
    out = []
    keys = []
    for run in runs:
        for sc in run["scenarios"]:
            for target in sc.get("derived", {}):
                if target != "baseline" and (sc["key"], target) not in keys:
                    keys.append((sc["key"], target))
    for key, target in keys:
        per_run = []
        for run in runs:
            sc = next((s for s in run["scenarios"] if s["key"] == key), {})
            per_run.append(sc.get("derived", {}).get(target, {}))
        for name, label, point in ROWS:
            values = [_value(d, name, point) for d in per_run]
            if any(v is not None for v in values):
                out.append((key, target, label, values))
    return out


def spread(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    mean = sum(vals) / len(vals)
    return (max(vals) - min(vals)) / abs(mean) * 100 if mean else None


def markdown(paths: list[Path], runs: list[dict[str, Any]]) -> str:
    head = [
        "scenario",
        "target",
        "figure",
        *[f"run {i + 1} ({r['meta']['started'][11:16]})" for i, r in enumerate(runs)],
        "spread",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, target, label, values in rows(runs):
        digits = 0 if "µs" in label else 2
        cells = ["—" if v is None else f"{v:,.{digits}f}" for v in values]
        s = spread(values)
        # A spread of added latency (a difference of two noisy figures) is shown in µs.
        if "µs" in label:
            vals = [v for v in values if v is not None]
            sp = f"{max(vals) - min(vals):,.0f} µs" if len(vals) > 1 else "—"
        else:
            sp = "—" if s is None else f"{s:.1f}%"
        lines.append("| " + " | ".join([key, target, label, *cells, sp]) + " |")
    files = ", ".join(p.name for p in paths)
    return f"Runs: {files}\n\n" + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    paths = [Path(a) for a in args]
    runs = [json.loads(p.read_text()) for p in paths]
    for run in runs:
        # Derived again from the stored rounds, so files written before a change of method
        # are compared by the current one.
        for sc in run["scenarios"]:
            sc["derived"] = derive(sc)
    print(markdown(paths, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
