"""A named key's requests are its own in the usage store: the official SDKs in both
dialects (JSON and stream) → a real gateway → the mock LLM → SQLite, then
/v1/usage/stats?key=&team=, the by_key/by_team breakdowns, /recent and /export, and
GET /v1/keys, whose spend must be the stats' figures and must hold no secret."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson

from tests.conftest import RunningGateway
from tests.support.waiting import wait_until
from tests.usage.test_e2e_api_and_status import cli_json, db_path
from tests.usage.test_store_cli import fastproxy

from .e2e import (
    CI_MODELS,
    CI_SECRET,
    CI_SHA256,
    MSGS,
    NOTEBOOK_ENV,
    NOTEBOOK_SECRET,
    PLAIN_SECRET,
    admin,
    admin_text,
)


def _openai(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _anthropic(gw: RunningGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def _traffic(gw: RunningGateway) -> dict[str, int]:
    """Four requests with ci-bot (each dialect, JSON and stream), one with notebook, one
    with the plain list's key; the prompt tokens each key's requests reported."""
    prompt = {"ci-bot": 0, "notebook": 0, "plain": 0}
    with _openai(gw, CI_SECRET) as client:
        r = client.chat.completions.create(model="gpt-4o", messages=MSGS)  # type: ignore[arg-type]
        assert r.usage is not None
        prompt["ci-bot"] += r.usage.prompt_tokens
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSGS,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                prompt["ci-bot"] += chunk.usage.prompt_tokens
    with _anthropic(gw, CI_SECRET) as client:
        m = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=32,
            messages=MSGS,  # type: ignore[arg-type]
        )
        prompt["ci-bot"] += m.usage.input_tokens
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=32,
            messages=MSGS,  # type: ignore[arg-type]
        ) as s:
            final = s.get_final_message()
        prompt["ci-bot"] += final.usage.input_tokens
    with _openai(gw, NOTEBOOK_SECRET) as client:
        r = client.chat.completions.create(model="gpt-4o", messages=MSGS)  # type: ignore[arg-type]
        assert r.usage is not None
        prompt["notebook"] += r.usage.prompt_tokens
    with _openai(gw, PLAIN_SECRET) as client:
        r = client.chat.completions.create(model="gpt-4o", messages=MSGS)  # type: ignore[arg-type]
        assert r.usage is not None
        prompt["plain"] += r.usage.prompt_tokens
    # The store is written by the recorder process, batch by batch: wait for all six.
    wait_until(lambda: admin(gw, "/v1/usage/recent")["total"] == 6, what="the six usage records")
    return prompt


def _counts(table: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: g["request_count"] for name, g in table.items()}


def test_each_keys_requests_are_attributed_to_it(keyed: RunningGateway) -> None:
    prompt = _traffic(keyed)

    ci = admin(keyed, "/v1/usage/stats", key="ci-bot")
    assert ci["request_count"] == 4 and ci["filters"] == {"key": "ci-bot"}
    assert ci["total_prompt_tokens"] == prompt["ci-bot"]
    assert _counts(ci["by_key"]) == {"ci-bot": 4} and _counts(ci["by_team"]) == {"platform": 4}
    assert _counts(ci["by_backend"]) == {"openai.1": 2, "anthropic.1": 2}
    assert ci["total_cost"] > 0  # the price table knows these models: spend is comparable

    notebook = admin(keyed, "/v1/usage/stats", team="research")
    assert notebook["request_count"] == 1
    assert notebook["total_prompt_tokens"] == prompt["notebook"]
    assert _counts(notebook["by_key"]) == {"notebook": 1}
    assert admin(keyed, "/v1/usage/stats", key="ci-bot", team="research")["request_count"] == 0
    assert admin(keyed, "/v1/usage/stats", key="nobody")["request_count"] == 0

    # Everything together: the plain list's request has no key name or team.
    everything = admin(keyed, "/v1/usage/stats")
    assert _counts(everything["by_key"]) == {"(none)": 1, "ci-bot": 4, "notebook": 1}
    assert _counts(everything["by_team"]) == {"(none)": 1, "platform": 4, "research": 1}
    assert everything["by_key"]["(none)"]["total_prompt_tokens"] == prompt["plain"]

    records = admin(keyed, "/v1/usage/recent", key="ci-bot")["records"]
    assert len(records) == 4
    assert {(r["key_name"], r["team"]) for r in records} == {("ci-bot", "platform")}
    assert {(r["frontend_type"], r["streaming"]) for r in records} == {
        ("openai", False),
        ("openai", True),
        ("anthropic", False),
        ("anthropic", True),
    }
    others = admin(keyed, "/v1/usage/recent")["records"]
    rest = [(r["key_name"], r["team"]) for r in others if r["key_name"] != "ci-bot"]
    assert len(rest) == 2 and set(rest) == {(None, None), ("notebook", "research")}
    lines = admin_text(keyed, "/v1/usage/export?format=ndjson&team=platform").splitlines()
    assert len(lines) == 4 and all(orjson.loads(x)["key_name"] == "ci-bot" for x in lines)
    header = admin_text(keyed, "/v1/usage/export?format=csv").splitlines()[0]
    assert header.endswith(",api,key_name,team")

    # The database holds names and teams, never a secret or its full digest.
    stored = b"".join(
        Path(str(db_path(keyed)) + suffix).read_bytes()
        for suffix in ("", "-wal")
        if Path(str(db_path(keyed)) + suffix).exists()
    )
    assert b"ci-bot" in stored
    for secret in (CI_SECRET, CI_SHA256, NOTEBOOK_SECRET, PLAIN_SECRET):
        assert secret.encode() not in stored

    # `fastproxy usage` reads the same file with the same filters.
    assert cli_json(keyed, "--key", "ci-bot")["request_count"] == 4
    table = fastproxy("usage", "stats", "--db", str(db_path(keyed)), "--team", "research")
    assert table.returncode == 0, table.stderr
    assert "by key" in table.stdout and "notebook" in table.stdout
    assert "ci-bot" not in table.stdout


def _month_start() -> str:
    tm = time.gmtime()
    return f"{tm.tm_year:04d}-{tm.tm_mon:02d}-01"


def test_keys_lists_names_limits_and_the_spend_stats_gives_and_no_secret(
    keyed: RunningGateway,
) -> None:
    _traffic(keyed)
    doc = admin(keyed, "/v1/keys")
    assert doc["spend_unavailable"] is None
    by_name = {k["name"]: k for k in doc["keys"]}
    assert list(by_name) == ["ci-bot", "notebook"]  # config order
    ci, nb = by_name["ci-bot"], by_name["notebook"]
    assert set(ci) == {
        "name",
        "key_id",
        "team",
        "models",
        "limits",
        "budget",
        "spend",
        "rate",
        "budget_state",
    }
    assert ci["rate"] is None and ci["budget_state"] is None  # neither is configured
    assert ci["key_id"] == CI_SHA256[:12]
    assert nb["key_id"] == hashlib.sha256(NOTEBOOK_SECRET.encode()).hexdigest()[:12]
    assert (ci["team"], ci["models"], ci["limits"], ci["budget"]) == (
        "platform",
        CI_MODELS,
        None,
        None,
    )
    assert (nb["team"], nb["models"]) == ("research", [])

    today = time.strftime("%Y-%m-%d", time.gmtime())
    for name, key in by_name.items():
        for period, start in (("day", today), ("month", _month_start())):
            stats = admin(keyed, "/v1/usage/stats", key=name, start_date=start)
            got = key["spend"][period]
            assert got["since"] == f"{start}T00:00:00Z"
            assert got["requests"] == stats["request_count"], (name, period)
            assert got["spend_usd"] == stats["total_cost"], (name, period)
    assert ci["spend"]["month"]["requests"] == 4 and nb["spend"]["month"]["requests"] == 1
    assert ci["spend"]["month"]["spend_usd"] > 0

    teams = {t["name"]: t for t in doc["teams"]}
    assert set(teams) == {"platform", "research"}
    assert teams["platform"]["keys"] == ["ci-bot"] and teams["platform"]["budget"] is None
    platform = admin(keyed, "/v1/usage/stats", team="platform", start_date=_month_start())
    assert teams["platform"]["spend"]["month"]["spend_usd"] == platform["total_cost"]
    assert teams["research"]["spend"]["month"]["requests"] == 1

    # Neither secret, nor its digest, nor the variable that holds one, anywhere.
    body = admin_text(keyed, "/v1/keys")
    for secret in (
        CI_SECRET,
        CI_SHA256,
        NOTEBOOK_SECRET,
        hashlib.sha256(NOTEBOOK_SECRET.encode()).hexdigest(),
        NOTEBOOK_ENV,
        PLAIN_SECRET,
    ):
        assert secret not in body
