"""Fuzz: query strings into the monitoring API give filters or a 400 naming the parameter.

The usage views (/v1/usage/stats, /recent, /export; fastproxy/admin/usage_api.py) parse
their query with ``parse_query`` (fastproxy/admin/routes.py) and ``parse_filters``
(fastproxy/storage/usage_filters.py): strict on purpose, every refusal a `FilterError`
naming the parameter, turned into a 400 by the view. The properties:

* ``parse_query`` never raises, for any text;
* ``parse_filters`` returns `Filters` or raises `FilterError` whose ``param`` is one of
  the query's parameters and whose message starts with it; nothing else escapes;
* each view answers 200 (its store called with the parsed filters) or 400 with
  ``{"detail": "<param>: ..."}``, never 500;
* through the two listeners that serve these views, the admin listener (h11) and the data
  port (httptools), both over a `FakeTransport`: no exception escapes ``data_received``,
  exactly one response comes back, and both listeners give the same status and body for
  the same request (they share the handlers, so they must agree).

Values are drawn around the parser's edges: dates at the ends of the calendar, time
zones that push them over, huge and non-ASCII digits, repeats, blanks, bad escapes.

Bounded in CI; ``HYPOTHESIS_PROFILE=long`` runs it longer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fastproxy.admin.routes import AdminRequest, parse_query
from fastproxy.dataplane.plane import DataPlane
from fastproxy.dataplane.protocol import ClientProtocol
from fastproxy.storage.usage_filters import FILTER_PARAMS, FilterError, Filters, parse_filters
from tests.support.fake_transport import FakeClockLoop, FakeTransport, fake_clock_loop, make_config
from tests.support.monitoring import serve_routes, usage_router

from .fuzz_settings import fuzz

VIEWS = {
    "/v1/usage/stats": frozenset(),
    "/v1/usage/recent": frozenset({"limit", "offset"}),
    "/v1/usage/export": frozenset({"format"}),
}
PARAMS = [*FILTER_PARAMS, "limit", "offset", "format"]

# --------------------------------------------------------------------------------------
# query strings

edge_values = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "1",
        "5",
        "6",
        "7",
        "23",
        "24",
        "99",
        "100",
        "599",
        "600",
        "1_0",
        " 5",
        "5 ",
        "+5",
        "0x10",
        "1e3",
        "9" * 5000,
        "١٢",
        "²",
        "openai",
        "OPENAI",
        "anthropic",
        "gemini",
        "CTP",
        "ptb",
        "XYZ",
        "json",
        "ndjson",
        "CSV",
        "xml",
        "2025-12-01",
        "2025-12-01T00:00:00Z",
        "2025-12-01T00:00:00+05:00",
        "2025-13-01",
        "2025-02-30",
        "20251201",
        "2025-W01-1",
        "2025-12-01T24:00:00",
        "2025-12-01 10:00",
        "9999-12-31",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00Z",
        "0000-01-01",
        "2025-12-01T00:00:00.123456789Z",
        "%",
        "%zz",
        "%ff",
        "%00",
        "a&b",
        "a=b",
        "\u00e9",
        "\ud7ff",
    ]
)
values = st.one_of(
    edge_values,
    st.text(max_size=12),
    st.dates().map(str),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers().map(str),
)
names = st.one_of(st.sampled_from(PARAMS), st.sampled_from(PARAMS), st.text(max_size=6))


# Dates and times get their own draw: they are parsed last, after every other filter,
# so in a random mix an earlier refusal would usually hide what they do.
instants = st.one_of(
    st.sampled_from(["9999-12-31", "9999-12-30", "0001-01-01", "2025-06-30"]),
    st.builds(
        lambda d, t, z: f"{d}T{t}{z}",
        st.sampled_from(["9999-12-31", "0001-01-01", "2025-06-30", "1970-01-01"]),
        st.sampled_from(["00:00:00", "23:59:59", "12:00", "23:59:59.999999"]),
        st.sampled_from(["", "Z", "+00:00", "+01:00", "-01:00", "+23:59", "-23:59"]),
    ),
    # Fixed offsets rather than st.timezones(): no dependence on the host's tz database.
    st.datetimes(
        timezones=st.builds(
            timezone,
            st.timedeltas(
                min_value=-timedelta(hours=23, minutes=59),
                max_value=timedelta(hours=23, minutes=59),
            ),
        )
    ).map(lambda d: d.isoformat()),
)
time_pairs = st.tuples(st.sampled_from(["start_date", "end_date"]), instants)


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.one_of(st.tuples(names, values), time_pairs), max_size=5))
    encode = draw(st.booleans())
    parts = []
    for name, value in pairs:
        if encode:
            parts.append(quote(name, safe="") + "=" + quote(value, safe=""))
        else:
            parts.append(name + ("=" + value if draw(st.booleans()) or value else ""))
    return "&".join(parts)


# --------------------------------------------------------------------------------------
# the parsers themselves


@fuzz(ci=400)
@given(raw=st.one_of(query_strings(), st.text(max_size=40)))
def test_parse_query_never_raises(raw: str) -> None:
    query = parse_query(raw)
    assert all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
        for k, v in query.items()
    )


@fuzz(ci=400)
@given(raw=query_strings(), view=st.sampled_from(sorted(VIEWS)))
@example(raw="end_date=9999-12-31", view="/v1/usage/stats").via("the last day of the calendar")
@example(raw="start_date=0001-01-01T00:00:00%2B01:00", view="/v1/usage/stats").via(
    "a zone that moves the first instant before year 1"
)
def test_parse_filters_returns_filters_or_names_the_parameter(raw: str, view: str) -> None:
    query = parse_query(raw)
    try:
        filters = parse_filters(query, VIEWS[view])
    except FilterError as err:
        assert err.param in query, (err.param, query)
        assert str(err).startswith(err.param + ": "), str(err)
        return
    assert isinstance(filters, Filters)
    if filters.start is not None and filters.end is not None:
        assert filters.start <= filters.end
    orjson.dumps(filters.echo)  # echoed back in the export document


# --------------------------------------------------------------------------------------
# the views, and the two listeners that serve them


class StubCursor:
    record_count = 0

    def __init__(self, filters: Filters) -> None:
        self.filters = filters

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        return iter([])

    def close(self) -> None:
        pass


class StubStore:
    """Answers from the parsed filters alone: the views' parsing is what is under test."""

    def __init__(self) -> None:
        self.calls: list[Filters] = []

    def stats(self, f: Filters) -> dict[str, Any]:
        self.calls.append(f)
        return {"filters": f.echo}

    def recent(self, f: Filters, limit: int, offset: int) -> dict[str, Any]:
        self.calls.append(f)
        return {"filters": f.echo, "limit": limit, "offset": offset}

    def open_export(self, f: Filters, page_size: int) -> StubCursor:
        self.calls.append(f)
        return StubCursor(f)


