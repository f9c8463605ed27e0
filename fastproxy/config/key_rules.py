"""The checks of named client keys, teams and rate limits (``auth.keys``, ``auth.teams``,
``rate_limits``; docs/policy.md).

Run at load, by ``check-config`` and on reload, so a key that could never authenticate
(its secret variable unset, a hash that is not a SHA-256) stops start-up with a line that
names it, rather than failing every request it makes. Messages name the key by its
position and its name, never a secret.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from .schema import Config

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_client_keys(config: Config, env: Mapping[str, str]) -> list[str]:
    """One line per problem; empty when the keys, teams and limits are sound."""
    auth = config.auth
    errors: list[str] = []
    seen: dict[str, int] = {}
    secrets: dict[str, str] = {}
    plain = {_sha256(k) for k in (*auth.api_keys, *config.admin.api_keys)}
    for i, key in enumerate(auth.keys):
        where = f"auth.keys[{i}]"
        if not _NAME.match(key.name):
            errors.append(
                f"{where}.name: got {key.name!r}; expected 1-64 letters, digits or ._@- "
                "(it is stored with every request and used in URLs)"
            )
        elif key.name in seen:
            errors.append(
                f"{where}.name: {key.name!r} is already the name of auth.keys[{seen[key.name]}]"
            )
        else:
            seen[key.name] = i
        # The key's name after the colon: what comes before it is always a path in the
        # config tree (tests/reliability/test_fuzz_config.py holds every message to that).
        who = f"key {key.name!r}: "
        given = [
            n
            for n, v in (
                ("secret_env", key.secret_env),
                ("secret_sha256", key.secret_sha256),
                ("secret", key.secret),
            )
            if v is not None
        ]
        if len(given) != 1:
            errors.append(
                f"{where}: {who}set exactly one of secret_env, secret_sha256 or secret "
                f"(got {', '.join(given) or 'none'})"
            )
        digest: str | None = None
        if key.secret_env is not None:
            value = env.get(key.secret_env)
            if not value:
                errors.append(
                    f"{where}.secret_env: {who}the environment variable {key.secret_env} is not "
                    "set; the key could never authenticate"
                )
            else:
                digest = _sha256(value)
        if key.secret_sha256 is not None:
            if not _SHA256.match(key.secret_sha256):
                errors.append(
                    f"{where}.secret_sha256: {who}expected 64 lowercase hex digits "
                    '(printf %s "$KEY" | sha256sum)'
                )
            else:
                digest = key.secret_sha256
        if key.secret is not None:
            if not auth.allow_plaintext_secrets:
                errors.append(
                    f"{where}.secret: {who}a plain secret in the config file is refused; use "
                    "secret_env or secret_sha256 (or set auth.allow_plaintext_secrets)"
                )
            else:
                digest = _sha256(key.secret)
        if digest is not None:
            if digest in plain:
                errors.append(
                    f"{where}: {who}the same secret as an entry of auth.api_keys or admin.api_keys"
                )
            elif digest in secrets:
                errors.append(f"{where}: {who}the same secret as {secrets[digest]}")
            else:
                secrets[digest] = where
        for j, pattern in enumerate(key.models):
            if not pattern.strip():
                errors.append(f"{where}.models[{j}]: {who}an empty pattern")
        if key.limits is not None and key.limits.rpm is None and key.limits.tpm is None:
            errors.append(f"{where}.limits: {who}set rpm, tpm or both (or remove limits)")
    for name, team in auth.teams.items():
        if not _NAME.match(name):
            errors.append(f"auth.teams.{name}: expected 1-64 letters, digits or ._@-")
        if team.budget is None:
            errors.append(f"auth.teams.{name}: nothing set (a team holds a budget)")
    for model, limit in config.rate_limits.models.items():
        if not model.strip():
            errors.append("rate_limits.models: an empty model name")
        if limit.rpm is None and limit.tpm is None:
            errors.append(f"rate_limits.models.{model}: set rpm, tpm or both")
    return errors
