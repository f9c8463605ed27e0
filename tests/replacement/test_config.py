"""Invalid replacement settings stop start-up: ``fastproxy run`` as an operator runs it,
exit status 2 and one line on stderr naming the rule (its key and the rule itself) and
where it came from (flag, env var or the YAML file). Each case says its bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BACKENDS = {
    "openai.1": {"type": "openai", "api_url": "http://127.0.0.1:9/v1", "models": ["gpt-4o"]},
    "openai.2": {"type": "openai", "api_url": "http://127.0.0.1:9/v1", "models": ["mini"]},
}


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None, rep: object = None) -> str:
    """``fastproxy run`` with a config of two backends (and ``rep`` as its replacement
    section); asserts it refuses to start with status 2 and returns its stderr line."""
    tree: dict[str, object] = {"port": 0, "admin": {"port": 0}, "backends": BACKENDS}
    if rep is not None:
        tree["replacement"] = rep
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FASTPROXY", "USAGE_", "WIRE_", "REPLACEMENT_"))
    }
    full_env["XDG_CONFIG_HOME"] = "/nonexistent"
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "fastproxy", "run", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "listening" not in proc.stdout + proc.stderr
    return lines[0]


def test_cli_rule_with_unknown_backend(tmp_path: Path) -> None:
    # Bad input: the second --random-model-replacement-from-to names backend "nope".
    line = run(
        tmp_path,
        "--enable-replacement",
        "--random-model-replacement-from-to",
        "gpt-4o=openai.2:mini",
        "--random-model-replacement-from-to",
        "claude=nope:mini",
    )
    assert line.startswith("fastproxy: config error: replacement.replacement_rules[1].to_backend")
    assert "'claude' -> nope:mini" in line
    assert "flag --random-model-replacement-from-to" in line
    assert "['openai.1', 'openai.2']" in line


def test_cli_rule_not_from_equals_backend_colon_model(tmp_path: Path) -> None:
    # Bad input: "gpt-4o-mini" has no "=BACKEND:MODEL" part.
    line = run(tmp_path, "--random-model-replacement-from-to", "gpt-4o-mini")
    assert "--random-model-replacement-from-to" in line and "'gpt-4o-mini'" in line
    assert "FROM=BACKEND:MODEL" in line


def test_cli_probability_outside_0_1(tmp_path: Path) -> None:
    # Bad input: --replacement-probability 1.5.
    line = run(tmp_path, "--replacement-probability", "1.5")
    assert "replacement.probability" in line and "1.5" in line and "<= 1.0" in line


def test_cli_turn_count_below_one(tmp_path: Path) -> None:
    # Bad input: --replacement-turn-count 0.
    line = run(tmp_path, "--replacement-turn-count", "0")
    assert "replacement.turn_count" in line and ">= 1" in line


@pytest.mark.parametrize(
    ("rules", "fragments"),
    [
        # Bad input: not JSON at all (a trailing comma).
        ('[{"from_pattern": "gpt-4o",}]', ["REPLACEMENT_RULES", "not valid JSON"]),
        # Bad input: the first rule has no to_model.
        (
            '[{"from_pattern": "gpt-4o", "to_backend": "openai.2"}]',
            ["replacement.replacement_rules[0].to_model", "missing"],
        ),
        # Bad input: an empty from_pattern (it would match every model, a typo as "*").
        (
            '[{"from_pattern": "", "to_backend": "openai.2", "to_model": "mini"}]',
            ["replacement.replacement_rules[0].from_pattern", "env REPLACEMENT_RULES"],
        ),
        # Bad input: the second rule's target backend is not configured.
        (
            '[{"from_pattern": "*", "to_backend": "openai.2", "to_model": "mini"},'
            ' {"from_pattern": "x", "to_backend": "gone", "to_model": "m"}]',
            ["replacement.replacement_rules[1].to_backend", "'x' -> gone:m", "REPLACEMENT_RULES"],
        ),
    ],
)
def test_env_json_rules(tmp_path: Path, rules: str, fragments: list[str]) -> None:
    line = run(tmp_path, env={"REPLACEMENT_ENABLED": "true", "REPLACEMENT_RULES": rules})
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_env_probability_outside_0_1(tmp_path: Path) -> None:
    # Bad input: REPLACEMENT_PROBABILITY=-0.1.
    line = run(tmp_path, env={"REPLACEMENT_PROBABILITY": "-0.1"})
    assert "replacement.probability" in line and ">= 0.0" in line


@pytest.mark.parametrize(
    ("rep", "fragments"),
    [
        # Bad input: the YAML rule targets backend "openai.3", which is not configured.
        (
            {
                "enabled": True,
                "replacement_rules": [
                    {"from_pattern": "gpt-4o", "to_backend": "openai.3", "to_model": "mini"}
                ],
            },
            ["replacement.replacement_rules[0].to_backend", "'gpt-4o' -> openai.3:mini"],
        ),
        # Bad input: enabled with no rule (it would do nothing).
        ({"enabled": True}, ["replacement.enabled", "no rule"]),
        # Bad input: turn_count 0 in the file.
        ({"turn_count": 0}, ["replacement.turn_count", ">= 1"]),
        # Bad input: a rule field misspelt (to_modle).
        (
            {
                "replacement_rules": [
                    {"from_pattern": "gpt", "to_backend": "openai.2", "to_modle": "mini"}
                ]
            },
            ["replacement.replacement_rules[0].to_modle", "unknown key"],
        ),
    ],
)
def test_yaml_rules(tmp_path: Path, rep: object, fragments: list[str]) -> None:
    line = run(tmp_path, rep=rep)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