def check_answer(status: int, body: bytes, query: dict[str, list[str]]) -> None:
    assert status in (200, 400), (status, body)
    if status == 400:
        detail = orjson.loads(body)["detail"]
        param = detail.split(": ", 1)[0]
        assert param in query, (detail, query)


@fuzz(ci=300)
@given(raw=query_strings(), view=st.sampled_from(sorted(VIEWS)))
@example(raw="end_date=9999-12-31", view="/v1/usage/recent").via("the last day of the calendar")
def test_views_answer_200_or_400_naming_the_parameter(raw: str, view: str) -> None:
    store = StubStore()
    handler, params, _ = usage_router(store).resolve("GET", view)
    assert handler is not None
    query = parse_query(raw)
    req = AdminRequest(
        method="GET",
        path=view,
        query=query,
        headers={},
        body=b"",
        peer_ip="127.0.0.1",
        params=params,
    )

    async def call() -> Any:
        resp = await handler(req)
        if resp.stream is not None:
            await resp.stream.aclose()  # type: ignore[attr-defined]
        return resp

    resp = asyncio.run(call())
    check_answer(resp.status, resp.body, query)
    assert len(store.calls) == (1 if resp.status == 200 else 0)


class Servers:
    """The data plane and the admin listener serving the usage routes over one stub."""

    def __init__(self, loop: FakeClockLoop) -> None:
        self.loop = loop
        self.plane = DataPlane(make_config(), loop)
        self.admin = serve_routes(self.plane, usage_router(StubStore()))


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with fake_clock_loop() as loop:
        yield Servers(loop)


