"""The policy keys as an operator writes them: load_balancing, model_aliases and groups
accepted from YAML (and by ``fastproxy check-config``, the docs' own examples included),
refused at load with one line naming each rule, and applied by a reload (SIGHUP) that
keeps the backends' stats and the sessions' bindings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastproxy.config import ConfigError, load_config
from fastproxy.dataplane.routing import Policy
from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
BACKENDS = {
    name: {"type": name.split(".")[0] if "." in name else "openai", "api_url": "http://127.0.0.1:9"}
    for name in ("openai.1", "openai.2", "anthropic.1", "local")
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FASTPROXY", "USAGE_", "WIRE_"))
    }
    env["XDG_CONFIG_HOME"] = "/nonexistent"
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _write(tmp_path: Path, tree: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"backends": BACKENDS, **tree}))
    return str(path)


def _doc_examples() -> list[str]:
    """The YAML blocks of docs/policy.md's "Load balancing" and "Model aliases and
    groups" sections that set a policy key."""
    text = DOCS.read_text()
    start = text.index("## Load balancing")
    end = text.index("## Rate limits")
    blocks = re.findall(r"```yaml\n(.*?)```", text[start:end], re.S)
    return [b for b in blocks if re.search(r"^(load_balancing|model_aliases|groups):", b, re.M)]


def test_docs_examples_pass_check_config(tmp_path: Path) -> None:
    examples = _doc_examples()
    assert len(examples) >= 2
    for i, block in enumerate(examples):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(yaml.safe_dump({"backends": BACKENDS}) + block)
        config = load_config(config_file=str(path), env={}).config
        assert Policy.configured(config)
        Policy(config)  # builds: resolver, balancers
        proc = _cli("check-config", "--config", str(path))
        assert proc.returncode == 0, proc.stderr


def test_nothing_configured_means_no_policy() -> None:
    config = load_config(env={}, use_files=False).config
    assert not Policy.configured(config)


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (
            {"model_aliases": [{"pattern": "^claude-(.*$", "target": r"anthropic.1:claude-\1"}]},
            "model_aliases[0].pattern: '^claude-(.*$' is not a valid regular expression",
        ),
        (
            {"model_aliases": [{"pattern": "(a)", "target": r"\2"}]},
            r"model_aliases[0].target: '\\2' is not a valid replacement",
        ),
        (
            {"groups": {"fast": {"members": [{"backend": "openai.9", "model": "m"}]}}},
            "groups.fast.members[0].backend: got 'openai.9'; configured: anthropic.1, local",
        ),
        (
            {
                "groups": {
                    "fast": {"strategy": "fastest", "members": [{"backend": "local", "model": "m"}]}
                }
            },
            "groups.fast.strategy: got 'fastest'",
        ),
        (
            {"groups": {"fast": {"members": []}}},
            "groups.fast.members: empty",
        ),
        (
            {"load_balancing": {"strategy": "round_robin"}},
            "load_balancing.strategy: got 'round_robin'; allowed: ordered, weighted",
        ),
        (
            {
                "load_balancing": {
                    "models": {"gpt-4o": {"strategy": "weighted", "weights": {"openai.9": 1}}}
                }
            },
            "load_balancing.models.gpt-4o.weights.openai.9: no such backend",
        ),
        (
            {"load_balancing": {"strategy": "weighted", "weights": {"openai.1": -1}}},
            "load_balancing.weights.openai.1: got -1.0; allowed: a number >= 0",
        ),
        (
            {"load_balancing": {"affinity": {"enabled": True, "idle_seconds": 0}}},
            "load_balancing.affinity.idle_seconds: got 0;",
        ),
        (
            {"load_balancing": {"stratgy": "weighted"}},
            "load_balancing.stratgy: unknown key",
        ),
    ],
)
def test_invalid_policy_is_refused_naming_the_rule(
    tmp_path: Path, tree: dict[str, Any], expected: str
) -> None:
    path = _write(tmp_path, tree)
    with pytest.raises(ConfigError) as err:
        load_config(config_file=path, env={})
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "model_aliases": [{"pattern": "(", "target": "x"}],
            "groups": {"g": {"members": [{"backend": "nope", "model": "m"}]}},
        },
    )
    with pytest.raises(ConfigError) as err:
        load_config(config_file=path, env={})
    message = str(err.value)
    assert "model_aliases[0].pattern" in message and "groups.g.members[0].backend" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (
            {"model_aliases": [{"pattern": "claude-(.*", "target": r"anthropic.1:claude-\1"}]},
            "model_aliases[0].pattern",
        ),
        (
            {"groups": {"fast": {"members": [{"backend": "openai.9", "model": "gpt-4o"}]}}},
            "groups.fast.members[0].backend: got 'openai.9'",
        ),
    ],
)
def test_invalid_policy_stops_start_up(tmp_path: Path, tree: dict[str, Any], expected: str) -> None:
    path = _write(tmp_path, {"port": 0, "admin": {"enabled": False}, **tree})
    for command in ("run", "check-config"):
        proc = _cli(command, "--config", path)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert expected in proc.stderr, (command, proc.stderr)


