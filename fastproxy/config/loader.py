"""Build the one frozen `Config`: built-in defaults < YAML file < environment < CLI flags.

The layers are merged as plain dicts, each leaf remembering which layer set it, and the
result is converted to the frozen struct tree in one step, so a value is validated the
same way whichever layer it came from. Env and CLI values arrive as strings and are
coerced by the declared type of the key they set; a YAML value is never coerced (a string
where a number belongs in the file is an error, as users expect).

Every failure is a `ConfigError` whose message is one line naming the key, the bad value
and what is allowed; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import ast
import importlib.util
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
import yaml

from .key_rules import check_client_keys
from .policy_rules import validate_aliases, validate_balancing, validate_groups
from .schema import BackendConfig, Config, otel_pairs
from .sources import CLI_FLAGS, ENV_VARS

_MISSING = object()


class ConfigError(Exception):
    """A configuration problem; ``str(err)`` is the one-line message for the user.

    One line whatever the file holds: a key or value with a line break or another
    control character is shown escaped (a YAML key can hold anything)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        if not message.isprintable():
            message = "".join(
                c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                for c in message
            )
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The config plus where each leaf value came from (for ``check-config``)."""

    config: Config
    file: str | None
    origins: Mapping[str, str] = field(default_factory=dict)
    # What it was built from, so a reload (SIGHUP) can build it again the same way.
    cli: Mapping[str, Any] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        return self.origins.get(key, "default")

    def reread(self, env: Mapping[str, str] | None = None) -> LoadedConfig:
        """The config built again: the same file (as found at start-up, not looked for
        again), the environment and the same command-line flags. Raises ConfigError
        like `load_config` for a file that no longer reads or validates."""
        return load_config(self.cli, config_file=self.file, env=env, use_files=False)


# ---------------------------------------------------------------------------------------
# file discovery


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """``--config`` > ``$FASTPROXY_CONFIG`` > XDG > ``/etc/fastproxy/config.yaml``."""
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"--config: file {explicit!r} does not exist")
        return explicit
    from_env = env.get("FASTPROXY_CONFIG")
    if from_env:
        if not Path(from_env).is_file():
            raise ConfigError(f"FASTPROXY_CONFIG: file {from_env!r} does not exist")
        return from_env
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    for candidate in (Path(xdg) / "fastproxy" / "config.yaml", Path("/etc/fastproxy/config.yaml")):
        if candidate.is_file():
            return str(candidate)
    return None


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path!r}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config file {path!r}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path!r}:{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r}: top level must be a mapping of keys")
    return data


# ---------------------------------------------------------------------------------------
# typed coercion of env / CLI strings


def _leaf_type(key: str) -> Any:
    """The declared type of a dotted key, e.g. ``health_check.ping.interval_seconds``."""
    struct: Any = Config
    tp: Any = None
    for part in key.split("."):
        hints = typing.get_type_hints(struct, include_extras=True)
        tp = hints[part]
        struct = _strip(tp)
    return tp


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(source: str, key: str, raw: str, kind: str) -> Any:
    if kind == "bool":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{source}: {raw!r} is not a boolean (use 1/0, true/false)")
    if kind == "csv":
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind == "json":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{source}: value is not valid JSON ({exc})") from exc
    if kind == "path":
        return raw
    base = _strip(_leaf_type(key))
    if key == "workers" and raw.strip().lower() == "auto":
        return "auto"  # the number of usable cores, decided in load_config
    try:
        if base is bool:
            return _coerce(source, key, raw, "bool")
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
    except ValueError:
        allowed = "an integer" if base is int else "a number"
        raise ConfigError(f"{source}: {raw!r} is not {allowed} (sets {key})") from None
    return raw


# ---------------------------------------------------------------------------------------
# merging with provenance


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("pricing", "extra_headers"):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_replacement_rule(text: str) -> dict[str, str]:
    """``FROM=BACKEND:MODEL`` as given to ``--random-model-replacement-from-to``."""
    src, sep, dst = text.partition("=")
    backend, sep2, model = dst.partition(":")
    if not sep or not sep2 or not src or not backend or not model:
        raise ConfigError(f"--random-model-replacement-from-to: {text!r} is not FROM=BACKEND:MODEL")
    return {"from_pattern": src, "to_backend": backend, "to_model": model}


def load_config(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    use_files: bool = True,
) -> LoadedConfig:
    """Build the effective config.

    ``cli`` maps dotted keys to values already parsed by argparse (see ``cli.py``);
    ``env`` defaults to ``os.environ``; ``use_files=False`` skips file discovery (tests).
    """
    env = os.environ if env is None else env
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}

    path = find_config_file(config_file, env) if (use_files or config_file) else None
    if path is not None:
        file_tree = _read_yaml(path)
        tree.update(file_tree)
        for key in _flatten(file_tree):
            origins[key] = f"file {path}"

    for var, (key, kind) in ENV_VARS.items():
        raw = env.get(var)
        if raw is None:
            continue
        _set(tree, key, _coerce(f"environment {var}", key, raw, kind))
        origins[key] = f"env {var}"

    flag_of = {f.key: f.flag for f in CLI_FLAGS}
    for key, value in (cli or {}).items():
        flag = flag_of.get(key, key)
        if isinstance(value, str) and key != "replacement.replacement_rules":
            value = _coerce(f"flag {flag}", key, value, "auto")
        _set(tree, key, value)
        origins[key] = f"flag {flag}"

    state_dir = env.get("STATE_DIRECTORY")
    if state_dir and "state_dir" not in tree:
        # systemd may pass several colon-separated directories; the first is ours.
        tree["state_dir"] = state_dir.split(":")[0]
        origins["state_dir"] = "env STATE_DIRECTORY"

    if tree.get("workers") == "auto":
        # One worker per CPU this process may run on (its affinity mask, which a
        # container's or systemd's CPU limits narrow), decided once, at load.
        tree["workers"] = max(1, len(os.sched_getaffinity(0)))
    try:
        config = _convert(tree)
    except RecursionError:
        raise ConfigError("configuration nested too deeply") from None
    _check(config, origins, env)
    return LoadedConfig(config=config, file=path, origins=origins, cli=dict(cli or {}))


# ---------------------------------------------------------------------------------------
# validation


_PATH_RE = re.compile(r" - at (?P<atkey>`key` in )?`\$(?P<path>[^`]*)`$")


def _lookup(tree: Any, path: str) -> Any:
    node = tree
    for part in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        name, index = part
        try:
            node = node[name] if name else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def _explain(message: str, tree: Any, prefix: str = "") -> str:
    m = _PATH_RE.search(message)
    path = m.group("path") if m else ""
    reason = message[: m.start()] if m else message
    # Greedy to the last backtick: a YAML key may be empty or hold backticks itself.
    unknown = re.match(r"Object contains unknown field `(.*)`$", reason, re.S)
    missing = re.match(r"Object missing required field `(.*)`$", reason, re.S)
    key = (prefix + path.lstrip(".")).replace("..", ".").strip(".") or "(top level)"
    if unknown:
        field_name = unknown.group(1) or "''"
        full = f"{key}.{field_name}" if path else f"{prefix}{field_name}"
        return f"{full.strip('.')}: unknown key (misspelt? see docs/configuration.md)"
    if missing:
        full = f"{key}.{missing.group(1)}" if path else f"{prefix}{missing.group(1)}"
        return f"{full.strip('.')}: missing; it is required"
    if m is not None and m.group("atkey"):
        node = _lookup(tree, path) if path else tree
        bad = (
            next((k for k in node if not isinstance(k, str)), "?")
            if isinstance(node, dict)
            else "?"
        )
        where = f"{prefix}{path.lstrip('.')}".strip(".")
        return f"{where + '.' if where else ''}{bad!r}: a key that is not a string; keys are names"
    value = _lookup(tree, path)
    shown = "" if value is _MISSING else f" got {_shown(value)};"
    if value is not _MISSING and _is_secret(key):
        # A key typed where a list belongs would otherwise be echoed to the terminal.
        shown = f" got a {type(value).__name__} value (not shown: a secret);"
    reason = reason.replace("Expected", "expected").replace("`", "")
    for word, plain in (("float", "a number"), ("int", "an integer"), ("str", "a string")):
        reason = re.sub(rf"\b{word}\b", plain, reason)
    return f"{key}:{shown} {reason}"


def _shown(value: Any) -> str:
    """A bad value as the message shows it: a scalar as it is, a mapping or list by its
    kind only (it may hold a secret, and it would not fit on one line)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _is_secret(key: str) -> bool:
    """Whether a dotted key (``admin.api_keys[0]``) holds a secret: never show its value."""
    leaf = re.sub(r"\[\d+\]$", "", key).rsplit(".", 1)[-1]
    return leaf in (
        "api_key",
        "api_keys",
        "webhook_url",
        "secret",
        "secret_sha256",
        "postgresql_dsn",
        "headers",
    )


