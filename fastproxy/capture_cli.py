"""``fastproxy capture inspect|replay``: read wire captures back (docs/capture.md).

``inspect`` summarises, filters, lists and analyses capture files and finds problems in
them (``--detect-issues``); ``scripts/inspect_cbor_capture.py`` is the same command.
``replay`` re-sends the captured client requests to a gateway and compares the answers
with the captured ones.

Exit codes: 0 done (inspect --detect-issues: no issue; replay: every answer matched);
1 issues found, or answers that differ, or a target that cannot be reached; 2 bad
arguments, or a file that is not a readable capture.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import sys
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .storage.capture_reader import (
    DIRECTIONS,
    TERMINAL,
    TERMINAL_NAME,
    Capture,
    CaptureError,
    CaptureEvent,
    Exchange,
    api_of,
    dechunk,
    group_exchanges,
    read_capture,
    split_message,
)

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
DEFAULT_GAP_S = 2.0
_DIR_ALIASES = {
    **{name: i for i, name in enumerate(DIRECTIONS)},
    "client-request": 0,
    "client-response": 1,
    "backend-request": 2,
    "backend-response": 3,
}


class UsageError(Exception):
    pass


# --- arguments --------------------------------------------------------------------------


def _direction(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip().lower()
        if part.isdigit() and int(part) in (0, 1, 2, 3):
            out.add(int(part))
        elif part in _DIR_ALIASES:
            out.add(_DIR_ALIASES[part])
        else:
            raise argparse.ArgumentTypeError(
                f"unknown direction {part!r} (0-3 or {', '.join(DIRECTIONS)})"
            )
    return out


def _when(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r} (ISO-8601 or unix seconds)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # a naive time is UTC, as the capture's stamps are
    return dt.timestamp()


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files or directories")
    f = p.add_argument_group("filters (an exchange is analysed whole if any event is selected)")
    f.add_argument(
        "--direction",
        type=_direction,
        metavar="DIR",
        help="0-3 or client-in, client-out, backend-out, backend-in (comma-separated)",
    )
    f.add_argument("--backend", metavar="NAME", help="exchanges that tried this backend")
    f.add_argument("--session-id", metavar="SID", help="exchanges of this x-session-id")
    f.add_argument("--search", metavar="TEXT", help="events whose data contains TEXT")
    f.add_argument("--start-time", type=_when, metavar="TIME", help="ISO-8601 or unix seconds")
    f.add_argument("--end-time", type=_when, metavar="TIME", help="ISO-8601 or unix seconds")
    n = p.add_argument_group("navigation (numbers are positions among the selected events)")
    nav = n.add_mutually_exclusive_group()
    nav.add_argument("--entries", type=_positive, metavar="N", help="list the first N events")
    nav.add_argument("--last", type=_positive, metavar="N", help="list the last N events")
    nav.add_argument("--entry", type=_positive, metavar="N", help="show event N in full")
    a = p.add_argument_group("analyses")
    a.add_argument("--analyze-streaming", action="store_true", help="per stream: timing, end")
    a.add_argument("--timeline", action="store_true", help="per request: its events in order")
    a.add_argument("--detect-issues", action="store_true", help="find problems (exit 1 if any)")
    a.add_argument(
        "--gap-seconds",
        type=_seconds,
        default=DEFAULT_GAP_S,
        metavar="S",
        help=f"a stream gap longer than this is an issue (default {DEFAULT_GAP_S})",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "capture",
        help="read wire captures: inspect, replay",
        description="Read wire-capture files back (docs/capture.md).",
    )
    verbs = p.add_subparsers(dest="capture_verb", metavar="{inspect,replay}", required=True)
    ins = verbs.add_parser(
        "inspect",
        help="summary, filters, streaming analysis, timelines, --detect-issues",
        description="Summarise and analyse capture files. Same as scripts/inspect_cbor_capture.py.",
    )
    add_inspect_arguments(ins)
    rep = verbs.add_parser(
        "replay",
        help="re-send captured client requests and compare the answers",
        description="Re-send every captured client request to --target, in order, and "
        "compare each answer with the captured one (status and body, ignoring ids and "
        "timestamps).",
    )
    rep.add_argument("files", nargs="+", metavar="FILE", help="capture files or directories")
    rep.add_argument("--target", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    rep.add_argument(
        "--speed",
        type=_seconds,
        default=1.0,
        metavar="X",
        help="pacing: 1 as captured, 2 twice as fast, 0 no pauses (default 1)",
    )
    rep.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add this header to every request (captures are redacted: give a real key)",
    )
    rep.add_argument("--timeout", type=_seconds, default=60.0, metavar="S", help="per request")
    rep.add_argument("--json", action="store_true", help="one JSON document on stdout")


def run(ns: argparse.Namespace) -> int:
    try:
        if ns.capture_verb == "replay":
            return run_replay(ns)
        return run_inspect(ns)
    except (CaptureError, UsageError) as exc:
        print(f"fastproxy capture: {exc}", file=sys.stderr)
        return EXIT_USAGE


def inspect_main(argv: list[str] | None = None, prog: str = "inspect_cbor_capture.py") -> int:
    """The script's entry point: the same arguments as ``fastproxy capture inspect``."""
    p = argparse.ArgumentParser(
        prog=prog, description="Summarise and analyse wire-capture files (docs/capture.md)."
    )
    add_inspect_arguments(p)
    ns = p.parse_args(argv)
    ns.capture_verb = "inspect"
    try:
        return run(ns)
    except BrokenPipeError:
        sys.stderr.close()
        return EXIT_OK


