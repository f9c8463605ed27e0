"""Configuration: one frozen tree built once (defaults < YAML < env < CLI) and passed down."""

from .loader import (
    ConfigError,
    LoadedConfig,
    is_loopback_host,
    load_config,
    parse_replacement_rule,
    resolve_state_path,
)
from .schema import (
    AdminConfig,
    BackendConfig,
    Config,
    HealthCheckConfig,
    LimitsConfig,
    PriceEntry,
    TimeoutsConfig,
    UsageTrackingConfig,
    WireCaptureConfig,
)
from .sources import CLI_FLAGS, ENV_VARS, SECRET_KEYS

__all__ = [
    "CLI_FLAGS",
    "ENV_VARS",
    "SECRET_KEYS",
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "HealthCheckConfig",
    "LimitsConfig",
    "LoadedConfig",
    "PriceEntry",
    "TimeoutsConfig",
    "UsageTrackingConfig",
    "WireCaptureConfig",
    "is_loopback_host",
    "load_config",
    "parse_replacement_rule",
    "resolve_state_path",
]
