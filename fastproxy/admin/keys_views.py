"""GET /v1/keys: the named client keys (``auth.keys``) and teams, with their spend so far.

What a key is comes from the running configuration (a reload shows the new keys at
once); what it spent comes from the usage store's daily rollup, read in a worker thread
like every usage query. The list answers whether or not the store does: with usage
tracking off, or the database unreadable, each ``spend`` is null and ``spend_unavailable``
says why, because which keys exist is configuration, not usage.

Never in the answer: a secret, its SHA-256, or the name of the variable that holds it.
The key is identified by ``key_id``, the first 12 hex digits of its digest, the value
every usage record already carries as ``client_key_id`` (48 bits of a SHA-256 say
nothing useful about the secret). The variable's name is left out too: it says where
to look for the secret on the host, which a reader of spend figures has no need of.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from ..config.schema import BudgetConfig, ClientKeyConfig, RateLimit
from ..core.keys import key_digest
from ..storage.usage_queries import Spend
from .routes import AdminRequest, AdminResponse, json_response
from .usage_api import DISABLED
from .views import Views

log = logging.getLogger("fastproxy.admin")

PERIODS = ("day", "month")
KeySpend = dict[str, dict[str, Spend]]


def _limits(limits: RateLimit | None) -> dict[str, Any] | None:
    return None if limits is None else {"rpm": limits.rpm, "tpm": limits.tpm}


def _budget(budget: BudgetConfig | None) -> dict[str, Any] | None:
    return None if budget is None else {"usd": budget.usd, "period": budget.period}


def period_starts(now: float) -> tuple[int, int]:
    """(the first day of this UTC month, today), as days since the epoch."""
    tm = time.gmtime(now)
    month = calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0, 0, 0, 0)) // 86400
    return month, int(now // 86400)


def _since(day: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(day * 86400))


def _spend(found: dict[str, Spend] | None, starts: dict[str, int]) -> dict[str, dict[str, Any]]:
    out = {}
    for period in PERIODS:
        n, cost = found[period] if found is not None else (0, 0.0)
        # Rounded as stats rounds total_cost, so the two figures compare equal.
        out[period] = {"since": _since(starts[period]), "spend_usd": round(cost, 10), "requests": n}
    return out


def _rate(views: Views, scope: str, limits: RateLimit | None) -> dict[str, Any] | None:
    """A limited scope's window as the ledger counts it now (requests and tokens used
    in the last window, and what workers hold leased and unused), None when unlimited."""
    if limits is None or views.rate_usage is None:
        return None
    got = views.rate_usage(scope)
    if got is None:
        return None
    requests, tokens, leased_r, leased_t = got
    return {
        "window_seconds": views.config.rate_limits.window_seconds,
        "requests": requests,
        "tokens": tokens,
        "leased_requests": leased_r,
        "leased_tokens": leased_t,
    }


def _budget_state(views: Views, subject: str) -> dict[str, Any] | None:
    """A budget's live state as the gateway enforces it: the spend it counts this
    period (seeded from the store at start, then every finished request), the share of
    the budget, when the period resets, and whether requests are refused."""
    if views.budget_spend is None:
        return None
    got = views.budget_spend(subject)
    if got is None:
        return None
    spent, amount, _period, resets_at = got
    return {
        "spent_usd": round(spent, 10),
        "fraction": round(spent / amount, 6) if amount > 0 else None,
        "over_budget": spent >= amount,
        "resets_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resets_at)),
    }


def _key_id(key: ClientKeyConfig, env: Mapping[str, str]) -> str | None:
    digest = key_digest(key, env)
    return None if digest is None else digest.hex()[:12]


def keys_document(
    views: Views, spent: tuple[KeySpend, KeySpend] | None, starts: dict[str, int]
) -> dict[str, Any]:
    """The answer, from the running config and the store's figures (None: not known)."""
    auth = views.config.auth
    by_key, by_team = spent if spent is not None else ({}, {})
    keys = []
    members: dict[str, list[str]] = {name: [] for name in auth.teams}
    for k in auth.keys:
        if k.team is not None:
            members.setdefault(k.team, []).append(k.name)
        keys.append(
            {
                "name": k.name,
                "key_id": _key_id(k, os.environ if views.env is None else views.env),
                "team": k.team,
                "models": list(k.models),
                "limits": _limits(k.limits),
                "budget": _budget(k.budget),
                "spend": None if spent is None else _spend(by_key.get(k.name), starts),
                "rate": _rate(views, f"key:{k.name}", k.limits),
                "budget_state": _budget_state(views, f"key:{k.name}"),
            }
        )
    teams = []
    for name in sorted(members):
        team = auth.teams.get(name)
        teams.append(
            {
                "name": name,
                "keys": members[name],
                "budget": _budget(team.budget if team is not None else None),
                "spend": None if spent is None else _spend(by_team.get(name), starts),
                "budget_state": _budget_state(views, f"team:{name}"),
            }
        )
    models = {
        model: {"limits": _limits(limit), "rate": _rate(views, f"model:{model}", limit)}
        for model, limit in views.config.rate_limits.models.items()
    }
    return {"keys": keys, "teams": teams, "models": models}


async def keys(views: Views, req: AdminRequest) -> AdminResponse:
    month, today = period_starts(time.time())
    starts = {"day": today, "month": month}
    store = views.store
    spent: tuple[KeySpend, KeySpend] | None = None
    reason: str | None = None
    if store is None:
        reason = DISABLED
    elif views.config.auth.keys or views.config.auth.teams:
        try:
            spent = await asyncio.to_thread(store.spend, month, today)
        except sqlite3.Error as exc:
            log.warning("usage query failed: %s", exc)
            reason = f"usage database unavailable: {exc}"
    else:
        spent = ({}, {})  # nothing to look up
    doc = keys_document(views, spent, starts)
    doc["spend_unavailable"] = reason
    return json_response(doc)
