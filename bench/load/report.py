"""Turn rounds into figures: medians per target, ratios, target verdicts, JSON + markdown.

Every figure in the tables is the median over rounds of that figure per round (the
median of the per-round p99, not a p99 over pooled rounds), so one noisy round moves
nothing; every ratio or difference between two targets is the median over rounds of
that round's ratio or difference, since a round measures all targets back to back.
Errors are summed over rounds instead: one error anywhere counts.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .scenarios import Workload

KIB = 1024


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(
    rounds: list[dict[str, Any]], *, idle_rss_kib: int, hwm_kib: int | None, workload: Workload
) -> dict[str, Any]:
    """Medians over rounds of every numeric figure (nested percentile dicts included)."""
    out: dict[str, Any] = {"rounds": rounds, "idle_rss_kib": idle_rss_kib, "hwm_kib": hwm_kib}
    if not rounds:
        return out
    keys = {k for r in rounds for k, v in r.items() if isinstance(v, (int, float))}
    for k in sorted(keys):
        out[k] = _median([r[k] for r in rounds if k in r])
    for k in ("lat_us", "ttft_us", "gap_us", "read_gap_us", "thread_cpu_s_per_1k_req"):
        points = {p for r in rounds for p in r.get(k, {})}
        if points:
            out[k] = {
                p: _median([r[k][p] for r in rounds if p in r.get(k, {})]) for p in sorted(points)
            }
    errors: dict[str, int] = {}
    for r in rounds:
        for e, n in r["errors"].items():
            errors[e] = errors.get(e, 0) + n
    out["errors"] = errors
    out["generator"] = rounds[0]["generator"]
    out["noisy_rounds"] = sum(1 for r in rounds if r.get("noisy"))
    if "rss_during_kib" in out and workload.connections:
        out["rss_per_stream_kib"] = (out["rss_during_kib"] - idle_rss_kib) / workload.connections
    return out


def throughput(t: dict[str, Any]) -> float | None:
    return t.get("events_per_s") or t.get("rps")


def _get(t: dict[str, Any] | None, key: str, point: str | None = None) -> float | None:
    if t is None:
        return None
    v = t.get(key)
    if point is not None:
        v = v.get(point) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _paired(
    t: dict[str, Any],
    other: dict[str, Any],
    figure: Callable[[dict[str, Any]], float | None],
    combine: Callable[[float | None, float | None], float | None],
) -> float | None:
    """The median over rounds of ``combine(figure(t's round r), figure(other's round r))``.

    Round r visits every target back to back, so the two figures of a pair saw the same
    background load; a ratio of two medians would pair a quiet round of one target with a
    busy round of the other. Falls back to combining the medians when the rounds do not
    pair up (different counts).
    """
    mine, theirs = t.get("rounds") or [], other.get("rounds") or []
    if len(mine) != len(theirs) or not mine:
        return combine(figure(t), figure(other))
    values = [combine(figure(a), figure(b)) for a, b in zip(mine, theirs, strict=True)]
    return _median([v for v in values if v is not None])


def _cpu_per_req(t: dict[str, Any]) -> float | None:
    return _get(t, "cpu_s_per_1k_req")


def _paired_range(
    t: dict[str, Any],
    other: dict[str, Any],
    figure: Callable[[dict[str, Any]], float | None],
    combine: Callable[[float | None, float | None], float | None],
) -> list[float] | None:
    """[min, max] over rounds of the per-round pairs ``_paired`` takes the median of."""
    mine, theirs = t.get("rounds") or [], other.get("rounds") or []
    if len(mine) != len(theirs) or len(mine) < 2:
        return None
    values = [combine(figure(a), figure(b)) for a, b in zip(mine, theirs, strict=True)]
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def derive(sc: dict[str, Any]) -> dict[str, Any]:
    """Throughput ratios against direct, nginx and (in d) the fastproxy baseline; latency
    added over the baseline (direct, or in d the fastproxy baseline). Each is the median
    over rounds of one round's pair (see ``_paired``)."""
    targets = sc["targets"]
    base_name = "fastproxy" if sc["key"].startswith("d-") else "direct"
    base = targets.get(base_name)
    nginx = targets.get("nginx")
    out: dict[str, Any] = {"baseline": base_name}
    for name, t in targets.items():
        if name == "direct" or not t.get("rounds"):
            continue
        d: dict[str, Any] = {}
        for ref in ("direct", "nginx", "fastproxy"):
            other = targets.get(ref)
            if ref != name and other is not None and other.get("rounds"):
                d[f"throughput_vs_{ref}"] = _paired(t, other, throughput, _ratio)
                d[f"throughput_vs_{ref}_range"] = _paired_range(t, other, throughput, _ratio)
        if name != "nginx" and nginx is not None and nginx.get("rounds"):
            d["cpu_per_req_vs_nginx"] = _paired(t, nginx, _cpu_per_req, _ratio)
            d["cpu_per_req_vs_nginx_range"] = _paired_range(t, nginx, _cpu_per_req, _ratio)
        if name != base_name and base is not None:
            for key, label in (
                ("lat_us", "added_latency_us"),
                ("ttft_us", "added_ttft_us"),
                ("gap_us", "added_gap_us"),
            ):
                if t.get(key) and base.get(key):
                    d[label] = {
                        p: _paired(t, base, lambda r, k=key, p=p: _get(r, k, p), _minus)
                        for p in ("p50", "p90", "p99")
                    }
        out[name] = {k: v for k, v in d.items() if v is not None}
    return out