ADMIN_KEY_MIN_CHARS = 16


def _check_admin_keys(config: Config) -> None:
    """Admin keys open the admin plane to remote peers: they must be real secrets of
    their own. Messages name the key's position, never its value."""
    admin = config.admin
    client_keys = set(config.auth.api_keys)
    for i, key in enumerate(admin.api_keys):
        where = f"admin.api_keys[{i}]"
        if len(key) < ADMIN_KEY_MIN_CHARS:
            raise ConfigError(
                f"{where}: {len(key)} characters; an admin key needs at least "
                f"{ADMIN_KEY_MIN_CHARS} (e.g. `openssl rand -hex 32`)"
            )
        if any(c.isspace() or c == "," for c in key):
            raise ConfigError(
                f"{where}: contains whitespace or a comma; it could not be sent in a "
                "header or listed in FASTPROXY_ADMIN_API_KEYS"
            )
        if key in client_keys:
            raise ConfigError(
                f"{where}: the same key is in auth.api_keys; the admin key must be a "
                "separate secret (client keys never open the admin plane)"
            )
    if admin.remote_writes and not admin.api_keys:
        raise ConfigError(
            "admin.remote_writes: true needs admin.api_keys (or FASTPROXY_ADMIN_API_KEYS); "
            "without a key no remote request is admitted"
        )