# --- selection --------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@dataclass(slots=True)
class Selection:
    capture: Capture
    events: list[CaptureEvent]
    exchanges: list[Exchange]


def select(capture: Capture, ns: argparse.Namespace) -> Selection:
    """Direction, search and time select events; session selects exchanges; backend
    selects that backend's legs and the client legs of exchanges that tried it."""
    all_exchanges = group_exchanges(capture.events)
    by_key = {ex.key: ex for ex in all_exchanges}
    leg_backend: dict[int, str | list[str] | None] = {}
    for ex in all_exchanges:
        for a in ex.attempts:
            for leg in (a.request, a.head_event, *a.body):
                if leg is not None:
                    leg_backend[id(leg)] = a.backend
    needle = ns.search.encode() if ns.search else None
    chosen: list[CaptureEvent] = []
    keys: dict[tuple[str, Any], None] = {}
    for e in capture.events:
        ex = by_key[(e.writer, e.rid)]
        if ns.direction is not None and e.dir not in ns.direction:
            continue
        if ns.backend is not None:
            # A backend leg must be that backend's; the client's legs go with the exchange.
            owner = leg_backend.get(id(e), ex.backends)
            if ns.backend not in (owner if isinstance(owner, list) else [owner]):
                continue
        if ns.session_id is not None and ex.session != ns.session_id:
            continue
        if needle is not None and needle not in e.data:
            continue
        if ns.start_time is not None and e.ts < ns.start_time:
            continue
        if ns.end_time is not None and e.ts > ns.end_time:
            continue
        chosen.append(e)
        keys[ex.key] = None
    return Selection(capture, chosen, [by_key[k] for k in keys])


# --- analyses ---------------------------------------------------------------------------


