"""docs/keys.md's configuration example is a config `fastproxy check-config` accepts (with
its variable set) and refuses, naming the key, without it; its error lines are the ones
the loader prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fastproxy.config import ConfigError, load_config

from .test_config import _cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "keys.md"
BACKENDS = {"openai.1": {"type": "openai", "api_url": "http://127.0.0.1:9"}}


def _example() -> str:
    text = DOCS.read_text()
    start = text.index("## Configuration")
    (block,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", text[start:], re.S) if b.startswith("auth:")
    ][:1]
    return block


def test_the_configuration_example_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"backends": BACKENDS}) + _example())
    env = {"NOTEBOOK_API_KEY": "sk-notebook-from-the-environment"}
    config = load_config(config_file=str(path), env=env).config
    assert [k.name for k in config.auth.keys] == ["ci-bot", "notebook"]
    assert config.auth.api_keys == ("sk-legacy-shared-key",)
    ci = config.auth.keys[0]
    assert ci.limits is not None and ci.limits.rpm == 600
    assert ci.budget is not None and (ci.budget.usd, ci.budget.period) == (50, "month")
    assert set(config.auth.teams) == {"platform"}
    proc = _cli("check-config", "--config", str(path), env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _cli("check-config", "--config", str(path))
    assert proc.returncode == 2
    assert "auth.keys[1].secret_env: key 'notebook': the environment variable NOTEBOOK_API_KEY" in (
        proc.stderr
    )


def test_the_documented_error_lines_are_the_loaders(tmp_path: Path) -> None:
    lines = re.findall(r"^fastproxy: config error: (.+)$", DOCS.read_text(), re.M)
    sha = "28fc171d770a904bbc10a1af62ef5c55b48103ad639cfcd23e9573e1dd4f81ff"
    ci = {"name": "ci-bot", "secret_sha256": sha}
    cases: list[tuple[list[dict[str, str]], dict[str, str]]] = [
        ([ci, {"name": "ci-bot", "secret_env": "X"}], {"X": "sk-x"}),
        ([{**ci, "secret_env": "X"}], {"X": "sk-x"}),
        ([ci, {"name": "notebook", "secret_env": "NOTEBOOK_API_KEY"}], {}),
        ([{"name": "ci-bot", "secret_sha256": "0" * 63}], {}),
        ([{"name": "dev", "secret": "sk-dev-plain"}], {}),
    ]
    assert len(lines) == len(cases)
    for i, (line, (keys, env)) in enumerate(zip(lines, cases, strict=True)):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump({"backends": BACKENDS, "auth": {"keys": keys}}))
        with pytest.raises(ConfigError) as err:
            load_config(config_file=str(path), env=env)
        assert line in str(err.value), (line, str(err.value))