def _convert(tree: dict[str, Any]) -> Config:
    backends = tree.get("backends") or {}
    if not isinstance(backends, dict):
        raise ConfigError(f"backends: got {_shown(backends)}; expected a mapping of instance names")
    checked: dict[str, BackendConfig] = {}
    for name, body in backends.items():
        if not isinstance(body, dict):
            raise ConfigError(f"backends.{name}: got {_shown(body)}; expected a mapping")
        if "type" not in body:
            prefix = str(name).split(".", 1)[0]
            if prefix not in ("openai", "anthropic"):
                raise ConfigError(
                    f"backends.{name}.type: missing; expected 'openai' or 'anthropic' "
                    "(or name the instance openai.N / anthropic.N)"
                )
            body = {**body, "type": prefix}
        try:
            checked[str(name)] = msgspec.convert(body, BackendConfig)
        except msgspec.ValidationError as exc:
            raise ConfigError(_explain(str(exc), body, f"backends.{name}.")) from None
    rest = {k: v for k, v in tree.items() if k != "backends"}
    try:
        config = msgspec.convert(rest, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), rest)) from None
    return msgspec.structs.replace(config, backends=checked)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check(config: Config, origins: Mapping[str, str], env: Mapping[str, str]) -> None:
    """Cross-field rules that a type cannot express."""
    names = set(config.backends)
    if config.default_backend is not None and config.default_backend not in names:
        raise ConfigError(
            f"default_backend: got {config.default_backend!r}; expected one of "
            f"{sorted(names) or 'the configured backends (none configured)'}"
        )
    for model, targets in config.failover_routes.items():
        for target in targets:
            backend = target.split(":", 1)[0]
            if ":" in target and backend not in names:
                raise ConfigError(
                    f"failover_routes.{model}: got {target!r}; backend {backend!r} is not "
                    f"configured (have {sorted(names)})"
                )
    for name, b in config.backends.items():
        if not re.match(r"^https?://[^/\s]+", b.api_url):
            raise ConfigError(
                f"backends.{name}.api_url: got {b.api_url!r}; expected an http:// or https:// URL"
            )
        if b.api_key and b.api_key_env:
            raise ConfigError(f"backends.{name}: set api_key or api_key_env, not both")
    db = config.usage_tracking.persistence_path
    if db.lower().endswith(".json"):
        raise ConfigError(
            f"usage_tracking.persistence_path: got {db!r}; fastproxy stores usage in SQLite, "
            "not JSON: use a .db path such as ./var/usage.db"
        )
    _check_usage_store(config, env)
    for i, net in enumerate(config.admin.allow_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"admin.allow_networks[{i}]: got {net!r}; expected a CIDR such as 10.0.0.0/8"
            ) from None
    _check_admin_keys(config)
    _check_replacement(config, origins)
    _check_policy(config)
    _check_keys(config, env)
    _check_not_built(config, origins)
    _check_tracing(config)
    wc = config.wire_capture
    if wc.max_total_bytes < wc.max_file_bytes:
        raise ConfigError(
            f"wire_capture.max_total_bytes: got {wc.max_total_bytes}, below "
            f"wire_capture.max_file_bytes ({wc.max_file_bytes}); the total must hold one file"
        )
    if not is_loopback_host(config.host):
        if config.auth.disable_auth:
            raise ConfigError(
                f"host: got {config.host!r} with auth.disable_auth; refusing to serve a "
                "non-loopback address without authentication"
            )
        if not config.auth.api_keys and not config.auth.keys:
            raise ConfigError(
                f"host: got {config.host!r}; a non-loopback bind requires auth.api_keys "
                "(or FASTPROXY_API_KEYS) or auth.keys"
            )