def summary(sel: Selection) -> dict[str, Any]:
    events = sel.events
    by_dir = {name: 0 for name in DIRECTIONS}
    bytes_by_dir = {name: 0 for name in DIRECTIONS}
    for e in events:
        by_dir[e.direction] += 1
        bytes_by_dir[e.direction] += len(e.data)
    backends: dict[str, int] = {}
    sessions: dict[str, int] = {}
    streams = 0
    for ex in sel.exchanges:
        for name in ex.backends:
            backends[name] = backends.get(name, 0) + 1
        if ex.session is not None:
            sessions[ex.session] = sessions.get(ex.session, 0) + 1
        streams += ex.stream_start is not None
    first = events[0].ts if events else None
    last = events[-1].ts if events else None
    return {
        "files": [
            {
                "path": f.path,
                "events": len(f.events),
                "created_at": f.header.get("created_at"),
                "session_id": f.header.get("session_id"),
                "metadata": f.header.get("metadata"),
                "damage": f.damage.describe() if f.damage else None,
            }
            for f in sel.capture.files
        ],
        "events": len(events),
        "first": _iso(first) if first is not None else None,
        "last": _iso(last) if last is not None else None,
        "span_s": round(last - first, 3) if first is not None and last is not None else 0.0,
        "events_by_direction": by_dir,
        "bytes_by_direction": bytes_by_dir,
        "bytes": sum(bytes_by_dir.values()),
        "exchanges": len(sel.exchanges),
        "streams": streams,
        "backend_attempts": backends,
        "sessions": sessions,
    }


def _event_doc(n: int, e: CaptureEvent, full: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "n": n,
        "seq": e.seq,
        "ts": e.ts,
        "time": _iso(e.ts),
        "dir": e.dir,
        "direction": e.direction,
        "rid": e.rid,
        "bytes": len(e.data),
        "meta": e.meta,
        "file": e.file,
    }
    if full:
        doc["data"] = _text(e.data)
    else:
        doc["preview"] = _text(e.data[:120])
    return doc


def _stream_gaps(ex: Exchange, threshold: float) -> list[dict[str, Any]]:
    """Pauses longer than ``threshold`` on each backend attempt: from the request to the
    head, and between the reads that followed."""
    out = []
    for a in ex.attempts:
        points: list[tuple[str, float]] = [("request sent", a.request.ts)]
        if a.head_event is not None:
            points.append(("response head", a.head_event.ts))
        points.extend((f"read {i + 1}", e.ts) for i, e in enumerate(a.body))
        for (before, t0), (after, t1) in itertools.pairwise(points):
            if t1 - t0 > threshold:
                out.append(
                    {
                        "backend": a.backend,
                        "gap_s": round(t1 - t0, 3),
                        "between": f"{before} and {after}",
                        "at_s": round(t0 - ex.start, 3),
                    }
                )
    return out


def streaming(sel: Selection, threshold: float) -> list[dict[str, Any]]:
    out = []
    for ex in sel.exchanges:
        stream = next((a for a in reversed(ex.attempts) if a.is_stream), None)
        if stream is None and ex.stream_start is None:
            continue
        _method, path = ex.method_path
        api = api_of(path)
        reads = stream.body if stream else []
        gaps = [b.ts - a.ts for a, b in itertools.pairwise(reads)]
        body = stream.body_bytes if stream else b""
        out.append(
            {
                "rid": ex.rid,
                "path": path,
                "backend": stream.backend if stream else None,
                "events": len(reads),
                "bytes": len(body),
                "first_byte_s": round(reads[0].ts - ex.start, 3) if reads else None,
                "last_byte_s": round(reads[-1].ts - ex.start, 3) if reads else None,
                "max_gap_s": round(max(gaps), 3) if gaps else 0.0,
                "slow_gaps": sum(1 for g in gaps if g > threshold),
                "terminal": TERMINAL_NAME[api],
                "terminal_seen": any(t in body for t in TERMINAL[api]),
                "outcome": ex.outcome,
            }
        )
    return out


def timeline(sel: Selection) -> list[dict[str, Any]]:
    out = []
    for ex in sel.exchanges:
        method, path = ex.method_path
        steps = []
        for e in ex.events:
            note = {k: v for k, v in e.meta.items() if k not in ("rid", "sid")}
            steps.append(
                {
                    "t_ms": round((e.ts - ex.start) * 1000, 1),
                    "dir": e.dir,
                    "direction": e.direction,
                    "bytes": len(e.data),
                    "meta": note,
                }
            )
        out.append(
            {
                "rid": ex.rid,
                "start": _iso(ex.start),
                "request": f"{method} {path}".strip(),
                "status": ex.client_status,
                "steps": steps,
            }
        )
    return out


