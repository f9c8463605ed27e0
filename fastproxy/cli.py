"""The ``fastproxy`` command line.

Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error (argparse uses
2 as well, so scripts can treat 2 as "fix your invocation or config"). The commands that
read a running gateway (health, top, usage --url; fastproxy/cli_common.py) add 3, "the
gateway answered that something is off"; docs/cli.md has the whole table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ._version import __version__
from .config import CLI_FLAGS, ConfigError, LoadedConfig, load_config, parse_replacement_rule
from .service_unit import DEFAULT_CONFIG_PATH, render_unit


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    for flag in CLI_FLAGS:
        dest = "cfg__" + flag.key.replace(".", "__")
        if flag.action == "true":
            parser.add_argument(
                flag.flag, dest=dest, action="store_const", const=True, help=flag.help
            )
        elif flag.action == "false":
            parser.add_argument(
                flag.flag, dest=dest, action="store_const", const=False, help=flag.help
            )
        elif flag.action == "append_rule":
            parser.add_argument(
                flag.flag, dest=dest, action="append", metavar=flag.metavar, help=flag.help
            )
        else:
            parser.add_argument(
                flag.flag, dest=dest, metavar=flag.metavar or "VALUE", help=flag.help
            )


def _cli_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in vars(ns).items():
        if not name.startswith("cfg__") or value is None:
            continue
        key = name[5:].replace("__", ".")
        if key == "replacement.replacement_rules":
            value = [parse_replacement_rule(v) for v in value]
        out[key] = value
    return out


def load_from_args(ns: argparse.Namespace) -> LoadedConfig:
    return load_config(_cli_overrides(ns), config_file=ns.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastproxy", description="A high-throughput LLM gateway for OpenAI and Anthropic APIs."
    )
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway (data and admin listeners)")
    _add_config_flags(run)

    check = sub.add_parser(
        "check-config",
        help="validate the config, print the result and warn about unsafe combinations",
    )
    _add_config_flags(check)

    service = sub.add_parser("service", help="run fastproxy as a system service")
    service_sub = service.add_subparsers(dest="service_command", metavar="SUBCOMMAND")
    service_sub.required = True
    unit = service_sub.add_parser(
        "unit",
        help="print a systemd unit for this install",
        description="Print a systemd unit that runs this install's fastproxy "
        "(the Python running this command). Its stop timeout and file limit follow "
        "the config file, when it exists here.",
    )
    unit.add_argument(
        "--config",
        metavar="PATH",
        default=DEFAULT_CONFIG_PATH,
        help=f"the config file the service reads (default {DEFAULT_CONFIG_PATH})",
    )
    unit.add_argument(
        "--python",
        metavar="PATH",
        default=sys.executable,
        help="the Python of the install to run (default: this one, %(default)s)",
    )
    unit.add_argument(
        "--cap-net-raw",
        action="store_true",
        help="grant CAP_NET_RAW for raw-socket ICMP pings (only where "
        "net.ipv4.ping_group_range refuses unprivileged ICMP sockets)",
    )

    sub.add_parser("mock-llm", help="run the mock LLM server (OpenAI + Anthropic)", add_help=False)
    for module in _extra_commands():
        before = set(sub.choices)
        module.add_parser(sub)
        for name in set(sub.choices) - before:
            sub.choices[name].set_defaults(run_command=module.run)
    return parser


# Operator commands that live in their own modules, each with add_parser(sub) and run(ns).
_EXTRA_COMMAND_MODULES = ("usage_cli", "cli_top", "cli_health", "capture_cli")


def _extra_commands() -> list[Any]:
    import importlib

    out = []
    for name in _EXTRA_COMMAND_MODULES:
        try:
            out.append(importlib.import_module(f"{__package__}.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
    return out


def _cmd_check_config(ns: argparse.Namespace) -> int:
    from .config.lint import lint

    loaded = load_from_args(ns)
    findings = lint(loaded.config)
    print(f"config file: {loaded.file or '(none found; built-in defaults)'}")
    warned = f" with {len(findings)} warning(s) on stderr" if findings else ""
    print(f"configuration is valid{warned}; effective values (secrets masked):")
    for key, value in _flatten(msgspec.to_builtins(loaded.config)):
        print(f"  {key} = {_mask(key, value)}    # {loaded.origin(key)}")
    # Warnings leave the exit status 0: the config starts, and a script that gates on
    # check-config should not fail on what the operator may have meant.
    for code, message in findings:
        print(f"fastproxy check-config: warning [{code}]: {message}", file=sys.stderr)
    return 0


def _cmd_service(ns: argparse.Namespace) -> int:
    from .config.lint import fds_needed
    from .gateway import CUT_EXCHANGES_WAIT_S
    from .storage.recorder_link import STOP_TIMEOUT_S

    config_path = os.path.abspath(ns.config)
    python = os.path.abspath(ns.python)
    if Path(config_path).is_file():
        # Only the file: the service's environment is its EnvironmentFile, not this
        # shell's, and neither drain_seconds nor max_connections has a variable.
        loaded = load_config(config_file=config_path, env={}, use_files=False)
        origin = f"read from {config_path}"
    else:
        loaded = load_config(env={}, use_files=False)
        origin = f"the default ({config_path} did not exist where this unit was made)"
    config = loaded.config
    if not os.access(python, os.X_OK):
        print(
            f"fastproxy service unit: note: {python} is not an executable here; "
            "the unit is for the machine where it is",
            file=sys.stderr,
        )
    print(
        render_unit(
            python=python,
            config_path=config_path,
            drain_seconds=config.timeouts.drain_seconds,
            drain_origin=origin,
            stop_after_drain_seconds=CUT_EXCHANGES_WAIT_S + STOP_TIMEOUT_S + 5.0,
            fds_needed=fds_needed(config),
            cap_net_raw=ns.cap_net_raw,
        ),
        end="",
    )
    return 0


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            out.extend(_flatten(v, f"{prefix}{k}."))
        return out
    return [(prefix.rstrip("."), tree)]


_SECRET_LEAVES = (
    "api_key",
    "api_keys",
    "webhook_url",
    "secret",
    "secret_sha256",
    "postgresql_dsn",
    "headers",
)


def _hide(value: Any) -> Any:
    """A list of mappings (``auth.keys``) with the secrets inside masked."""
    if isinstance(value, dict):
        return {k: "***" if k in _SECRET_LEAVES and v else _hide(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hide(v) for v in value]
    return value


def _mask(key: str, value: Any) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if value and leaf in _SECRET_LEAVES:
        if isinstance(value, list | tuple):
            return "[" + ", ".join("***" for _ in value) + "]"
        return "***"
    if isinstance(value, list | tuple):
        return str(_hide(value))
    return repr(value) if isinstance(value, str) else str(value)


def _cmd_run(ns: argparse.Namespace) -> int:
    loaded = load_from_args(ns)
    from .gateway import run_gateway

    return run_gateway(loaded)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "mock-llm":
        from .mockllm import main as mock_main

        return mock_main(args[1:])
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        if ns.command == "check-config":
            return _cmd_check_config(ns)
        if ns.command == "run":
            return _cmd_run(ns)
        if ns.command == "service":
            return _cmd_service(ns)
        runner = getattr(ns, "run_command", None)
        if runner is not None:
            return int(runner(ns))
    except ConfigError as exc:
        print(f"fastproxy: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `fastproxy check-config | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0
    parser.error(f"unknown command {ns.command}")
    return 2
