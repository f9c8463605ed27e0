"""The configuration tree: frozen, typed, validated by msgspec.

Why msgspec rather than hand-written checks or pydantic: one declaration gives the type,
the default and the allowed range of every key; `forbid_unknown_fields` turns a misspelt
key into an error instead of a silently ignored setting (the reference project ignored
misspelt keys); its errors carry the exact path (``$.health_check.ping.interval_seconds``) that
our one-line messages need; and it converts a dict to frozen structs in microseconds with
no runtime dependency tree. Every struct is frozen: the config is built once and never
written back.

Key names are those of the configuration format docs/configuration.md describes (config
files written for the reference project keep working).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, field

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
BackendType = Literal["openai", "anthropic"]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for every config section: immutable, no unknown keys.

    Subclasses repeat ``frozen=True``: msgspec inherits it anyway, but a type checker
    reads a subclass's own class keywords (dataclass_transform) and would otherwise
    take it for a mutable struct deriving from a frozen one."""


class PingConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    interval_seconds: PositiveFloat = 30.0
    timeout_seconds: PositiveFloat = 5.0
    failure_threshold: PositiveInt = 3


class HttpProbeConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    interval_seconds: PositiveFloat = 60.0
    timeout_seconds: PositiveFloat = 10.0
    failure_threshold: PositiveInt = 2
    path: str = "/models"
    method: Literal["GET", "HEAD"] = "GET"


class HealthCheckConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    circuit_breaker_enabled: bool = True
    notify_backends: bool = True
    ping: PingConfig = field(default_factory=PingConfig)
    http: HttpProbeConfig = field(default_factory=HttpProbeConfig)
    webhook_url: str | None = None
    max_concurrent_probes: PositiveInt = 32
    # The log line of a transition that repeats (a dead endpoint's breaker cycling
    # open -> half_open -> open every cooldown) is a WARNING the first time, then DEBUG,
    # with one WARNING summary per this many seconds; 0 logs every one at WARNING.
    log_repeat_window_seconds: NonNegFloat = 600.0


class PriceEntry(_Section, frozen=True, kw_only=True):
    """USD per 1M tokens."""

    input: NonNegFloat
    output: NonNegFloat
    cached_input: NonNegFloat | None = None
    cache_write: NonNegFloat | None = None


class UsageTrackingConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    persistence_path: str = "./var/usage.db"
    flush_interval_seconds: PositiveFloat = 1.0
    max_records_in_memory: PositiveInt = 100_000
    retention_days: Annotated[int, Meta(ge=0)] = 90
    pricing: dict[str, PriceEntry] = field(default_factory=dict)
    # Where records go (docs/usage-storage.md): the embedded SQLite file at
    # persistence_path, or a PostgreSQL database several gateways share.
    store: Literal["sqlite", "postgresql"] = "sqlite"
    # The PostgreSQL DSN (it holds a password: masked in check-config, never logged), or
    # the name of the environment variable holding it.
    postgresql_dsn: str | None = None
    postgresql_dsn_env: str | None = None
    # Records kept on disk (under state_dir) while PostgreSQL is unreachable.
    spool_max_bytes: Annotated[int, Meta(ge=64 * KiB)] = 256 * MiB


class WireCaptureConfig(_Section, frozen=True, kw_only=True):
    """Wire capture (docs/capture.md): every byte of each API exchange, redacted, to CBOR
    files written by a process of their own."""

    enabled: bool = False
    output_dir: str = "./var/wire_captures"
    max_file_bytes: Annotated[int, Meta(ge=64 * KiB)] = 100 * MiB
    max_total_bytes: Annotated[int, Meta(ge=64 * KiB)] = 1 * GiB
    redact_headers: tuple[str, ...] = ()


TraceSampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


class TracingConfig(_Section, frozen=True, kw_only=True):
    """OpenTelemetry traces of API requests, exported over OTLP/HTTP (docs/tracing.md).
    The standard ``OTEL_*`` variables set these keys as the env layer (config/sources.py);
    ``sdk_disabled`` and ``exporter: none`` are the standard off switches and win over
    ``enabled``."""

    enabled: bool = False
    # The OTLP/HTTP traces URL, used as it is (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
    endpoint: str | None = None
    # A base URL to which /v1/traces is appended (OTEL_EXPORTER_OTLP_ENDPOINT); used when
    # endpoint is unset. Neither set: http://localhost:4318/v1/traces.
    otlp_endpoint: str | None = None
    # Export request headers as "name=value,name2=value2" (the OTEL_EXPORTER_OTLP_HEADERS
    # form); they often hold a token: masked in check-config, never logged.
    headers: str | None = None
    service_name: str = "fastproxy"
    # Resource attributes as "key=value,..." (OTEL_RESOURCE_ATTRIBUTES).
    resource_attributes: str | None = None
    sampler: TraceSampler = "parentbased_always_on"
    sampler_arg: Probability = 1.0
    exporter: Literal["otlp", "none"] = "otlp"
    sdk_disabled: bool = False
    # Finished requests waiting for their spans to be built and exported, at most; past
    # it a request's spans are dropped and counted (the loop never waits on tracing).
    max_queue: Annotated[int, Meta(ge=16)] = 8192

    @property
    def on(self) -> bool:
        return self.enabled and not self.sdk_disabled and self.exporter == "otlp"

    @property
    def traces_url(self) -> str:
        if self.endpoint:
            return self.endpoint
        base = self.otlp_endpoint or "http://localhost:4318"
        return base.rstrip("/") + "/v1/traces"


