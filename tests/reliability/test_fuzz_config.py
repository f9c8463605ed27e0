"""Fuzz: any config tree gives a valid Config or one `ConfigError` naming the key.

The loader's promise (fastproxy/config/loader.py): every failure is a `ConfigError`
whose message is one line naming the key, the bad value and what is allowed. Trees are
generated from the schema itself (``msgspec.inspect`` over `Config`, so a key added
later is fuzzed too): each chosen key gets a value of its declared type, often in range,
sometimes at or past a bound, sometimes of another type altogether; sections get unknown
and misspelt keys, and some keys are not strings. The tree is written as YAML and loaded
through ``load_config(config_file=...)`` exactly as the gateway does, and env/CLI strings
go through the same function. The properties:

* never an exception other than `ConfigError`;
* the message is one line and starts with a key the user wrote (its path through the
  tree, backend names with dots included), or with the env var / flag that set it;
* secrets in the tree (``api_key``, ``auth.api_keys``, ``webhook_url``) never appear
  in the message: the CLI prints it, and the journal keeps it;
* a tree whose every value is of its declared type and in range loads (a cross-field
  rule aside, whose message then names one of the keys involved).

Bounded in CI; ``HYPOTHESIS_PROFILE=long`` runs it longer.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from msgspec import inspect as mi

from fastproxy.config import CLI_FLAGS, ENV_VARS, Config, ConfigError, load_config

from .fuzz_settings import fuzz

# --------------------------------------------------------------------------------------
# values by declared type

any_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 1, 1)),
)
any_value = st.recursive(
    any_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@dataclass
class Built:
    """A generated tree and what the generator knows about it."""

    tree: dict[Any, Any] = field(default_factory=dict)
    suspect: bool = False  # some value was drawn outside its declared type or range
    secrets: list[str] = field(default_factory=list)
    valid_only: bool = False  # draw only well-typed, in-range values and known keys


def _number_ok(t: Any, v: float) -> bool:
    return (
        (t.gt is None or v > t.gt)
        and (t.ge is None or v >= t.ge)
        and (t.lt is None or v < t.lt)
        and (t.le is None or v <= t.le)
    )


def _bounds(t: Any) -> list[float]:
    return [b for b in (t.gt, t.ge, t.lt, t.le) if b is not None]


def value_for(draw: st.DrawFn, t: Any, built: Built, secret: bool = False) -> Any:
    """A value for type ``t``: usually valid, sometimes not (then ``built.suspect``)."""
    if not built.valid_only and draw(st.integers(0, 9)) == 0:
        built.suspect = True
        return draw(any_value)
    if isinstance(t, mi.UnionType):
        return value_for(draw, draw(st.sampled_from(t.types)), built, secret)
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.BoolType):
        return draw(st.booleans())
    if isinstance(t, mi.LiteralType):
        if not built.valid_only and draw(st.integers(0, 5)) == 0:
            built.suspect = True
            return draw(st.sampled_from([str(v).lower() for v in t.values] + ["", "x"]))
        return draw(st.sampled_from(t.values))
    if isinstance(t, mi.IntType | mi.FloatType):
        edges = [e + d for e in _bounds(t) for d in (-1, 0, 1)]
        if isinstance(t, mi.IntType):
            v: float = draw(st.one_of(st.sampled_from(edges or [0]), st.integers(-10, 10**6)))
            v = int(v)
        else:
            v = draw(
                st.one_of(
                    st.sampled_from(edges or [0.0]),
                    st.floats(-10, 1e6),
                    st.sampled_from([math.inf, 1e-300, 0.5]),
                )
            )
        if not _number_ok(t, v):
            if built.valid_only:
                return next(e for e in edges if _number_ok(t, e)) if edges else 0
            built.suspect = True
        return v
    if isinstance(t, mi.StrType):
        value = draw(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
        )
        if secret:
            value = "sk-secret-" + value
            built.secrets.append(value)
        return value
    if isinstance(t, mi.VarTupleType | mi.ListType):
        return [value_for(draw, t.item_type, built, secret) for _ in range(draw(st.integers(0, 2)))]
    if isinstance(t, mi.DictType):
        keys = draw(
            st.lists(
                st.text(alphabet="abcdefgh.-_0123456789", min_size=1, max_size=8),
                max_size=2,
                unique=True,
            )
        )
        return {k: value_for(draw, t.value_type, built) for k in keys}
    if isinstance(t, mi.StructType):
        return section(draw, t, built)
    built.suspect = True
    return draw(any_value)


SECRET_FIELDS = {"api_key", "api_keys", "webhook_url"}
# Keys the loader itself accepts (names, not struct fields) in a backend section.
_PLAIN_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
_ODD_KEY = st.one_of(
    st.integers(-5, 5),
    st.text(max_size=6),
    st.sampled_from(["a\nb", "a`b", "port ", " port", "x: y", "$", "[0]", "a.b"]),
)


def section(draw: st.DrawFn, t: Any, built: Built) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    fields = list(t.fields)
    chosen = (
        draw(
            st.lists(
                st.sampled_from(fields), max_size=min(4, len(fields)), unique_by=lambda f: f.name
            )
        )
        if fields
        else []
    )
    for f in fields:
        if f.required and f not in chosen:
            if not built.valid_only and draw(st.integers(0, 7)) == 0:
                built.suspect = True  # a required key left out
                continue
            chosen.append(f)
    for f in chosen:
        out[f.name] = value_for(draw, f.type, built, secret=f.name in SECRET_FIELDS)
    extra = 99 if built.valid_only else draw(st.integers(0, 12))
    if extra == 0:  # a misspelt key
        if fields:
            built.suspect = True
            out[draw(st.sampled_from(fields)).name + draw(st.sampled_from(["s", "_", "x"]))] = 1
    elif extra == 1:  # an unknown key, plain or odd
        built.suspect = True
        out[draw(st.one_of(_PLAIN_KEY, _ODD_KEY))] = draw(any_scalar)
    return out


CONFIG_TYPE = mi.type_info(Config)
BACKEND_TYPE = (
    mi.type_info(Config)
    .fields[[f.name for f in CONFIG_TYPE.fields].index("backends")]
    .type.value_type
)


@st.composite
def config_trees(draw: st.DrawFn, valid_only: bool = False) -> Built:
    built = Built(valid_only=valid_only)
    tree = section(draw, CONFIG_TYPE, built)
    # Backends named as users name them (openai.1, anthropic.eu), each a real section.
    if draw(st.booleans()):
        names = draw(
            st.lists(
                st.sampled_from(["openai.1", "anthropic.1", "openai.eu", "local"]),
                max_size=2,
                unique=True,
            )
        )
        backends: dict[Any, Any] = {}
        for name in names:
            body = section(draw, BACKEND_TYPE, built)
            if "api_url" in body and draw(st.booleans()):
                body["api_url"] = draw(
                    st.sampled_from(["http://127.0.0.1:9", "https://api.example"])
                )
            backends[name] = body
        tree["backends"] = backends
    tree.pop("state_dir", None)
    tree.pop("workers", None) if draw(st.booleans()) else None
    built.tree = tree
    return built


# --------------------------------------------------------------------------------------
# the checks


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as d:
        yield Path(d)


def load_tree(workdir: Path, tree: Any) -> tuple[Config | ConfigError, Any]:
    """Load ``tree`` as a YAML file; also return the tree as YAML gives it back (a key with
    a line-break character, say, does not survive the round trip unchanged)."""
    path = workdir / "config.yaml"
    text = yaml.safe_dump(tree, allow_unicode=True)
    path.write_text(text)
    seen = yaml.safe_load(text)
    try:
        return load_config(None, config_file=str(path), env={}, use_files=False).config, seen
    except ConfigError as err:
        return err, seen


def _schema_names(t: Any, out: set[str]) -> set[str]:
    if isinstance(t, mi.StructType):
        for f in t.fields:
            out.add(f.name)
            _schema_names(f.type, out)
    elif isinstance(t, mi.UnionType):
        for u in t.types:
            _schema_names(u, out)
    elif isinstance(t, mi.DictType):
        _schema_names(t.value_type, out)
    elif isinstance(t, mi.VarTupleType | mi.ListType):
        _schema_names(t.item_type, out)
    return out


SCHEMA_NAMES = _schema_names(mi.type_info(Config), set())
_LIST_INDEX = re.compile(r"\[(\d+)\]")


def resolves(key: str, node: Any) -> bool:
    """Does ``key`` (dots, ``[i]`` list indexes, msgspec's ``[..]`` for "some dict
    value"; backend names may hold dots) walk a path the user wrote? The last step may
    name a schema key the user left out (a required or an empty key is reported so)."""
    rest = key[1:] if key.startswith(".") else key  # one separator, not a name's own dot
    if not rest:
        return True
    if isinstance(node, dict):
        # Longest key first ("openai.1" over "openai"); a key may look like "[0]" too.
        for k in sorted(node, key=lambda k: -len(str(k))):
            for ks in _spellings(k):
                tail = rest[len(ks) :]
                # The key, then a separator (merged into a name's own trailing dot when
                # a message collapses a run of dots), a list index, or nothing.
                named = rest.startswith(ks) and (not tail or tail[0] in ".[" or ks.endswith("."))
                if named and resolves(tail, node[k]):
                    return True
        if rest.startswith("[..]"):
            return any(resolves(rest[4:], v) for v in node.values())
        return rest in SCHEMA_NAMES  # a missing key, named by its schema name
    m = _LIST_INDEX.match(rest)
    if m and isinstance(node, list):
        i = int(m.group(1))
        return i < len(node) and resolves(rest[m.end() :], node[i])
    return False


def _spellings(key: Any) -> set[str]:
    """How a message may show a key: as is, or escaped/quoted to keep it on one line."""
    text = str(key)
    escaped = text.encode("unicode_escape").decode("ascii")
    # Only the unprintable characters escaped (a backslash left as it is).
    unprintable = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
    # Leading/trailing dots are lost where a message joins a path with dots; accepted.
    forms = {text, escaped, unprintable, repr(text), repr(text)[1:-1], ascii(text)[1:-1]}
    # Dots at a name's ends may merge with the path's own separators in a message.
    return forms | {re.sub(r"\.{2,}", ".", f) for f in forms} | {f.strip(".") for f in forms}


def _unquote(key: str) -> str:
    if len(key) > 1 and key[0] == key[-1] and key[0] in "'\"":
        return key[1:-1]
    return key


def check_error(err: ConfigError, tree: Any, secrets: list[str]) -> None:
    message = str(err)
    assert message and "\n" not in message, f"not one line: {message!r}"
    for secret in secrets:
        assert secret not in message, f"a secret in the message: {message!r}"
    if message.startswith("config file "):  # YAML-level problems name the file and line
        return
    # The key ends at a ": " (a key may itself hold one, so every such point is tried).
    starts = [m.start() for m in re.finditer(": ", message)]
    assert any(resolves(_unquote(message[:i]), tree) for i in starts), (
        f"the message does not name a key of the tree: {message!r}\n tree: {tree!r}"
    )


@fuzz(ci=300)
@given(built=config_trees())
@example(built=Built({"admin": {5: 1}})).via("a non-string key in a section")
@example(built=Built({"a\nb": 1}, True)).via("an unknown key with a newline")
@example(
    built=Built(
        {"backends": {"openai.1": {"api_url": "http://x", "api_key": "sk-secret-1", 7: 1}}},
        True,
        ["sk-secret-1"],
    )
).via("a non-string key beside a backend's api_key")
@example(built=Built({"auth": {"api_keys": "sk-secret-2"}}, True, ["sk-secret-2"])).via(
    "api_keys given as a string"
)
@example(
    built=Built({"backends": {"openai.1": {"api_key": "sk-secret-3"}}}, True, ["sk-secret-3"])
).via("a backend without its api_url")
@example(built=Built({"backends": {"0..": {"type": []}}}, True)).via(
    "a backend name ending in dots"
)
def test_tree_loads_or_fails_with_one_line_naming_the_key(workdir: Path, built: Built) -> None:
    config, seen = load_tree(workdir, built.tree)
    if isinstance(config, ConfigError):
        check_error(config, seen, built.secrets)
        return
    assert isinstance(config, Config)
    msgspec.to_builtins(config)  # a complete, encodable tree (check-config prints it)


@fuzz(ci=150)
@given(built=config_trees(valid_only=True))
def test_in_range_values_of_the_right_type_load(workdir: Path, built: Built) -> None:
    config, seen = load_tree(workdir, built.tree)
    # The generator's promise, checked against the schema itself: every value is of its
    # declared type and in range, so the loader has no type or range to refuse.
    schema_ok = msgspec.convert({k: v for k, v in seen.items() if k != "backends"}, Config)
    assert isinstance(schema_ok, Config)
    if isinstance(config, ConfigError):
        # Only a rule across keys can refuse such a tree (a default_backend that is not
        # configured, an api_url that is not http(s), a non-loopback host without keys,
        # ...): it must still be one line naming a key, and no secret.
        check_error(config, seen, built.secrets)
        assert "unknown key" not in str(config), config
    else:
        assert isinstance(config, Config)


# --------------------------------------------------------------------------------------
# YAML text and env/CLI strings


yaml_texts = st.one_of(
    st.text(max_size=80),
    st.builds(lambda n, c: c * n, st.integers(1, 200), st.sampled_from(["[", "{", "- ", "a: "])),
    st.sampled_from(
        [
            "",
            "---",
            "[]",
            "5",
            "null",
            "- a\n- b",
            "a: [",
            "a: {b: c",
            "\t",
            "key: &x [*x]",
            "!!python/object:os.system {}",
            "a: !!binary AAAA",
        ]
    ),
)


@fuzz(ci=100)
@given(text=yaml_texts)
@example(text="[" * 3000).via("deeply nested flow sequences")
def test_any_yaml_text_loads_or_fails_with_a_config_error(workdir: Path, text: str) -> None:
    path = workdir / "config.yaml"
    path.write_text(text)
    try:
        load_config(None, config_file=str(path), env={}, use_files=False)
    except ConfigError as err:
        assert "\n" not in str(err), str(err)


env_strings = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "1e3",
            "inf",
            "nan",
            "70000",
            "true",
            "off",
            "[]",
            "{}",
            "[{}]",
            '[{"from_pattern": 1}]',
            "INFO",
            "debug",
            "0.5",
            "2",
            "a,b,,c",
        ]
    ),
)


@fuzz(ci=200)
@given(
    values=st.dictionaries(st.sampled_from(sorted(ENV_VARS)), env_strings, min_size=1, max_size=3)
)
def test_env_strings_load_or_name_the_variable(values: dict[str, str]) -> None:
    try:
        load_config(None, env=values, use_files=False)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message, message
        named = [v for v in values if v in message] + [
            ENV_VARS[v][0] for v in values if message.startswith(ENV_VARS[v][0].split(".")[0])
        ]
        assert named, f"names neither a variable nor its key: {message!r} ({values})"


FLAG_KEYS = sorted({f.key for f in CLI_FLAGS if f.action == "value"})


@fuzz(ci=200)
@given(values=st.dictionaries(st.sampled_from(FLAG_KEYS), env_strings, min_size=1, max_size=3))
def test_flag_strings_load_or_name_the_flag(values: dict[str, str]) -> None:
    flags = {f.key: f.flag for f in CLI_FLAGS}
    try:
        load_config(values, env={}, use_files=False)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message, message
        named = [k for k in values if flags[k] in message or message.startswith(k.split(".")[0])]
        assert named, f"names neither a flag nor its key: {message!r} ({values})"
