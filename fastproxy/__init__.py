"""fastproxy: a high-throughput LLM gateway that relays every byte and sees everything."""

from . import _compiled

_compiled.install()  # before any request-path module is imported: see _compiled.py

from ._version import __version__  # noqa: E402
from .config import Config, ConfigError, LoadedConfig, load_config  # noqa: E402

__all__ = ["Config", "ConfigError", "LoadedConfig", "__version__", "load_config"]