def otel_pairs(text: str | None) -> dict[str, str]:
    """``name=value,name2=value2`` as the OTEL_* variables write headers and resource
    attributes (values percent-decoded, blanks around items ignored). Raises ValueError
    naming the item's position, never its value (a header may be a token)."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    if not text:
        return out
    for i, item in enumerate(text.split(",")):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"item {i + 1} is not name=value")
        out[unquote(name.strip())] = unquote(value.strip())
    return out


class ActivityConfig(_Section, frozen=True, kw_only=True):
    stale_timeout_seconds: PositiveFloat = 300.0
    sweep_interval_seconds: PositiveFloat = 5.0


class ReplacementRule(_Section, frozen=True, kw_only=True):
    from_pattern: str
    to_backend: str
    to_model: str


class ReplacementConfig(_Section, frozen=True, kw_only=True):
    """Random model replacement (core/replacement.py; docs/routing.md). The loader checks
    what types cannot: enabled needs a rule, each rule's to_backend must be configured."""

    enabled: bool = False
    probability: Probability = 0.0
    turn_count: PositiveInt = 1
    replacement_rules: tuple[ReplacementRule, ...] = ()


class RateLimit(_Section, frozen=True, kw_only=True):
    """Requests and tokens per minute (core/ratelimit.py); an unset one is not limited."""

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None


class BudgetConfig(_Section, frozen=True, kw_only=True):
    """Spend in USD over a UTC day or month (core/budget.py)."""

    usd: PositiveFloat
    period: Literal["day", "month"] = "month"


class ClientKeyConfig(_Section, frozen=True, kw_only=True):
    """A named client key (core/keys.py; docs/policy.md, "Named keys"). The secret is
    given by exactly one of: the environment variable that holds it (``secret_env``),
    its SHA-256 in hex (``secret_sha256``), or, only with
    ``auth.allow_plaintext_secrets``, the secret itself."""

    name: str
    secret_env: str | None = None
    secret_sha256: str | None = None
    secret: str | None = None
    team: str | None = None
    # Model names (globs, fnmatch) the key may ask for; empty: every model.
    models: tuple[str, ...] = ()
    limits: RateLimit | None = None
    budget: BudgetConfig | None = None


class TeamConfig(_Section, frozen=True, kw_only=True):
    budget: BudgetConfig | None = None


class AuthConfig(_Section, frozen=True, kw_only=True):
    disable_auth: bool = False
    api_keys: tuple[str, ...] = ()
    keys: tuple[ClientKeyConfig, ...] = ()
    teams: dict[str, TeamConfig] = field(default_factory=dict)
    # A plain ``secret:`` in the file is refused unless this is set: config files are
    # copied, committed and pasted into tickets; an env var or a hash is not a secret.
    allow_plaintext_secrets: bool = False


class RateLimitsConfig(_Section, frozen=True, kw_only=True):
    """Limits per model over every key (``models``, exact public names); per-key limits
    live on the key (``auth.keys[].limits``)."""

    models: dict[str, RateLimit] = field(default_factory=dict)
    # The window every limit counts over: "rpm" and "tpm" mean per window (60 s unless
    # set; a shorter one is for tests and demos, and is what the headers report).
    window_seconds: PositiveFloat = 60.0


class LimitsConfig(_Section, frozen=True, kw_only=True):
    max_connections: PositiveInt = 10_000
    max_request_line_bytes: Annotated[int, Meta(ge=256)] = 8 * KiB
    max_head_bytes: Annotated[int, Meta(ge=1 * KiB)] = 64 * KiB
    max_headers: PositiveInt = 100
    max_body_bytes: PositiveInt = 64 * MiB
    # What a backend may send: max_head_bytes and max_headers bound its response head
    # too; a non-streaming body is buffered (its usage goes into x-usage-* headers), so
    # it is bounded here (502 past it); one SSE event is bounded by the other (the
    # stream ends with an error event past it).
    max_response_body_bytes: PositiveInt = 64 * MiB
    max_sse_event_bytes: Annotated[int, Meta(ge=64 * KiB)] = 8 * MiB