def test_reload_rebuilds_balancers_and_keeps_stats_and_affinity(
    gateway_factory: Callable[..., RunningGateway], mock_factory: Callable[..., MockLLMServer]
) -> None:
    a, b = mock_factory(), mock_factory()
    tree: dict[str, Any] = {
        "backends": {
            "openai.1": backend_for(a, "openai", models=["gpt-4o"]),
            "openai.2": backend_for(b, "openai", models=["gpt-4o"]),
        },
        "health_check": {"enabled": False},
        "usage_tracking": {"enabled": False},
        "load_balancing": {"strategy": "least_busy", "affinity": {"enabled": True}},
    }
    gw = gateway_factory(tree)
    plane = gw.plane
    policy = plane.policy
    assert policy is not None
    stats, affinity = policy.stats, policy.affinity
    gw.lt.call(lambda: stats.started("openai.2"))
    gw.lt.call(lambda: affinity.bind("gpt-4o", "sess", "openai.2"))

    path = gw.gateway.config.state_dir + "/config.yaml"
    tree["load_balancing"] = {
        "strategy": "weighted",
        "weights": {"openai.1": 1},
        "affinity": {"enabled": True},
    }
    tree["model_aliases"] = [{"pattern": "four-o", "target": "gpt-4o"}]
    Path(path).write_text(yaml.safe_dump(tree))
    assert gw.lt.run(gw.gateway.reload(load_config({}, config_file=path, env={})))
    new = plane.policy
    assert new is not None and new is not policy
    assert new.stats is stats and new.affinity is affinity
    assert stats.in_flight("openai.2") == 1
    assert new.resolver is not None and new.resolver.resolve("four-o").model == "gpt-4o"

    # A backend removed by a reload is forgotten; the policy keys removed: no policy.
    del tree["backends"]["openai.2"]
    del tree["load_balancing"]
    del tree["model_aliases"]
    Path(path).write_text(yaml.safe_dump(tree))
    assert gw.lt.run(gw.gateway.reload(load_config({}, config_file=path, env={})))
    assert plane.policy is None
    assert stats.in_flight("openai.2") == 0 and stats.latency("openai.2") is None


def test_a_groups_pool_is_built_once_per_backends_mapping() -> None:
    """Policy.plan keeps each group's candidates for the backends mapping it was given:
    a caller changing the list it got changes nothing, and a new mapping (a reload that
    removed a member) is planned afresh."""
    from fastproxy.httpclient.backend import Backend

    config = load_config(
        {
            "backends": {
                "openai.1": {"api_url": "http://127.0.0.1:9/v1"},
                "openai.2": {"api_url": "http://127.0.0.1:9/v1"},
            },
            "groups": {
                "fast": {
                    "members": [
                        {"backend": "openai.1", "model": "m1"},
                        {"backend": "openai.2", "model": "m2"},
                    ]
                }
            },
        },
        env={},
        use_files=False,
    ).config
    policy = Policy(config)
    backends = {n: Backend(n, b) for n, b in config.backends.items()}

    def planned(mapping: dict[str, Backend]) -> list[tuple[str, str]]:
        got, _ = policy.plan("fast", "openai", mapping, None, {}, None, None)
        names = [(b.name, m) for b, m in got]
        got.clear()  # the caller owns its list
        return names

    assert planned(backends) == [("openai.1", "m1"), ("openai.2", "m2")]
    assert planned(backends) == [("openai.1", "m1"), ("openai.2", "m2")]
    assert planned({"openai.2": backends["openai.2"]}) == [("openai.2", "m2")]
    # Routes are added to a copy, never to the kept pool.
    routed, _ = policy.plan("fast", "openai", backends, None, {"fast": ["openai.1:m9"]}, None, None)
    assert [(b.name, m) for b, m in routed][-1] == ("openai.1", "m9")
    assert planned(backends) == [("openai.1", "m1"), ("openai.2", "m2")]