def _check_tracing(config: Config) -> None:
    """Tracing's URLs and pairs read as the exporter will read them, and its packages
    installed, so a mistake is one line at start-up rather than spans silently lost."""
    tr = config.tracing
    for key in ("endpoint", "otlp_endpoint"):
        url = getattr(tr, key)
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"tracing.{key}: got {url!r}; expected an http:// or https:// URL")
    for key in ("headers", "resource_attributes"):
        try:
            otel_pairs(getattr(tr, key))
        except ValueError as exc:
            # The value is not shown: headers carry tokens.
            raise ConfigError(f"tracing.{key}: {exc}; expected name=value,name2=value2") from None
    if tr.on:
        missing = [
            name
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
            if _no_module(name)
        ]
        if missing:
            raise ConfigError(
                "tracing.enabled: the OpenTelemetry packages are not installed "
                f"({', '.join(missing)}); pip install 'fastproxy[tracing]'"
            )


def _no_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


# Sections whose feature is not built: their keys still parse (they are in the config format,
# and a misspelt one is still caught), but a value other than the default is refused, so
# no setting is ever accepted and then silently ignored. An entry goes when its feature
# is built, and the feature's own cross-key checks come with it. Empty today: every
# section of the format is built (random model replacement was the last).
_NOT_BUILT: dict[str, str] = {}


def _check_replacement(config: Config, origins: Mapping[str, str]) -> None:
    """Rules that the types cannot say. Each message starts with the key of the rule's
    field (``replacement.replacement_rules[1].to_backend``), shows the whole rule and
    names the env var or flag it came from."""
    rep = config.replacement
    origin = origins.get("replacement.replacement_rules", "")
    source = f", from {origin}" if origin.startswith(("env ", "flag ")) else ""
    if rep.enabled and not rep.replacement_rules:
        enabled_from = origins.get("replacement.enabled", "")
        where = f" ({enabled_from})" if enabled_from.startswith(("env ", "flag ")) else ""
        raise ConfigError(
            f"replacement.enabled: got True{where} with no rule in "
            "replacement.replacement_rules; add one (REPLACEMENT_RULES, "
            "--random-model-replacement-from-to FROM=BACKEND:MODEL)"
        )
    # With no backends configured the gateway serves its embedded demo backend.
    names = sorted(config.backends) or ["demo"]
    for i, rule in enumerate(rep.replacement_rules):
        key = f"replacement.replacement_rules[{i}]"
        shown = f"(rule {rule.from_pattern!r} -> {rule.to_backend}:{rule.to_model}{source})"
        if not rule.from_pattern.strip():
            raise ConfigError(
                f"{key}.from_pattern: got {rule.from_pattern!r} {shown}; expected '*' for "
                "every model, 'backend:model', or a part of a model name"
            )
        if rule.from_pattern != rule.from_pattern.strip():
            raise ConfigError(
                f"{key}.from_pattern: got {rule.from_pattern!r} {shown}; leading or "
                "trailing spaces (patterns are compared exactly)"
            )
        if rule.to_backend not in names:
            raise ConfigError(
                f"{key}.to_backend: got {rule.to_backend!r} {shown}; expected one of {names}"
            )
        if not rule.to_model.strip():
            raise ConfigError(f"{key}.to_model: got {rule.to_model!r} {shown}; expected a model")


def _check_policy(config: Config) -> None:
    """Load balancing, model aliases and groups, with the sans-I/O core's own validators:
    every problem at once, in one message, each naming its key
    (``groups.fast.members[0].backend``)."""
    lb = config.load_balancing
    if lb == type(lb)() and not config.model_aliases and not config.groups:
        return
    names = set(config.backends) or {"demo"}
    errors = validate_balancing("load_balancing", lb.strategy, lb.weights, names)
    for model, pool in lb.models.items():
        errors += validate_balancing(
            f"load_balancing.models[{model!r}]",
            pool.strategy if pool.strategy is not None else lb.strategy,
            pool.weights,
            names,
        )
    errors += validate_aliases(config.model_aliases)
    errors += validate_groups(config.groups, names)
    if errors:
        raise ConfigError("; ".join(_dotted(e) for e in errors))