def _status_and_body(written: bytes) -> tuple[int, bytes, int]:
    """Status, de-chunked body and the number of responses in ``written``."""
    count = len(re.findall(rb"(?:^|\r\n\r\n|\n)HTTP/1\.1 \d{3}", written))
    head, _, rest = written.partition(b"\r\n\r\n")
    status = int(head[9:12])
    if b"transfer-encoding: chunked" in head.lower():
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest
    return status, body, count


def ask(loop: FakeClockLoop, protocol: Any, request: bytes) -> tuple[FakeTransport, list[str]]:
    errors: list[str] = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(str(ctx.get("exception"))))
    transport = FakeTransport(loop)
    try:
        transport.connect(protocol)
        transport.receive(request)
        loop.settle()
        transport.reset_by_peer()
        loop.settle()
    finally:
        loop.set_exception_handler(None)
    return transport, errors


@fuzz(ci=200)
@given(
    raw=query_strings().map(lambda q: quote(q, safe="=&%+:")), view=st.sampled_from(sorted(VIEWS))
)
@example(raw="end_date=9999-12-31", view="/v1/usage/stats").via("the last day of the calendar")
@example(raw="format=ndjson", view="/v1/usage/export").via("an empty ndjson export")
def test_both_listeners_give_the_same_answer(servers: Servers, raw: str, view: str) -> None:
    loop, plane = servers.loop, servers.plane
    request = f"GET {view}?{raw} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")
    query = parse_query(raw)
    answers = []
    for protocol in (servers.admin(), ClientProtocol(plane)):
        transport, errors = ask(loop, protocol, request)
        assert not errors, errors
        status, body, count = _status_and_body(bytes(transport.written))
        assert count == 1, bytes(transport.written)
        if status == 414 and isinstance(protocol, ClientProtocol):
            # The data port's request-line limit (the admin listener has only h11's head
            # bound): a refusal both may make differently.
            assert len(view) + 1 + len(raw) > plane.config.limits.max_request_line_bytes
            return
        check_answer(status, body, query)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:  # an ndjson or csv export: compared byte for byte
            answers.append((status, body))
            continue
        if isinstance(doc, dict):
            doc.pop("exported_at", None)  # the wall clock at the moment of export
        answers.append((status, doc))
    assert answers[0] == answers[1], answers


targets = st.one_of(
    st.builds(
        lambda p, q: p + "?" + q,
        st.sampled_from(
            [
                "/v1/usage/stats",
                "//v1/usage/stats",
                "//[x/v1/usage/stats",
                "http://127.0.0.1/v1/usage/stats",
                "//127.0.0.1:8001/x",
                "/v1/usage/%2e%2e/stats",
                "/v1/usage/stats;x",
                "*",
            ]
        ),
        query_strings().map(lambda q: quote(q, safe="=&%+:[]")),
    ),
    st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=30),
)


@fuzz(ci=200)
@given(target=targets)
@example(target="//[x/v1/usage/stats?a=1").via("a target urlsplit reads as a broken IPv6 host")
def test_admin_listener_answers_any_target_once(servers: Servers, target: str) -> None:
    loop = servers.loop
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")
    try:
        transport, errors = ask(loop, servers.admin(), request)
    except Exception as exc:  # escaping data_received: uvloop drops the connection unanswered
        raise AssertionError(f"data_received raised {exc!r} for target {target!r}") from exc
    assert not errors, errors
    status, _, count = _status_and_body(bytes(transport.written))
    assert count == 1, bytes(transport.written)
    assert status in (200, 400, 404, 405, 414, 431), (status, bytes(transport.written))