def _error_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _text(body[:160]).strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        return str(err.get("message") or err.get("type") or err)[:160]
    return _text(body[:160]).strip()


def _stream_error(body: bytes) -> str | None:
    """The first error event in a stream's data (OpenAI error data, Anthropic ``error``)."""
    for line in body.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload.startswith(b"{") and (b'"error"' in payload):
                try:
                    doc = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and ("error" in doc or doc.get("type") == "error"):
                    return _error_text(payload)
    return None


def detect_issues(sel: Selection, threshold: float) -> list[dict[str, Any]]:
    issues: list[dict[str, Any]] = []

    def add(kind: str, ex: Exchange | None, detail: str, **extra: Any) -> None:
        doc: dict[str, Any] = {"kind": kind, "rid": ex.rid if ex else None}
        if ex is not None:
            doc["time"] = _iso(ex.start)
            doc["request"] = " ".join(ex.method_path).strip()
        doc["detail"] = detail
        doc.update(extra)
        issues.append(doc)

    for damage in sel.capture.damage:
        add("damaged_file", None, damage.describe(), file=damage.file, offset=damage.offset)
    for ex in sel.exchanges:
        _method, path = ex.method_path
        api = api_of(path)
        has_request = any(e.dir == 0 for e in ex.events)
        if has_request and not ex.attempts:
            status = ex.client_status
            if status is None:
                add("never_forwarded", ex, "never forwarded, and no answer captured")
            elif status == 429:
                add("rate_limit", ex, "the gateway answered 429 itself", status=status)
            else:
                body = dechunk_body(ex.response_bytes)
                add(
                    "never_forwarded",
                    ex,
                    f"answered by the gateway: {status} {_error_text(body)}",
                    status=status,
                )
        for i, a in enumerate(ex.attempts):
            status = a.status
            if a.head_event is None:
                later = [b.backend for b in ex.attempts[i + 1 :]]
                then = f"; the gateway then tried {', '.join(map(str, later))}" if later else ""
                add(
                    "no_response",
                    ex,
                    f"no answer from backend {a.backend} captured{then}",
                    backend=a.backend,
                )
                continue
            body = a.body_bytes
            if status == 429:
                retry = a.head.get("retry-after") if a.head else None
                extra = f" (retry-after {retry})" if retry else ""
                add(
                    "rate_limit",
                    ex,
                    f"backend {a.backend} answered 429{extra}",
                    backend=a.backend,
                    status=status,
                )
            elif status is not None and status >= 400:
                text = _error_text(body) if body else "(body not read)"
                add(
                    "backend_error",
                    ex,
                    f"backend {a.backend} answered {status}: {text}",
                    backend=a.backend,
                    status=status,
                )
            elif a.is_stream and (err := _stream_error(body)) is not None:
                add(
                    "backend_error",
                    ex,
                    f"backend {a.backend} sent an error event: {err}",
                    backend=a.backend,
                    status=status,
                )
            elif not a.is_stream and body[:1] == b"{" and b'"error"' in body[:64]:
                add(
                    "backend_error",
                    ex,
                    f"backend {a.backend} answered {status} with an error: {_error_text(body)}",
                    backend=a.backend,
                    status=status,
                )
        for gap in _stream_gaps(ex, threshold):
            add(
                "slow_gap",
                ex,
                f"{gap['gap_s']:.2f} s between {gap['between']} from {gap['backend']}",
                **gap,
            )
        # A stream: its backend's data must hold the terminal event, and the exchange must
        # have ended ok. One issue per exchange, saying everything that was wrong.
        stream = next((a for a in reversed(ex.attempts) if a.is_stream), None)
        if stream is not None or ex.stream_start is not None:
            problems = []
            if stream is not None and not any(t in stream.body_bytes for t in TERMINAL[api]):
                problems.append(f"no {TERMINAL_NAME[api]} from backend {stream.backend}")
            end = ex.stream_end
            if end is None:
                problems.append("no stream-end marker (the capture ends mid-stream)")
            elif ex.outcome != "ok":
                problems.append(f"outcome {ex.outcome}")
            if problems:
                add(
                    "cut_stream",
                    ex,
                    "stream cut: " + "; ".join(problems),
                    backend=stream.backend if stream else None,
                    outcome=ex.outcome,
                )
    return issues


