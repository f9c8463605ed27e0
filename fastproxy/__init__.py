"""fastproxy: a high-throughput LLM gateway that relays every byte and sees everything."""

from ._version import __version__
from .config import Config, ConfigError, LoadedConfig, load_config

__all__ = ["Config", "ConfigError", "LoadedConfig", "__version__", "load_config"]
