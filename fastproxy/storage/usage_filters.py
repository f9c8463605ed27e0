"""Query filters of /v1/usage/* (docs/usage-storage.md): parsing, validation, and SQL terms.

Parsing is strict because a typo must not silently answer "0 requests": an unknown
parameter, a repeated one, or a bad value raises `FilterError` naming the parameter
(the views turn it into a 400). An empty value (``?backend=``, as URL templates leave
them) counts as not given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args

from ..config.schema import BackendType
from ..core.errors import RequestRejected
from .usage_kinds import API_KINDS, NO_STATUS, OUTCOMES


class FilterError(RequestRejected, ValueError):
    """A bad query parameter: answered 400 wherever it surfaces (the monitoring API
    renders every GatewayError in one place), named by ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


LEGS = ("CTP", "PTB", "BTP", "PTC")
# Both dialects a client can speak are also the backend types (config BackendType).
_TYPES = tuple(sorted(get_args(BackendType)))
DIM_FILTERS = ("backend_type", "backend", "frontend_type", "api", "proxy_user", "outcome")
# Parameters whose usage_dims column has another name: ``key`` is a named client key's
# name (auth.keys), stored as key_name beside the 12-hex client_key_id of every key.
_DIM_COLUMN = {"key": "key_name", "team": "team"}
FILTER_PARAMS = (
    "backend_type",
    "backend",
    "model",
    "frontend_type",
    "api",
    "leg",
    "session_id",
    "proxy_user",
    "http_status_code",
    "outcome",
    "key",
    "team",
    "start_date",
    "end_date",
    "day_of_week",
    "hour_of_day",
)
# The closed sets a value must come from (case-insensitive), so a typo is a 400.
_CHOICES = {"backend_type": _TYPES, "frontend_type": _TYPES, "api": API_KINDS, "outcome": OUTCOMES}


@dataclass(frozen=True, slots=True)
class Filters:
    """Parsed filters. Times are epoch seconds: ``ts >= start``, and ``ts <= end`` (or
    ``ts < end`` when ``end_exclusive``: a date-only end_date covers its whole day)."""

    backend_type: str | None = None
    backend: str | None = None
    model: str | None = None
    frontend_type: str | None = None
    api: str | None = None
    session_id: str | None = None
    proxy_user: str | None = None
    # 0 selects the requests that got no status (``http_status_code=none``): the columns
    # store 0 for them.
    http_status_code: int | None = None
    outcome: str | None = None
    key: str | None = None  # a named key's name (auth.keys)
    team: str | None = None
    start: float | None = None
    end: float | None = None
    end_exclusive: bool = False
    day_of_week: int | None = None
    hour_of_day: int | None = None
    leg: str | None = None
    echo: dict[str, Any] = field(default_factory=dict, compare=False)


def parse_int(param: str, value: str, lo: int, hi: int) -> int:
    """An integer query value in lo..hi, or a FilterError naming the parameter."""
    try:
        n = int(value)
    except ValueError:
        raise FilterError(param, f"{value!r} is not an integer") from None
    if not lo <= n <= hi:
        raise FilterError(param, f"{n} is out of range {lo}..{hi}")
    return n


def _instant(param: str, value: str) -> tuple[datetime, bool]:
    """(UTC datetime, date_only). Naive times are UTC, as documented."""
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC), True
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            param,
            f"{value!r} is not an ISO-8601 date or date-time "
            "(e.g. 2025-12-01 or 2025-12-01T00:00:00Z)",
        ) from None
    try:
        return (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)), False
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise FilterError(param, f"{value!r} is out of range in UTC") from None


def iso(dt: datetime) -> str:
    text = dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{dt.microsecond:06d}Z" if dt.microsecond else "Z")


