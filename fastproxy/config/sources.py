"""Where settings come from besides the YAML file: environment variables and CLI flags.

Each table maps an external name to one dotted key of the config tree, so every env var
and flag (docs/configuration.md lists them) is read by exactly one line here (a name the
docs promise but the code never reads was a defect of the reference project). The CLI parser in
``fastproxy.cli`` builds its flags from ``CLI_FLAGS`` so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# env var -> (dotted key, how to read the string)
EnvKind = Literal["auto", "bool", "csv", "json", "path"]

ENV_VARS: dict[str, tuple[str, EnvKind]] = {
    "FASTPROXY_HOST": ("host", "auto"),
    "FASTPROXY_PORT": ("port", "auto"),
    "FASTPROXY_ADMIN_HOST": ("admin.host", "auto"),
    "FASTPROXY_ADMIN_PORT": ("admin.port", "auto"),
    "FASTPROXY_ADMIN_API_KEYS": ("admin.api_keys", "csv"),
    "USAGE_TRACKING_ENABLED": ("usage_tracking.enabled", "bool"),
    "USAGE_TRACKING_PERSISTENCE_PATH": ("usage_tracking.persistence_path", "path"),
    "USAGE_TRACKING_FLUSH_INTERVAL_SECONDS": ("usage_tracking.flush_interval_seconds", "auto"),
    "USAGE_TRACKING_MAX_RECORDS_IN_MEMORY": ("usage_tracking.max_records_in_memory", "auto"),
    "FASTPROXY_USAGE_STORE": ("usage_tracking.store", "auto"),
    "FASTPROXY_USAGE_DSN": ("usage_tracking.postgresql_dsn", "auto"),
    "WIRE_CAPTURE_ENABLED": ("wire_capture.enabled", "bool"),
    "WIRE_CAPTURE_OUTPUT_DIR": ("wire_capture.output_dir", "path"),
    "ENABLE_ACTIVITY_TRACKING": ("enable_activity_tracking", "bool"),
    "REPLACEMENT_ENABLED": ("replacement.enabled", "bool"),
    "REPLACEMENT_PROBABILITY": ("replacement.probability", "auto"),
    "REPLACEMENT_TURN_COUNT": ("replacement.turn_count", "auto"),
    "REPLACEMENT_RULES": ("replacement.replacement_rules", "json"),
    "FASTPROXY_API_KEYS": ("auth.api_keys", "csv"),
    "FASTPROXY_LOG_LEVEL": ("log_level", "auto"),
    "FASTPROXY_ACCESS_LOG": ("access_log", "bool"),
    "FASTPROXY_WORKERS": ("workers", "auto"),
    "FASTPROXY_TRACING_ENABLED": ("tracing.enabled", "bool"),
    # The standard OpenTelemetry variables (docs/tracing.md): the env layer of tracing.*.
    "OTEL_SDK_DISABLED": ("tracing.sdk_disabled", "bool"),
    "OTEL_TRACES_EXPORTER": ("tracing.exporter", "auto"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("tracing.otlp_endpoint", "auto"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("tracing.endpoint", "auto"),
    "OTEL_EXPORTER_OTLP_HEADERS": ("tracing.headers", "auto"),
    "OTEL_SERVICE_NAME": ("tracing.service_name", "auto"),
    "OTEL_RESOURCE_ATTRIBUTES": ("tracing.resource_attributes", "auto"),
    "OTEL_TRACES_SAMPLER": ("tracing.sampler", "auto"),
    "OTEL_TRACES_SAMPLER_ARG": ("tracing.sampler_arg", "auto"),
}


@dataclass(frozen=True, slots=True)
class CliFlag:
    """One command-line flag of ``fastproxy run`` / ``check-config`` and the key it sets."""

    flag: str
    key: str
    help: str
    action: Literal["value", "true", "false", "append_rule"] = "value"
    metavar: str | None = None


CLI_FLAGS: tuple[CliFlag, ...] = (
    CliFlag("--host", "host", "data listener address (default 127.0.0.1)"),
    CliFlag("--port", "port", "data listener port (default 8000; 0 = any free port)"),
    CliFlag("--admin-host", "admin.host", "admin listener address (default 127.0.0.1)"),
    CliFlag("--admin-port", "admin.port", "admin listener port (default 8001; 0 = any)"),
    CliFlag(
        "--disable-usage-tracking", "usage_tracking.enabled", "record no usage", action="false"
    ),
    CliFlag("--usage-db", "usage_tracking.persistence_path", "usage SQLite file", metavar="PATH"),
    CliFlag(
        "--usage-store",
        "usage_tracking.store",
        "where usage records go: sqlite (default) or postgresql",
        metavar="KIND",
    ),
    CliFlag(
        "--wire-capture-enabled",
        "wire_capture.enabled",
        "record every byte of each API exchange, redacted (docs/capture.md)",
        "true",
    ),
    CliFlag(
        "--wire-capture-dir",
        "wire_capture.output_dir",
        "wire capture directory",
        metavar="DIR",
    ),
    CliFlag(
        "--enable-activity-tracking",
        "enable_activity_tracking",
        "track live connections and bytes",
        action="true",
    ),
    CliFlag(
        "--enable-replacement",
        "replacement.enabled",
        "random model replacement (needs a rule; docs/routing.md)",
        "true",
    ),
    CliFlag(
        "--replacement-probability",
        "replacement.probability",
        "chance 0.0..1.0 that an eligible turn is replaced",
        metavar="P",
    ),
    CliFlag(
        "--replacement-turn-count",
        "replacement.turn_count",
        "completed turns a replaced session stays on the target (default 1)",
        metavar="N",
    ),
    CliFlag(
        "--random-model-replacement-from-to",
        "replacement.replacement_rules",
        "replacement rule FROM=BACKEND:MODEL (repeatable; replaces the configured list)",
        action="append_rule",
        metavar="FROM=BACKEND:MODEL",
    ),
    CliFlag("--disable-auth", "auth.disable_auth", "do not require client API keys", "true"),
    CliFlag("--log-level", "log_level", "DEBUG, INFO, WARNING, ERROR", metavar="LEVEL"),
    CliFlag("--access-log", "access_log", "one log line per request", action="true"),
    CliFlag("--drain-timeout", "timeouts.drain_seconds", "graceful drain seconds", metavar="S"),
    CliFlag(
        "--workers",
        "workers",
        "data-plane worker processes on the one port, or auto (one per usable CPU)",
        metavar="N",
    ),
)

# Keys whose values are secrets: masked by check-config and never logged.
SECRET_KEYS = ("auth.api_keys", "admin.api_keys", "api_key", "webhook_url", "tracing.headers")