def dechunk_body(response: bytes) -> bytes:
    head, rest = split_message(response)
    if head is not None and (head.get("transfer-encoding") or "").lower() == "chunked":
        return dechunk(rest)[0]
    return rest


# --- inspect ----------------------------------------------------------------------------


def run_inspect(ns: argparse.Namespace) -> int:
    capture = read_capture(ns.files)
    sel = select(capture, ns)
    doc: dict[str, Any] = {"summary": summary(sel)}
    doc["damage"] = [d.describe() for d in capture.damage]
    if ns.entries is not None:
        doc["entries"] = [
            _event_doc(i + 1, e, False) for i, e in enumerate(sel.events[: ns.entries])
        ]
    elif ns.last is not None:
        start = max(len(sel.events) - ns.last, 0)
        doc["entries"] = [
            _event_doc(start + i + 1, e, False) for i, e in enumerate(sel.events[start:])
        ]
    elif ns.entry is not None:
        if ns.entry > len(sel.events):
            raise UsageError(f"--entry {ns.entry}: only {len(sel.events)} events are selected")
        doc["entry"] = _event_doc(ns.entry, sel.events[ns.entry - 1], True)
    if ns.analyze_streaming:
        doc["streams"] = streaming(sel, ns.gap_seconds)
    if ns.timeline:
        doc["timeline"] = timeline(sel)
    if ns.detect_issues:
        doc["issues"] = detect_issues(sel, ns.gap_seconds)
    if ns.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _render(doc)
    if ns.detect_issues and doc["issues"]:
        return EXIT_FOUND
    return EXIT_OK