def parse_filters(
    query: Mapping[str, list[str]], allowed_extra: frozenset[str] = frozenset()
) -> Filters:
    """The filters of one request. ``allowed_extra`` names the view's own parameters
    (limit, offset, format), which are checked here for repetition only."""
    values: dict[str, str] = {}
    for param, given in query.items():
        if param not in FILTER_PARAMS and param not in allowed_extra:
            raise FilterError(
                param, "unknown parameter (filters: " + ", ".join(FILTER_PARAMS) + ")"
            )
        if len(given) > 1:
            raise FilterError(param, f"given {len(given)} times; give it once")
        if given and given[0] != "" and param in FILTER_PARAMS:
            values[param] = given[0]
    out: dict[str, Any] = {}
    echo: dict[str, Any] = {}
    for param, choices in _CHOICES.items():
        if param in values:
            v = values[param].lower()
            if v not in choices:
                raise FilterError(param, f"{values[param]!r} is not one of {', '.join(choices)}")
            out[param] = echo[param] = v
    for param in ("backend", "model", "session_id", "proxy_user", "key", "team"):
        if param in values:
            out[param] = echo[param] = values[param]
    if "leg" in values:
        leg = values["leg"].upper()
        if leg not in LEGS:
            raise FilterError("leg", f"{values['leg']!r} is not one of {', '.join(LEGS)}")
        out["leg"] = echo["leg"] = leg
    if values.get("http_status_code", "").lower() == NO_STATUS:
        out["http_status_code"], echo["http_status_code"] = 0, NO_STATUS
    elif "http_status_code" in values:
        try:
            out["http_status_code"] = echo["http_status_code"] = parse_int(
                "http_status_code", values["http_status_code"], 100, 599
            )
        except FilterError as err:
            raise FilterError(
                "http_status_code",
                f"{str(err).split(': ', 1)[1]}, or {NO_STATUS!r} (no status reached the client)",
            ) from None
    for param, lo, hi in (("day_of_week", 0, 6), ("hour_of_day", 0, 23)):
        if param in values:
            out[param] = echo[param] = parse_int(param, values[param], lo, hi)
    if "start_date" in values:
        start, _ = _instant("start_date", values["start_date"])
        out["start"] = start.timestamp()
        echo["start_date"] = iso(start)
    if "end_date" in values:
        end, date_only = _instant("end_date", values["end_date"])
        if date_only and end.date() == date.max:  # no next midnight: the last instant
            end = datetime.max.replace(tzinfo=UTC)
            out["end"] = end.timestamp()
            echo["end_date"] = iso(end)
        elif date_only:  # the whole day: up to the next midnight, exclusive
            out["end"], out["end_exclusive"] = (end + timedelta(days=1)).timestamp(), True
            echo["end_date"] = iso(end + timedelta(days=1) - timedelta(microseconds=1))
        else:
            out["end"] = end.timestamp()
            echo["end_date"] = iso(end)
    if (
        "start" in out
        and "end" in out
        and (out["end"] <= out["start"] if out.get("end_exclusive") else out["end"] < out["start"])
    ):
        raise FilterError(
            "end_date", f"{echo['end_date']} is before start_date {echo['start_date']}"
        )
    return Filters(**out, echo=echo)


def dim_query(f: Filters) -> tuple[str, list[Any]] | None:
    """SQL selecting the usage_dims ids the text filters allow, or None (no text filter)."""
    terms, args = [], []
    for col in DIM_FILTERS:
        v = getattr(f, col)
        if v is not None:
            terms.append(f"{col} = ?")
            args.append(v)
    for param, col in _DIM_COLUMN.items():
        v = getattr(f, param)
        if v is not None:
            terms.append(f"{col} = ?")
            args.append(v)
    if f.model is not None:  # either the model asked for or the one that answered
        terms.append("(model_requested = ? OR model_used = ?)")
        args += [f.model, f.model]
    if not terms:
        return None
    return "SELECT dim FROM usage_dims WHERE " + " AND ".join(terms), args


def common_terms(f: Filters, dims: list[int] | None) -> tuple[list[str], list[Any]]:
    """Terms valid on both usage_requests and usage_hourly (same column names)."""
    terms: list[str] = []
    args: list[Any] = []
    if dims is not None:
        # Integer ids from our own table: inlined, so the IN list needs no bindings.
        terms.append(f"dim IN ({','.join(str(int(d)) for d in dims)})")
    for col in ("http_status_code", "day_of_week", "hour_of_day"):
        v = getattr(f, col)
        if v is not None:
            terms.append(f"{col} = ?")
            args.append(v)
    return terms, args


def time_terms(
    lo: float | None, hi: float | None, hi_exclusive: bool
) -> tuple[list[str], list[Any]]:
    terms: list[str] = []
    args: list[Any] = []
    if lo is not None:
        terms.append("ts >= ?")
        args.append(lo)
    if hi is not None:
        terms.append("ts < ?" if hi_exclusive else "ts <= ?")
        args.append(hi)
    return terms, args


def raw_terms(f: Filters, dims: list[int] | None) -> tuple[list[str], list[Any]]:
    """Every filter, as terms on usage_requests."""
    terms, args = common_terms(f, dims)
    t_terms, t_args = time_terms(f.start, f.end, f.end_exclusive)
    terms += t_terms
    args += t_args
    if f.session_id is not None:
        terms.append("session_id = ?")
        args.append(f.session_id)
    return terms, args


def where(terms: list[str]) -> str:
    return (" WHERE " + " AND ".join(terms)) if terms else ""
