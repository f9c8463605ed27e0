"""Named keys as an operator writes them: accepted in their three secret forms, and every
mistake refused at load (and by ``fastproxy check-config``, exit status 2) with a line
naming the key. Unit tests of the rules (config/key_rules.py) and of the keyring
(core/keys.py) the data port looks keys up in."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastproxy.config import ConfigError, load_config
from fastproxy.config.key_rules import check_client_keys
from fastproxy.core.keys import ClientKey, key_digest, keyring_from_config

from .e2e import CI_SECRET, CI_SHA256, NOTEBOOK_ENV, NOTEBOOK_SECRET, PLAIN_SECRET

BACKENDS = {"openai.1": {"type": "openai", "api_url": "http://127.0.0.1:9"}}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("FASTPROXY", "USAGE_", "WIRE_"))
    }
    clean["XDG_CONFIG_HOME"] = "/nonexistent"
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


def _write(tmp_path: Path, auth: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"backends": BACKENDS, "auth": auth}))
    return str(path)


def _load(path: str, env: dict[str, str] | None = None) -> Any:
    return load_config(config_file=path, env=env or {}).config


GOOD = {
    "api_keys": [PLAIN_SECRET],
    "keys": [
        {"name": "ci-bot", "secret_sha256": CI_SHA256, "team": "platform", "models": ["gpt-4o*"]},
        {"name": "notebook", "secret_env": NOTEBOOK_ENV},
    ],
}


def test_a_key_by_digest_and_one_by_variable_are_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    config = _load(path, {NOTEBOOK_ENV: NOTEBOOK_SECRET})
    assert [k.name for k in config.auth.keys] == ["ci-bot", "notebook"]
    proc = _cli("check-config", "--config", path, env={NOTEBOOK_ENV: NOTEBOOK_SECRET})
    assert proc.returncode == 0, proc.stderr
    # check-config shows the effective values; the secret itself is in no value.
    assert CI_SECRET not in proc.stdout and NOTEBOOK_SECRET not in proc.stdout
    # Nor the digest, nor the plain list's key: each shows as *** (a digest is a
    # password hash: printed, it can be attacked offline).
    assert CI_SHA256 not in proc.stdout and PLAIN_SECRET not in proc.stdout
    assert "'secret_sha256': '***'" in proc.stdout


@pytest.mark.parametrize(
    ("keys", "env", "expected"),
    [
        (
            [{"name": "a", "secret_sha256": CI_SHA256}, {"name": "a", "secret_env": "V"}],
            {"V": "sk-other-secret"},
            "auth.keys[1].name: 'a' is already the name of auth.keys[0]",
        ),
        (
            [{"name": "both", "secret_sha256": CI_SHA256, "secret_env": "V"}],
            {"V": "sk-other-secret"},
            "auth.keys[0]: key 'both': set exactly one of secret_env, secret_sha256 or secret "
            "(got secret_env, secret_sha256)",
        ),
        (
            [{"name": "neither"}],
            {},
            "auth.keys[0]: key 'neither': set exactly one of secret_env, secret_sha256 or secret "
            "(got none)",
        ),
        (
            [{"name": "unset", "secret_env": "NOT_SET_ANYWHERE"}],
            {},
            "auth.keys[0].secret_env: key 'unset': the environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            [{"name": "badhash", "secret_sha256": CI_SHA256.upper()}],
            {},
            "auth.keys[0].secret_sha256: key 'badhash': expected 64 lowercase hex digits",
        ),
        (
            [{"name": "short", "secret_sha256": "abc123"}],
            {},
            "auth.keys[0].secret_sha256: key 'short': expected 64 lowercase hex digits",
        ),
        (
            [{"name": "plain", "secret": CI_SECRET}],
            {},
            "auth.keys[0].secret: key 'plain': a plain secret in the config file is refused",
        ),
        (
            [{"name": "bad name!", "secret_sha256": CI_SHA256}],
            {},
            "auth.keys[0].name: got 'bad name!'",
        ),
        (
            [
                {
                    "name": "legacy",
                    "secret_sha256": hashlib.sha256(PLAIN_SECRET.encode()).hexdigest(),
                }
            ],
            {},
            "auth.keys[0]: key 'legacy': the same secret as an entry of auth.api_keys",
        ),
    ],
    ids=[
        "duplicate-name",
        "two-secrets",
        "no-secret",
        "unset-env",
        "uppercase-hash",
        "short-hash",
        "plaintext",
        "bad-name",
        "same-as-plain",
    ],
)
def test_a_bad_key_is_refused_naming_it(
    tmp_path: Path, keys: list[dict[str, Any]], env: dict[str, str], expected: str
) -> None:
    path = _write(tmp_path, {"api_keys": [PLAIN_SECRET], "keys": keys})
    with pytest.raises(ConfigError) as err:
        _load(path, env)
    assert expected in str(err.value)
    proc = _cli("check-config", "--config", path, env=env)
    assert proc.returncode == 2, proc.stdout
    assert expected in proc.stderr
    for secret in (CI_SECRET, "sk-other-secret"):
        assert secret not in proc.stderr and secret not in str(err.value)


def test_a_plain_secret_is_accepted_only_when_allowed(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"allow_plaintext_secrets": True, "keys": [{"name": "dev", "secret": CI_SECRET}]},
    )
    config = _load(path)
    ring = keyring_from_config(config, {})
    assert ring is not None
    key = ring.identify(CI_SECRET.encode())
    assert key is not None and key.name == "dev" and key.key_id == CI_SHA256[:12]


def test_every_problem_is_said_at_once() -> None:
    config = load_config(
        {"port": 0},
        env={},
        use_files=False,
    ).config
    tree = {
        "keys": [
            {"name": "x", "secret_sha256": "nothex"},
            {"name": "x", "secret_env": "UNSET_VAR"},
            {"name": "y", "secret_sha256": CI_SHA256, "models": ["gpt-*", " "]},
        ]
    }
    import msgspec

    from fastproxy.config.schema import AuthConfig

    config = msgspec.structs.replace(config, auth=msgspec.convert(tree, AuthConfig))
    errors = check_client_keys(config, {})
    assert len(errors) == 4, errors
    assert errors[0].startswith("auth.keys[0].secret_sha256: key 'x': ")
    assert errors[1] == "auth.keys[1].name: 'x' is already the name of auth.keys[0]"
    assert errors[2].startswith(
        "auth.keys[1].secret_env: key 'x': the environment variable UNSET_VAR"
    )
    assert errors[3] == "auth.keys[2].models[1]: key 'y': an empty pattern"
    assert check_client_keys(config, {"UNSET_VAR": "sk-now-set"})[1:] == [
        errors[1],
        errors[3],
    ]


def test_client_key_globs() -> None:
    key = ClientKey("0123456789ab", "ci-bot", "platform", ("gpt-4o*", "claude-haiku-?-5"))
    assert key.allows("gpt-4o") and key.allows("gpt-4o-mini")
    assert key.allows("claude-haiku-4-5")
    assert not key.allows("gpt-4") and not key.allows("claude-haiku-4-50")
    assert not key.allows("my-gpt-4o")  # a glob matches the whole name
    assert key.allows(None)  # no model named: judged by the backend, as without keys
    anything = ClientKey("0123456789ab", "n", None)
    assert anything.allows("whatever") and "n" in repr(anything)


def test_the_keyring_finds_named_and_plain_keys_by_digest() -> None:
    config = msgspec_config(GOOD)
    ring = keyring_from_config(config, {NOTEBOOK_ENV: NOTEBOOK_SECRET})
    assert ring is not None and len(ring) == 3
    ci = ring.identify(CI_SECRET.encode())
    assert ci is not None and (ci.name, ci.team, ci.models) == ("ci-bot", "platform", ("gpt-4o*",))
    nb = ring.identify(NOTEBOOK_SECRET.encode())
    assert nb is not None and nb.name == "notebook" and nb.team is None
    plain = ring.identify(PLAIN_SECRET.encode())
    assert plain is not None and plain.name is None and plain.team is None
    assert plain.key_id == hashlib.sha256(PLAIN_SECRET.encode()).hexdigest()[:12]
    assert [k.name for k in ring.named] == ["ci-bot", "notebook"]
    assert ring.identify(CI_SHA256.encode()) is None  # the digest is not the key
    assert ring.identify(b"") is None and ring.identify(None) is None
    # A key whose variable is not set (here, not in this env) opens nothing.
    ring = keyring_from_config(config, {})
    assert ring is not None and len(ring) == 2 and ring.identify(NOTEBOOK_SECRET.encode()) is None
    assert key_digest(config.auth.keys[0], {}) == bytes.fromhex(CI_SHA256)


def test_a_key_seen_once_is_found_again_without_its_digest_and_only_keys_are_kept() -> None:
    """The keyring remembers what matched (a returning client costs a dict probe):
    the same key is found again, as the same identity; wrong keys are never kept, so a
    client guessing keys grows nothing; a key sent in endless new spellings is bounded."""
    ring = keyring_from_config(msgspec_config(GOOD), {NOTEBOOK_ENV: NOTEBOOK_SECRET})
    assert ring is not None
    first = ring.identify(CI_SECRET.encode())
    assert first is not None and ring.identify(CI_SECRET.encode()) is first
    for i in range(1000):
        assert ring.identify(b"sk-guess-%d" % i) is None
    assert len(ring._known) == 1
    for i in range(1000):
        ring.identify(PLAIN_SECRET.encode() + b"x" * (i % 3))  # only i % 3 == 0 matches
    assert 1 <= len(ring._known) <= ring._known_max


def test_no_keyring_without_keys_or_with_auth_disabled() -> None:
    assert keyring_from_config(msgspec_config({}), {}) is None
    assert keyring_from_config(msgspec_config({**GOOD, "disable_auth": True}), {}) is None
    only_plain = keyring_from_config(msgspec_config({"api_keys": [PLAIN_SECRET]}), {})
    assert only_plain is not None and only_plain.named == ()


def msgspec_config(auth: dict[str, Any]) -> Any:
    """A Config with this auth section, not checked by the loader (unit tests of the
    keyring itself)."""
    import msgspec

    from fastproxy.config.schema import AuthConfig

    config = load_config({"port": 0}, env={}, use_files=False).config
    return msgspec.structs.replace(config, auth=msgspec.convert(auth, AuthConfig))