def _render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    s = doc["summary"]
    t = Table(title="Capture summary", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("files", "\n".join(f"{f['path']} ({f['events']} events)" for f in s["files"]))
    t.add_row("time span", f"{s['first']} .. {s['last']} ({s['span_s']} s)")
    t.add_row(
        "events",
        f"{s['events']}: " + ", ".join(f"{k} {v}" for k, v in s["events_by_direction"].items()),
    )
    t.add_row(
        "bytes",
        f"{s['bytes']}: " + ", ".join(f"{k} {v}" for k, v in s["bytes_by_direction"].items()),
    )
    t.add_row("exchanges", f"{s['exchanges']} ({s['streams']} streamed)")
    t.add_row("backends", ", ".join(f"{k} ({v})" for k, v in s["backend_attempts"].items()) or "-")
    t.add_row("sessions", ", ".join(f"{k} ({v})" for k, v in s["sessions"].items()) or "-")
    console.print(t)
    for note in doc["damage"]:
        console.print(f"[bold yellow]damaged:[/] {note}")
    if "entries" in doc:
        t = Table(title="Events")
        for col in ("#", "time", "dir", "rid", "bytes", "meta", "data"):
            t.add_column(col)
        for e in doc["entries"]:
            meta = {k: v for k, v in e["meta"].items() if k != "rid"}
            t.add_row(
                str(e["n"]),
                e["time"],
                f"{e['dir']} {e['direction']}",
                str(e["rid"]),
                str(e["bytes"]),
                orjson.dumps(meta).decode() if meta else "",
                e["preview"][:60].replace("\r", "\\r").replace("\n", "\\n"),
            )
        console.print(t)
    if "entry" in doc:
        e = doc["entry"]
        console.print(
            f"event #{e['n']} seq {e['seq']} {e['time']} dir {e['dir']} ({e['direction']}) "
            f"rid {e['rid']} meta {orjson.dumps(e['meta']).decode()} {e['bytes']} bytes"
        )
        console.print(e["data"], markup=False)
    if "streams" in doc:
        t = Table(title="Streams")
        for col in (
            "rid",
            "backend",
            "reads",
            "bytes",
            "first byte",
            "last byte",
            "max gap",
            "slow gaps",
            "terminal",
            "outcome",
        ):
            t.add_column(col)
        for st in doc["streams"]:
            t.add_row(
                str(st["rid"]),
                str(st["backend"]),
                str(st["events"]),
                str(st["bytes"]),
                f"{st['first_byte_s']} s",
                f"{st['last_byte_s']} s",
                f"{st['max_gap_s']} s",
                str(st["slow_gaps"]),
                f"{st['terminal']}: {'yes' if st['terminal_seen'] else 'NO'}",
                str(st["outcome"]),
            )
        console.print(t)
    if "timeline" in doc:
        for ex in doc["timeline"]:
            t = Table(title=f"rid {ex['rid']} {ex['request']} -> {ex['status']} at {ex['start']}")
            for col in ("+ms", "direction", "bytes", "meta"):
                t.add_column(col)
            for step in ex["steps"]:
                t.add_row(
                    f"{step['t_ms']:.1f}",
                    f"{step['dir']} {step['direction']}",
                    str(step["bytes"]),
                    orjson.dumps(step["meta"]).decode() if step["meta"] else "",
                )
            console.print(t)
    if "issues" in doc:
        if not doc["issues"]:
            console.print("no issues found")
        else:
            t = Table(title=f"Issues ({len(doc['issues'])})")
            for col in ("kind", "rid", "time", "request", "detail"):
                t.add_column(col)
            for i in doc["issues"]:
                t.add_row(
                    i["kind"], str(i["rid"]), i.get("time", ""), i.get("request", ""), i["detail"]
                )
            console.print(t)


# --- replay -----------------------------------------------------------------------------

# Not re-sent: they describe the captured connection, not the request, or are recomputed.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)
# Fields that legitimately differ between two answers to one request.
_VOLATILE = frozenset({"id", "created", "created_at", "system_fingerprint"})


def run_replay(ns: argparse.Namespace) -> int:
    extra: list[tuple[str, str]] = []
    for h in ns.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {h!r}: expected 'Name: value'")
        extra.append((name.strip(), value.strip()))
    target = urllib.parse.urlsplit(ns.target if "://" in ns.target else "http://" + ns.target)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise UsageError(f"--target {ns.target!r}: expected http(s)://host:port")
    capture = read_capture(ns.files)
    exchanges = [ex for ex in group_exchanges(capture.events) if any(e.dir == 0 for e in ex.events)]
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    first = exchanges[0].start if exchanges else 0.0
    for ex in exchanges:
        if ns.speed > 0:
            # Pacing: each request leaves at its captured offset from the first, scaled.
            due = t0 + (ex.start - first) / ns.speed
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        try:
            results.append(_replay_one(ex, target, extra, ns.timeout))
        except (OSError, http.client.HTTPException) as exc:
            results.append(
                {
                    "rid": ex.rid,
                    "request": " ".join(ex.method_path),
                    "match": False,
                    "differences": [f"request failed: {exc}"],
                }
            )
    mismatched = [r for r in results if r["match"] is False]
    doc = {
        "target": ns.target,
        "requests": len(results),
        "matched": sum(1 for r in results if r["match"] is True),
        "differed": len(mismatched),
        "not_compared": sum(1 for r in results if r["match"] is None),
        "damage": [d.describe() for d in capture.damage],
        "results": results,
    }
    if ns.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console(highlight=False)
        t = Table(title=f"Replay to {ns.target}")
        for col in ("rid", "request", "captured", "now", "result"):
            t.add_column(col)
        for r in results:
            verdict = "match" if r["match"] else "not compared" if r["match"] is None else "DIFFERS"
            notes = "; ".join(r.get("differences", []))
            t.add_row(
                str(r["rid"]),
                r["request"],
                str(r.get("captured_status")),
                str(r.get("status")),
                f"{verdict}{': ' + notes if notes else ''}",
            )
        console.print(t)
        for note in doc["damage"]:
            console.print(f"damaged: {note}")
        console.print(
            f"{doc['matched']} matched, {doc['differed']} differed, "
            f"{doc['not_compared']} not compared, of {doc['requests']}"
        )
    return EXIT_FOUND if mismatched else EXIT_OK


def _replay_one(
    ex: Exchange, target: urllib.parse.SplitResult, extra: list[tuple[str, str]], timeout: float
) -> dict[str, Any]:
    head, body = ex.request
    method, path = ex.method_path
    out: dict[str, Any] = {"rid": ex.rid, "request": f"{method} {path}"}
    if head is None:
        out.update(match=None, differences=["the captured request has no complete head"])
        return out
    names = {n.lower() for n, _ in extra}
    headers = [
        (k, v)
        for k, v in head.headers
        if k not in _HOP_BY_HOP and "[REDACTED]" not in v and k not in names
    ]
    headers.extend(extra)
    conn_cls = (
        http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_cls(target.hostname or "", target.port, timeout=timeout)
    prefix = target.path.rstrip("/")
    try:
        conn.putrequest(method, prefix + path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        got = resp.read()
        status = resp.status
        got_type = resp.getheader("content-type", "") or ""
    finally:
        conn.close()
    out["status"] = status
    captured = ex.response_bytes
    chead = split_message(captured)[0]
    out["captured_status"] = chead.status if chead else None
    if chead is None:
        out.update(match=None, differences=["no captured answer to compare with"])
        return out
    if ex.outcome == "client_aborted":
        out.update(match=None, differences=["the captured client left mid-answer"])
        return out
    diffs = []
    if chead.status != status:
        diffs.append(f"status {chead.status} then, {status} now")
    want = dechunk_body(captured)
    ctype = chead.get("content-type") or ""
    if "text/event-stream" in ctype or "text/event-stream" in got_type:
        a, b = _stream_signature(want, api_of(path)), _stream_signature(got, api_of(path))
        if a["text"] != b["text"]:
            diffs.append(f"streamed text differs: {a['text'][:60]!r} then, {b['text'][:60]!r} now")
        if a["events"] != b["events"]:
            diffs.append(f"stream events differ: {a['events']} then, {b['events']} now")
    elif "json" in ctype:
        try:
            if _stable(orjson.loads(want)) != _stable(orjson.loads(got)):
                diffs.append("JSON body differs (ids and timestamps ignored)")
        except orjson.JSONDecodeError:
            if want != got:
                diffs.append("body differs (not JSON now)")
    elif want != got:
        diffs.append(f"body differs ({len(want)} bytes then, {len(got)} now)")
    out["match"] = not diffs
    out["differences"] = diffs
    return out


def _stable(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in _VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def _stream_signature(body: bytes, api: str) -> dict[str, Any]:
    """The text a stream carried and its kinds of events, consecutive repeats folded,
    so two streams cut into different chunks compare equal."""
    text: list[str] = []
    events: list[str] = []

    def note(kind: str) -> None:
        if not events or events[-1] != kind:
            events.append(kind)

    for line in body.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            note("[DONE]")
            continue
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            note("unparsed")
            continue
        if not isinstance(doc, dict):
            continue
        kind = str(doc.get("type") or doc.get("object") or ("error" if "error" in doc else "data"))
        note(kind)
        if api == "anthropic":
            delta = doc.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                text.append(delta["text"])
        elif api == "responses":
            if kind == "response.output_text.delta" and isinstance(doc.get("delta"), str):
                text.append(doc["delta"])
        else:
            for choice in doc.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    text.append(delta["content"])
    return {"text": "".join(text), "events": events}