# --------------------------------------------------------------------------- targets


def verdicts(
    scenarios: dict[str, dict[str, Any]], micro: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Where fastproxy stands against each design target, from whatever was run."""

    def t(key: str, target: str) -> dict[str, Any] | None:
        return scenarios.get(key, {}).get("targets", {}).get(target)

    out: list[dict[str, Any]] = []

    def add(
        name: str, value: float | None, goal: float, higher_better: bool, unit: str, source: str
    ) -> None:
        if value is None:
            out.append({"target": name, "value": None, "met": None, "source": source})
            return
        met = value >= goal if higher_better else value <= goal
        out.append(
            {
                "target": name,
                "value": value,
                "goal": goal,
                "unit": unit,
                "met": met,
                "higher_better": higher_better,
                "source": source,
            }
        )

    def derived(key: str, target: str) -> dict[str, Any]:
        return scenarios.get(key, {}).get("derived", {}).get(target, {})  # type: ignore[no-any-return]

    if t("d-a64", "fastproxy+usage") is not None:
        add(
            "JSON c=64 with usage tracking on, x nginx",
            derived("d-a64", "fastproxy+usage").get("throughput_vs_nginx"),
            0.5,
            True,
            "x",
            "d-a64",
        )
    else:
        add(
            "JSON c=64 (usage tracking not measured: baseline), x nginx",
            derived("a64", "fastproxy").get("throughput_vs_nginx"),
            0.5,
            True,
            "x",
            "a64",
        )
    a1 = derived("a1", "fastproxy").get("added_latency_us")
    add("added latency c=1, median", a1 and a1.get("p50"), 60, False, "µs", "a1")
    add("added latency c=1, p99", a1 and a1.get("p99"), 250, False, "µs", "a1")
    add(
        "SSE events/s per fastproxy process",
        _get(t("b", "fastproxy"), "events_per_s"),
        150_000,
        True,
        "events/s",
        "b",
    )
    gap = derived("bp", "fastproxy").get("added_gap_us")
    add("added inter-event delay p99 (paced)", gap and gap.get("p99"), 1000, False, "µs", "bp")
    add(
        "RSS per open stream (scenario c)",
        _get(t("c", "fastproxy"), "rss_per_stream_kib"),
        40,
        False,
        "KiB",
        "c",
    )
    if micro and micro.get("sse_scan_speedup") is not None:
        add(
            "_speedups compiled vs pure, SSE scan",
            micro["sse_scan_speedup"],
            20,
            True,
            "x",
            "bench/micro",
        )
    return out


# --------------------------------------------------------------------------- markdown


def _fmt(v: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if v is None:
        return "—"
    v = v * scale
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ratio_text(v: float) -> str:
    # A slow peer's ratios are far below 0.01x: two significant digits, not "0.00".
    return f"{v:.2g}" if abs(v) < 0.1 else f"{v:,.2f}"


def _range_text(d: dict[str, Any], key: str) -> str:
    """`` (lo-hi)``: the spread over rounds of a paired ratio, when there are rounds."""
    r = d.get(f"{key}_range")
    return f" ({_ratio_text(r[0])}-{_ratio_text(r[1])})" if r else ""


def scenario_markdown(sc: dict[str, Any]) -> str:
    sse = sc["workload"]["kind"] == "sse"
    lines = [f"### {sc['key']}: {sc['title']}", ""]
    if sc.get("backend"):
        lines += [f"Backend: {sc['backend']}.", ""]
    if not any(t.get("rounds") for t in sc["targets"].values()):
        return "\n".join(lines + [f"- {n}" for n in sc.get("notes", [])]) + "\n"
    head = ["target", "req/s"]
    if sse:
        head += ["events/s", "TTFT p50/p99 µs", "gap p99 µs", "read-gap p50/p99 µs"]
    head += ["latency p50/p90/p99 µs", "CPU s/1k req"]
    if sse:
        head += ["CPU s/1k events"]
    head += ["relay CPU", "peak RSS MiB"]
    if sc["key"] == "c":
        head += ["RSS idle→during MiB", "KiB/stream"]
    head += ["errors", "gen CPU", "backend CPU", "other CPU"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in sc["targets"].items():
        if not t.get("rounds"):
            continue
        lat = t.get("lat_us", {})
        row = [name, _fmt(t.get("rps"))]
        if sse:
            ttft, gap, rg = t.get("ttft_us", {}), t.get("gap_us", {}), t.get("read_gap_us", {})
            row += [
                _fmt(t.get("events_per_s")),
                f"{_fmt(ttft.get('p50'))} / {_fmt(ttft.get('p99'))}",
                _fmt(gap.get("p99")),
                f"{_fmt(rg.get('p50'))} / {_fmt(rg.get('p99'))}",
            ]
        row += [
            f"{_fmt(lat.get('p50'))} / {_fmt(lat.get('p90'))} / {_fmt(lat.get('p99'))}",
            _fmt(t.get("cpu_s_per_1k_req"), 3),
        ]
        if sse:
            row.append(_fmt(t.get("cpu_s_per_1k_events"), 4))
        row += [
            _fmt(t.get("relay_cpu_util"), 0, 100) + ("%" if "relay_cpu_util" in t else ""),
            _fmt(t.get("hwm_kib"), 1, 1 / KIB),
        ]
        if sc["key"] == "c":
            row += [
                f"{_fmt(t.get('idle_rss_kib'), 1, 1 / KIB)} → "
                f"{_fmt(t.get('rss_during_kib'), 1, 1 / KIB)}",
                _fmt(t.get("rss_per_stream_kib"), 1),
            ]
        errs = t.get("errors", {})
        row += [
            str(sum(errs.values())) + (f" ({', '.join(errs)})" if errs else ""),
            _fmt(t.get("gen_cpu_util"), 0, 100) + "%",
            # Result files written before the nginx backend call it mock_cpu_util.
            _fmt(t.get("backend_cpu_util", t.get("mock_cpu_util")), 0, 100) + "%",
            _fmt(t.get("background_cpu"), 0, 100)
            + "%"
            + (f" ({t['noisy_rounds']} noisy)" if t.get("noisy_rounds") else ""),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += cpu_table(sc)
    derived = sc.get("derived", {})
    base = derived.get("baseline", "direct")
    ratio_lines = []
    for name, d in derived.items():
        if name == "baseline":
            continue
        parts = [
            f"{_ratio_text(d[f'throughput_vs_{ref}'])}x {ref}{_range_text(d, f'throughput_vs_{ref}')}"
            for ref in ("direct", "nginx", "fastproxy")
            if d.get(f"throughput_vs_{ref}") is not None
        ]
        if d.get("cpu_per_req_vs_nginx") is not None:
            parts.append(
                f"CPU/req {_ratio_text(d['cpu_per_req_vs_nginx'])}x nginx"
                + _range_text(d, "cpu_per_req_vs_nginx")
            )
        for key, label in (
            ("added_latency_us", "added latency"),
            ("added_ttft_us", "added TTFT"),
            ("added_gap_us", "added gap"),
        ):
            if key in d:
                v = d[key]
                parts.append(f"{label} p50 {_fmt(v.get('p50'))} / p99 {_fmt(v.get('p99'))} µs")
        if parts:
            ratio_lines.append(f"- **{name}**: " + "; ".join(parts))
    if ratio_lines:
        lines += [
            "",
            f"Throughput ratios (median of per-round ratios, min-max over rounds); "
            f"latency added over {base}:",
            "",
            *ratio_lines,
        ]
    if sc.get("notes"):
        lines += ["", *[f"- note: {n}" for n in sc["notes"]]]
    return "\n".join(lines) + "\n"


THREAD_COLUMNS = ("loop", "other threads", "busiest other thread", "child processes")


def cpu_table(sc: dict[str, Any]) -> list[str]:
    """CPU µs per request (ms per 1,000) of each process of the chain, the relay split by thread.

    ``loop`` is the relay's main thread (fastproxy's event loop; nginx's master), ``other
    threads`` the rest of that process (fastproxy's executor threads), ``child
    processes`` nginx's worker or fastproxy's usage recorder (pinned to the backend's
    core). Medians over rounds of each round's figure."""
    rows = []
    for name, t in sc["targets"].items():
        if not t.get("rounds") or t.get("backend_cpu_s_per_1k_req") is None:
            continue
        split = t.get("thread_cpu_s_per_1k_req", {})
        cells = [
            name,
            _fmt(t.get("cpu_s_per_1k_req"), 1, 1000),
            *[_fmt(split.get(k), 1, 1000) for k in THREAD_COLUMNS],
            _fmt(t.get("backend_cpu_s_per_1k_req"), 1, 1000),
            _fmt(t.get("gen_cpu_s_per_1k_req"), 1, 1000),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = [
        "CPU µs per request",
        "relay",
        "relay: loop thread",
        "relay: other threads",
        "relay: busiest other",
        "relay: child procs",
        "backend",
        "load gen",
    ]
    return ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]


def markdown(data: dict[str, Any]) -> str:
    m = data["meta"]
    mach = m["machine"]
    lines = [
        f"# fastproxy load benchmark, {m['started']}",
        "",
        f"- command: `{m['command']}`",
        f"- machine: {mach['nproc']} CPUs ({mach['cpu_model']}), kernel {mach['kernel']}, "
        f"Python {mach['python']}",
        f"- load average before / after: {m['loadavg_before']} / {m.get('loadavg_after', '?')}",
        f"- pinning: {m['pinning']}",
        f"- backend: {m.get('backend', 'mock')} (scenarios that pace events, bp and c, "
        f"always use the mock LLM; each scenario names its backend)",
        f"- fastproxy: commit {m['git']['commit']}{' (dirty tree)' if m['git']['dirty'] else ''}"
        f", _speedups {m['speedups']}",
        f"- tools: {m['tools']['wrk']}; {m['tools']['nginx']}",
        f"- rounds: {m['rounds']} x {m['duration_s']:g} s per target, interleaved; figures "
        f"are medians over rounds, ratios the medians of per-round ratios "
        f"(scenario c: one round)",
        f"- background load: a round during which other processes used more than "
        f"{m.get('max_background', 0.35):g} cores is measured again (the quietest attempt "
        f'is kept; "noisy" marks rounds still over the limit); '
        f"{m.get('retry_spent_s', 0):.0f} s spent re-measuring",
        "",
    ]
    if m.get("notes"):
        lines += ["Notes:", "", *[f"- {n}" for n in m["notes"]], ""]
    if data.get("verdicts"):
        lines += ["## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
        for v in data["verdicts"]:
            if v["value"] is None:
                lines.append(f"| {v['target']} | not measured | | |")
                continue
            digits = 2 if v["unit"] == "x" else 0
            lines.append(
                f"| {v['target']} | {_fmt(v['value'], digits)} {v['unit']} | "
                f"{'≥' if v['higher_better'] else '≤'} "
                f"{_fmt(v['goal'], digits)} {v['unit']} | "
                f"{'yes' if v['met'] else 'NO'} |"
            )
        lines.append("")
    lines += ["## Scenarios", ""]
    for sc in data["scenarios"]:
        lines.append(scenario_markdown(sc))
    if data.get("micro"):
        lines += [
            "## Micro (bench/micro)",
            "",
            "```",
            json.dumps(data["micro"], indent=1),
            "```",
            "",
        ]
    return "\n".join(lines)


def write(data: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(data["meta"]["started_ts"]))
    jpath, mpath = out_dir / f"{stamp}.json", out_dir / f"{stamp}.md"
    jpath.write_text(json.dumps(data, indent=1, default=str))
    mpath.write_text(markdown(data))
    return jpath, mpath
