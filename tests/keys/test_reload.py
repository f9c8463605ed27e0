"""A real `fastproxy run`. SIGHUP: a key added to the file opens the data port at once, a
key removed from it is refused with 401, GET /v1/keys shows the new list, and the usage
already recorded under the removed key stays in the store under its name. With two
workers: each key's requests are attributed whichever worker served them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.reliability.test_reload import _wait_line
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

from .e2e import CI_SECRET, MSGS, ci_key, keyed_tree

NEW_SECRET = "sk-newcomer-0c4e8a2f6b1d3957"


def _get(port: int | None, path: str, **params: str) -> Any:
    assert port is not None
    r = httpx.get(f"http://127.0.0.1:{port}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _chat(port: int, key: str) -> None:
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
    ) as client:
        assert client.chat.completions.create(model="gpt-4o", messages=MSGS).choices  # type: ignore[arg-type]


def test_sighup_adds_a_key_and_removes_one(
    tmp_path: Path, mock_factory: Callable[..., MockLLMServer]
) -> None:
    tree = keyed_tree(mock_factory(), [ci_key()])
    tree.update({"port": 0, "admin": {"port": 0}, "state_dir": str(tmp_path / "state")})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    gw = GatewayProcess(["--config", str(cfg)], cwd=str(tmp_path))
    try:
        port = gw.wait_ready()
        _chat(port, CI_SECRET)
        with pytest.raises(openai.AuthenticationError):
            _chat(port, NEW_SECRET)

        new = {
            "name": "newcomer",
            "secret_sha256": hashlib.sha256(NEW_SECRET.encode()).hexdigest(),
            "team": "platform",
        }
        tree["auth"]["keys"] = [new]
        cfg.write_text(yaml.safe_dump(tree))
        gw.proc.send_signal(1)
        _wait_line(gw, "reload: config re-read")

        _chat(port, NEW_SECRET)
        with pytest.raises(openai.AuthenticationError) as err:
            _chat(port, CI_SECRET)
        assert err.value.status_code == 401

        doc = _get(gw.admin_port, "/v1/keys")
        assert [k["name"] for k in doc["keys"]] == ["newcomer"]
        assert [(t["name"], t["keys"]) for t in doc["teams"]] == [("platform", ["newcomer"])]
        wait_until(
            lambda: _get(gw.admin_port, "/v1/usage/stats", key="newcomer")["request_count"] == 1,
            what="the new key's record",
        )
        # What the removed key did before the reload is still its own.
        assert _get(gw.admin_port, "/v1/usage/stats", key="ci-bot")["request_count"] == 1
        team = _get(gw.admin_port, "/v1/usage/stats", team="platform")
        assert {k: v["request_count"] for k, v in team["by_key"].items()} == {
            "ci-bot": 1,
            "newcomer": 1,
        }
        doc = _get(gw.admin_port, "/v1/keys")
        assert doc["keys"][0]["spend"]["day"]["requests"] == 1
        # A team's spend is its requests', whichever of its keys made them.
        assert doc["teams"][0]["spend"]["day"]["requests"] == 2
    finally:
        assert gw.stop() == 0, "".join(gw.lines)


def test_with_two_workers_each_keys_requests_reach_the_store_as_its_own(
    tmp_path: Path, mock_factory: Callable[..., MockLLMServer]
) -> None:
    """``workers: 2``: the workers pack the records (names included) and the primary
    passes the frames to the recorder unread; many connections land on both workers."""
    from .e2e import ENV, NOTEBOOK_SECRET, PLAIN_SECRET, notebook_key

    tree = keyed_tree(mock_factory(), [ci_key(), notebook_key()])
    tree.update(
        {"port": 0, "admin": {"port": 0}, "workers": 2, "state_dir": str(tmp_path / "state")}
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    gw = GatewayProcess(["--config", str(cfg)], cwd=str(tmp_path), env=dict(ENV))
    try:
        port = gw.wait_ready()
        sent = {"ci-bot": 12, "notebook": 8, "(none)": 5}
        secrets = {"ci-bot": CI_SECRET, "notebook": NOTEBOOK_SECRET, "(none)": PLAIN_SECRET}
        for name, n in sent.items():
            for _ in range(n):  # a new connection each time: the kernel spreads them
                _chat(port, secrets[name])
        wait_until(
            lambda: _get(gw.admin_port, "/v1/usage/stats")["request_count"] == sum(sent.values()),
            what="every record",
        )
        stats = _get(gw.admin_port, "/v1/usage/stats")
        assert {k: v["request_count"] for k, v in stats["by_key"].items()} == sent
        assert {k: v["request_count"] for k, v in stats["by_team"].items()} == {
            "platform": 12,
            "research": 8,
            "(none)": 5,
        }
        doc = _get(gw.admin_port, "/v1/keys")
        assert [k["spend"]["day"]["requests"] for k in doc["keys"]] == [12, 8]
    finally:
        assert gw.stop() == 0, "".join(gw.lines)
