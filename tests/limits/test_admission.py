"""The request path's glue (dataplane/admission.py, workers/limiting.py,
storage/usage_spend.py) without sockets: real ledgers, limiters, books and SQLite."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml

from fastproxy.config import Config, ConfigError, load_config
from fastproxy.core.budget import BudgetBook, BudgetRefusal
from fastproxy.core.keys import ClientKey
from fastproxy.core.ratelimit import Handle, Ledger, Limiter, Refusal
from fastproxy.core.records import BackendUsage, ExchangeRecord
from fastproxy.dataplane import admission
from fastproxy.dataplane.admission import Admission, budget_refused, estimate_tokens
from fastproxy.storage.usage_schema import migrate
from fastproxy.storage.usage_spend import spent
from fastproxy.workers.limiting import answer_asks

ALICE = ClientKey("a1", "alice", "ml")
BOB = ClientKey("b1", "bob", None)


def config(**auth: Any) -> Config:
    tree = {
        "auth": {
            "keys": [
                {"name": "alice", "secret_sha256": "a" * 64, "team": "ml", **auth},
                {"name": "bob", "secret_sha256": "b" * 64},
            ],
            "teams": {"ml": {"budget": {"usd": 10.0, "period": "month"}}},
        },
        "rate_limits": {"models": {"gpt-4o": {"rpm": 5}}},
    }
    return msgspec.convert(tree, Config)


def test_scopes_and_subjects_are_prebuilt_per_key_and_model() -> None:
    cfg = config(limits={"rpm": 3, "tpm": 100}, budget={"usd": 1.0, "period": "day"})
    adm = admission.local_admission(
        cfg, ledger=admission.new_ledger(cfg), book=None, cost_of=None, charged=None
    )
    assert [s.name for s in adm.scopes(ALICE, "gpt-4o")] == ["key:alice", "model:gpt-4o"]
    assert [s.name for s in adm.scopes(ALICE, "other")] == ["key:alice"]
    assert [s.name for s in adm.scopes(BOB, "gpt-4o")] == ["model:gpt-4o"]
    assert adm.scopes(BOB, "other") == ()
    assert adm.scopes(None, "other") == ()
    # The same objects every request: the limiter's fast path compares identity.
    assert adm.scopes(ALICE, "gpt-4o")[0] is adm.scopes(ALICE, "gpt-4o")[0]
    assert adm.subjects == {"alice": ("key:alice", "team:ml")}
    assert [b.subject for b in admission.budgets_of(cfg)] == ["key:alice", "team:ml"]
    assert admission.configured(cfg)
    assert not admission.configured(msgspec.convert({}, Config))


def test_estimate_is_a_quarter_of_the_body() -> None:
    assert estimate_tokens(4000) == 1000 and estimate_tokens(3) == 0


def test_budget_refusal_waits_until_the_reset_and_tells_the_sdk_not_to_retry() -> None:
    refusal = BudgetRefusal("key:alice", 1.2, 1.0, "day", 1000.0 + 3600.5)
    err = budget_refused(refusal, 1000.0)
    assert err.status == 429 and err.code == "insufficient_quota"
    assert err.error_type == "insufficient_quota"
    assert err.headers == b"retry-after: 3601\r\nx-should-retry: false\r\n"


def test_a_worker_waits_for_the_primarys_grant_then_resumes_in_order() -> None:
    cfg = config(limits={"rpm": 3})
    ledger = Ledger(window=60.0)
    frames: list[tuple[bytes, bool]] = []
    worker = admission.Admission(
        cfg,
        limiter=Limiter(worker=7, window=60.0),
        budget=None,
        send_asks=lambda asks, urgent: frames.append(
            (orjson.dumps([a.to_tuple() for a in asks]), urgent)
        ),
    )
    decided: list[Handle | Refusal] = []
    scopes = worker.scopes(ALICE, "other")
    for _ in range(4):
        assert worker.reserve(scopes, 10, decided.append) is None  # waits: no lease yet
    assert worker.waiting == 4 and frames and frames[0][1]  # asked at once
    while frames:
        payload, _ = frames.pop(0)
        grants = answer_asks(ledger, memoryview(payload))
        assert grants is not None
        worker.on_grants(orjson.loads(grants))
    assert [type(d) for d in decided] == [Handle, Handle, Handle, Refusal]
    assert worker.waiting == 0
    assert answer_asks(None, memoryview(b"[]")) is None  # limits turned off meanwhile


def test_finished_settles_and_charges_the_keys_subjects() -> None:
    cfg = config(budget={"usd": 1.0, "period": "day"})
    book = BudgetBook(admission.budgets_of(cfg))
    charged: list[tuple[tuple[str, ...], float]] = []

    def charge(subjects: tuple[str, ...], cost: float) -> None:
        charged.append((subjects, cost))
        book.charge(subjects, cost)

    adm = Admission(cfg, limiter=None, budget=book, cost_of=lambda rec: 0.75, charged=charge)
    rec = ExchangeRecord(1, 1, 0.0)
    rec.key_name, rec.usage = "alice", BackendUsage(prompt=3, completion=4, total=7)
    adm.finished(None, rec)
    assert charged == [(("key:alice", "team:ml"), 0.75)]
    assert adm.check_budget(ALICE) is None
    adm.finished(None, rec)
    refused = adm.check_budget(ALICE)
    assert refused is not None and "key 'alice'" in str(refused)
    assert adm.check_budget(BOB) is None  # no budget of its own, no team


def _db(path: Path, rows: list[tuple[float, str | None, str | None, float | None]]) -> None:
    conn = sqlite3.connect(path)
    migrate(conn)
    conn.executemany(
        "INSERT INTO usage_requests (ts, dim, http_status_code, day_of_week, hour_of_day, "
        "streaming, tool_call_count, key_name, team, cost) VALUES (?, 1, 200, 0, 0, 0, 0, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()


def test_spent_sums_a_keys_and_a_teams_cost_in_the_period(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    _db(
        db,
        [
            (50.0, "alice", "ml", 1.0),  # before the period
            (100.0, "alice", "ml", 0.25),
            (150.0, "bob", "ml", 0.5),
            (160.0, "alice", None, None),  # unpriced
            (200.0, "alice", "ml", 2.0),  # the next period
        ],
    )
    got = spent(db, [("key:alice", 100.0, 200.0), ("team:ml", 100.0, 200.0), ("key:carol", 0, 1)])
    assert got == {"key:alice": 0.25, "team:ml": 0.75, "key:carol": 0.0}
    assert spent(tmp_path / "missing.db", [("key:alice", 0.0, 1.0)]) == {}


@pytest.mark.parametrize("team", ["ml", "typo"])
def test_a_team_budget_no_key_names_is_refused(tmp_path: Path, team: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        orjson.dumps(
            {
                "auth": {
                    "keys": [{"name": "alice", "secret_sha256": "a" * 64, "team": team}],
                    "teams": {"ml": {"budget": {"usd": 5}}},
                }
            }
        ).decode()
    )
    if team == "ml":
        assert load_config({}, config_file=str(cfg), env={}).config.auth.teams["ml"]
    else:
        with pytest.raises(ConfigError, match=r"auth.teams.ml: no key in auth.keys has team"):
            load_config({}, config_file=str(cfg), env={})


DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def test_the_docs_examples_pass_check_config(tmp_path: Path) -> None:
    """The YAML blocks of docs/policy.md's "Rate limits" and "Budgets" sections, run
    through ``fastproxy check-config`` with the variables their keys name set."""
    text = DOCS.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text[text.index("## Rate limits") :], re.S)
    blocks = [b for b in blocks if re.search(r"^(auth|rate_limits):", b, re.M)]
    assert len(blocks) >= 2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTPROXY", "USAGE_"))}
    env |= {"XDG_CONFIG_HOME": "/nonexistent", "ALICE_KEY": "sk-alice-1", "BOB_KEY": "sk-bob-1"}
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        proc = subprocess.run(
            [sys.executable, "-m", "fastproxy", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0, (block, proc.stdout, proc.stderr)
        assert admission.configured(msgspec.convert(yaml.safe_load(block), Config))


def test_a_worker_whose_primary_does_not_answer_admits_after_the_wait_timeout() -> None:
    now = [100.0]
    cfg = config(limits={"rpm": 3})
    worker = Admission(
        cfg,
        limiter=Limiter(worker=1, window=60.0, wait_timeout=2.0, clock=lambda: now[0]),
        budget=None,
        send_asks=lambda asks, urgent: None,  # the primary stopped reading
    )
    decided: list[Handle | Refusal] = []
    assert worker.reserve(worker.scopes(ALICE, "x"), 1, decided.append) is None
    now[0] += 1.0
    worker.tick()
    assert decided == [] and worker.waiting == 1
    now[0] += 1.5
    worker.tick()
    assert [type(d) for d in decided] == [Handle] and worker.waiting == 0


def test_a_dead_workers_leases_come_back_to_the_others() -> None:
    ledger = Ledger(window=60.0)
    cfg = config(limits={"rpm": 2})
    sent: dict[int, list[bytes]] = {1: [], 2: []}

    def make(serial: int) -> Admission:
        return Admission(
            cfg,
            limiter=Limiter(worker=serial, window=60.0, lease_fraction=1.0),
            budget=None,
            send_asks=lambda asks, urgent: sent[serial].append(
                orjson.dumps([a.to_tuple() for a in asks])
            ),
        )

    def deliver(serial: int, adm: Admission) -> None:
        while sent[serial]:
            grants = answer_asks(ledger, memoryview(sent[serial].pop(0)))
            assert grants is not None
            adm.on_grants(orjson.loads(grants))

    one, two = make(1), make(2)
    got: list[Handle | Refusal] = []
    assert one.reserve(one.scopes(ALICE, "x"), 1, got.append) is None
    deliver(1, one)  # worker 1 leases the whole limit (2) and uses one
    assert [type(g) for g in got] == [Handle]
    assert two.reserve(two.scopes(ALICE, "x"), 1, got.append) is None
    deliver(2, two)
    assert isinstance(got[-1], Refusal)  # worker 1 holds the other permit
    ledger.forget_worker(1)  # worker 1 exited: its unused permit comes back
    assert ledger.usage("key:alice")[2] == 0