# The key at the start of a core validator's message: names, [i], and ['name'] as repr.
_SUBSCRIPTED_KEY = re.compile(
    r"[A-Za-z_]+(?:\.[A-Za-z_]+|\[\d+\]|\[(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\])*"
)
_NAME_SUBSCRIPT = re.compile(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def _dotted(error: str) -> str:
    """A core validator's ``groups['fast'].members[0]`` as every config message names
    a key: ``groups.fast.members[0]`` (as ``backends.openai.1.api_url``)."""
    m = _SUBSCRIPTED_KEY.match(error)
    if m is None:
        return error
    key = _NAME_SUBSCRIPT.sub(lambda n: "." + str(ast.literal_eval(n.group(1))), m.group())
    return key + error[m.end() :]


def _check_usage_store(config: Config, env: Mapping[str, str]) -> None:
    """A PostgreSQL usage store needs its DSN at start, not at the first record."""
    usage = config.usage_tracking
    if usage.postgresql_dsn and usage.postgresql_dsn_env:
        raise ConfigError("usage_tracking: set postgresql_dsn or postgresql_dsn_env, not both")
    if usage.store != "postgresql" or not usage.enabled:
        return
    try:
        driver = importlib.util.find_spec("psycopg") is not None
    except (ImportError, ValueError):  # blocked (sys.modules entry None) or broken
        driver = False
    if not driver:
        # Otherwise the recorder would fail at every start, long after the config loaded.
        raise ConfigError(
            "usage_tracking.store: got 'postgresql', but the psycopg driver is not "
            "installed: pip install 'fastproxy[postgresql]'"
        )
    if usage.postgresql_dsn_env is not None:
        if not env.get(usage.postgresql_dsn_env):
            raise ConfigError(
                f"usage_tracking.postgresql_dsn_env: environment variable "
                f"{usage.postgresql_dsn_env!r} is not set; usage_tracking.store is postgresql"
            )
    elif not usage.postgresql_dsn:
        raise ConfigError(
            "usage_tracking.store: got 'postgresql' without a DSN; set "
            "usage_tracking.postgresql_dsn (or FASTPROXY_USAGE_DSN) or "
            "usage_tracking.postgresql_dsn_env"
        )


def _check_keys(config: Config, env: Mapping[str, str]) -> None:
    """Named client keys, teams and rate limits: every problem at once, one per line."""
    auth = config.auth
    if not auth.keys and not auth.teams and not config.rate_limits.models:
        return
    errors = check_client_keys(config, env)
    # A team's budget is charged by the requests of the keys in it: a team no key names
    # would hold a budget nothing ever spends (a typo in a key's team, most likely).
    named = {k.team for k in auth.keys if k.team is not None}
    for name in auth.teams:
        if name not in named:
            errors.append(
                f"auth.teams.{name}: no key in auth.keys has team {name!r}; its budget "
                "would never be charged"
            )
    if errors:
        raise ConfigError("; ".join(errors))


def _check_not_built(config: Config, origins: Mapping[str, str]) -> None:
    for section, feature in _NOT_BUILT.items():
        value = getattr(config, section)
        default = type(value)()
        for f in msgspec.structs.fields(value):
            got, want = getattr(value, f.name), getattr(default, f.name)
            if got == want:
                continue
            key = f"{section}.{f.name}"
            # Env and flags are named: they are set far from the config file, often by a
            # unit file or a script the operator no longer looks at.
            origin = origins.get(key, "")
            source = f" ({origin})" if origin.startswith(("env ", "flag ")) else ""
            # A default is a scalar or an empty tuple, which YAML writes as [].
            allowed = repr(list(want)) if isinstance(want, tuple) else repr(want)
            raise ConfigError(
                f"{key}: got {_shown(got)}{source}; {feature} is not built yet, so only "
                f"the default ({allowed}) is allowed"
            )


def resolve_state_path(config: Config, path: str) -> Path:
    """Where a state file lives: ``./var/...`` maps into ``state_dir`` (systemd's
    ``$STATE_DIRECTORY``); absolute paths and other relative paths are used as given."""
    p = Path(path)
    if p.is_absolute():
        return p
    parts = p.parts
    if parts and parts[0] == "var":
        return Path(config.state_dir).joinpath(*parts[1:])
    return p
