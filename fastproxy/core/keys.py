"""Client keys: which key a request holds, and what that key may do.

Two kinds of key open the data port. The plain ``auth.api_keys`` list (anonymous: a
request is known only by its key's short digest) and named keys (``auth.keys``), which
carry a name and a team into every usage record, and may restrict the models they ask for
(limits and budgets hang on the same names).

Lookup is by the SHA-256 of what the client presented, in a dict: one digest and one
hash-table probe per request whatever the number of keys (a gateway with hundreds of
named keys must not compare the secret against each). A dict probe does not run in
constant time, but what its timing could tell is about the *digest* of the presented
key, and learning digest bits does not help to find a key: the secret itself is never
compared byte by byte. Named keys may therefore be configured by their digest alone
(``secret_sha256``), so the config file holds no secret.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping

from ..config.schema import ClientKeyConfig, Config

__all__ = ["ClientKey", "Keyring", "key_digest", "keyring_from_config"]


class ClientKey:
    """One key's identity, shared by every request that presents it."""

    __slots__ = ("_models", "key_id", "models", "name", "team")

    def __init__(
        self, key_id: str, name: str | None, team: str | None, models: tuple[str, ...] = ()
    ) -> None:
        self.key_id = key_id  # the digest's first 12 hex digits: safe to store and log
        self.name = name
        self.team = team
        self.models = models
        # One compiled alternation of the globs: one regex call per request.
        self._models = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in models)) if models else None
        )

    def allows(self, model: str | None) -> bool:
        """Whether this key may ask for ``model`` (a request naming no model is judged
        by the backend, as without keys)."""
        if self._models is None or model is None:
            return True
        return self._models.match(model) is not None

    def __repr__(self) -> str:
        return f"ClientKey({self.name or self.key_id!r}, team={self.team!r})"


class Keyring:
    """The keys that open the data port, by the SHA-256 digest of their secret."""

    __slots__ = ("_by_digest", "_known", "_known_max", "named")

    def __init__(self, by_digest: Mapping[bytes, ClientKey]) -> None:
        self._by_digest = dict(by_digest)
        self.named: tuple[ClientKey, ...] = tuple(
            k for k in self._by_digest.values() if k.name is not None
        )
        # Keys already seen, by what the client sent: a returning client (every request
        # but a key's first) costs one dict probe, not a SHA-256. Only keys that matched
        # are kept, so the map is as large as the keys in use; the bound is for a key
        # sent in ever new spellings. The probe hashes with the interpreter's keyed
        # SipHash and compares bytes only on a full hash match, so its timing says
        # nothing an attacker can steer toward a secret.
        self._known: dict[bytes, ClientKey] = {}
        self._known_max = 4 * len(self._by_digest) + 64

    def identify(self, given: bytes | None) -> ClientKey | None:
        """The key ``given`` is (a header's raw value), or None."""
        if not given:
            return None
        key = self._known.get(given)
        if key is not None:
            return key
        key = self._by_digest.get(hashlib.sha256(given).digest())
        if key is not None:
            known = self._known
            if len(known) >= self._known_max:
                known.clear()
            known[given] = key
        return key

    def __len__(self) -> int:
        return len(self._by_digest)


def _entry(digest: bytes, name: str | None, team: str | None, models: tuple[str, ...]) -> ClientKey:
    return ClientKey(digest.hex()[:12], name, team, models)


def key_digest(key: ClientKeyConfig, env: Mapping[str, str]) -> bytes | None:
    """The SHA-256 digest of a named key's secret, or None when it has none (its
    variable is unset: the loader refuses that, but a caller may hold an unchecked config)."""
    if key.secret_sha256 is not None:
        try:
            return bytes.fromhex(key.secret_sha256)
        except ValueError:
            return None
    secret = key.secret if key.secret is not None else env.get(key.secret_env or "", "")
    if not secret:
        return None
    return hashlib.sha256(secret.encode()).digest()


def keyring_from_config(config: Config, env: Mapping[str, str]) -> Keyring | None:
    """The keyring the data port checks, or None when no key is required (no keys
    configured, or ``auth.disable_auth``). Named keys' secrets are read from ``env`` now;
    the loader has already refused a key whose variable is unset."""
    auth = config.auth
    if auth.disable_auth or (not auth.api_keys and not auth.keys):
        return None
    by_digest: dict[bytes, ClientKey] = {}
    for key in auth.keys:
        digest = key_digest(key, env)
        if digest is None:
            continue
        by_digest[digest] = _entry(digest, key.name, key.team, key.models)
    for plain in auth.api_keys:
        digest = hashlib.sha256(plain.encode()).digest()
        by_digest.setdefault(digest, _entry(digest, None, None, ()))
    return Keyring(by_digest)