class TimeoutsConfig(_Section, frozen=True, kw_only=True):
    header_seconds: PositiveFloat = 10.0
    body_idle_seconds: PositiveFloat = 30.0
    keepalive_seconds: PositiveFloat = 75.0
    drain_seconds: NonNegFloat = 30.0
    # A client that reads nothing for this long while the gateway has bytes for it is
    # dropped (outcome client_stalled). nginx's send_timeout is the same idea, default 60.
    send_seconds: PositiveFloat = 60.0


class CircuitBreakerConfig(_Section, frozen=True, kw_only=True):
    failure_threshold: PositiveInt = 5
    open_cooldown_seconds: PositiveFloat = 30.0


class AdminConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8001
    allow_networks: tuple[str, ...] = ()
    # Opt-in remote access to the admin listener: a peer outside loopback/allow_networks
    # that presents one of these keys may read. Never the client keys (auth.api_keys).
    api_keys: tuple[str, ...] = ()
    # With admin.api_keys: may a keyed remote peer also POST (reactivate)? Off: reads only.
    remote_writes: bool = False


class BackendConfig(_Section, frozen=True, kw_only=True):
    """One backend instance. Its connector type defaults to the name's text before '.'."""

    type: BackendType | None = None
    api_url: str
    api_key_env: str | None = None
    api_key: str | None = None
    models: tuple[str, ...] | None = None
    connect_timeout_s: PositiveFloat = 10.0
    first_byte_timeout_s: PositiveFloat = 300.0
    idle_timeout_s: PositiveFloat = 120.0
    # Open connections to this backend at most. None (the default): as many as the
    # gateway accepts (limits.max_connections), so the gateway's own limit is the only
    # one; set it for a provider that caps concurrent connections.
    max_connections: PositiveInt | None = None
    pool_idle_timeout_s: PositiveFloat = 30.0
    verify_tls: bool = True
    ca_bundle: str | None = None
    anthropic_version: str = "2023-06-01"
    extra_headers: dict[str, str] = field(default_factory=dict)


class PoolBalancingConfig(_Section, frozen=True, kw_only=True):
    """One model's balancing (``load_balancing.models[name]``); unset keys inherit the
    ``load_balancing`` defaults. Strategy and weights are checked by the loader with
    ``core.balance.validate_balancing``, whose messages name the rule."""

    strategy: str | None = None
    weights: dict[str, float] | None = None
    affinity: bool | None = None


class LatencyConfig(_Section, frozen=True, kw_only=True):
    alpha: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.3
    reprobe_seconds: PositiveFloat = 30.0


class AffinityConfig(_Section, frozen=True, kw_only=True):
    enabled: bool = False
    idle_seconds: PositiveFloat = 3600.0
    max_sessions: PositiveInt = 100_000


class LoadBalancingConfig(_Section, frozen=True, kw_only=True):
    """The order in which the backends that serve a model are tried (core/balance.py;
    docs/policy.md, "Load balancing")."""

    strategy: str = "ordered"
    weights: dict[str, float] = field(default_factory=dict)
    models: dict[str, PoolBalancingConfig] = field(default_factory=dict)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)


class AliasRuleConfig(_Section, frozen=True, kw_only=True):
    pattern: str
    target: str


class GroupMemberConfig(_Section, frozen=True, kw_only=True):
    backend: str
    model: str
    weight: float = 1.0


class GroupConfig(_Section, frozen=True, kw_only=True):
    """One public model name over several backend models (core/aliases.py)."""

    strategy: str = "ordered"
    affinity: bool = False
    members: tuple[GroupMemberConfig, ...] = ()


class Config(_Section, frozen=True, kw_only=True):
    """The whole effective configuration. Built once by `load_config`, then read-only."""

    host: str = "127.0.0.1"
    port: Port = 8000
    admin: AdminConfig = field(default_factory=AdminConfig)
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    default_backend: str | None = None
    failover_routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    usage_tracking: UsageTrackingConfig = field(default_factory=UsageTrackingConfig)
    wire_capture: WireCaptureConfig = field(default_factory=WireCaptureConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    enable_activity_tracking: bool = False
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    replacement: ReplacementConfig = field(default_factory=ReplacementConfig)
    load_balancing: LoadBalancingConfig = field(default_factory=LoadBalancingConfig)
    model_aliases: tuple[AliasRuleConfig, ...] = ()
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    log_level: LogLevel = "INFO"
    access_log: bool = False
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    # Data-plane worker processes; above 1 a primary process supervises them
    # (fastproxy/workers). Not with activity tracking yet (loader._check).
    workers: PositiveInt = 1
    # Derived at load time (not user keys): where state lives, and where the file came from.
    state_dir: str = "./var"
