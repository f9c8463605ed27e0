#!/usr/bin/env python3
"""Live connection activity of a running fastproxy gateway (docs/activity.md, docs/cli.md).

    scripts/inspect_activity.py                      # one snapshot from the admin listener
    scripts/inspect_activity.py --watch              # refresh every second until Ctrl-C
    scripts/inspect_activity.py --watch --interval 2
    scripts/inspect_activity.py --json               # the /v1/diagnostics JSON (--raw too)
    scripts/inspect_activity.py --url http://localhost:9000
    scripts/inspect_activity.py http://localhost:9000   # the older spelling, still accepted

The same code as ``fastproxy top`` (fastproxy/cli_top.py), which watches by default, with
the same flags and exit codes: 0 ok, 1 no usable answer from the gateway, 2 bad arguments
or config (or a Python without fastproxy's dependencies), 3 activity tracking is off.

It needs the Python that fastproxy is installed in (the project's .venv); any other
Python gets one line saying which one to use, never a traceback.
"""

# This file must run far enough on any Python 3.7+ to say what is missing: only the
# standard library until the check below, and no syntax newer than 3.7.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

PROG = "inspect_activity.py"
EXIT_USAGE = 2  # fastproxy/cli_common.py EXIT_USAGE (it cannot be imported yet)
ROOT = Path(__file__).resolve().parent.parent


def _venv_hint() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    if venv.is_file():
        return f"run it as {venv} {Path(__file__).resolve()}"
    return "install fastproxy (python3 -m venv .venv && .venv/bin/pip install .) and run it with that Python"


def _cannot_run(why: str) -> NoReturn:
    print(f"{PROG}: {why}; {_venv_hint()}, or use `fastproxy top --once`", file=sys.stderr)
    sys.exit(EXIT_USAGE)


if sys.version_info < (3, 11):  # noqa: UP036 - run by any python3, it names the right one
    _cannot_run(
        f"fastproxy needs Python 3.11 or newer, this is {sys.version.split()[0]} ({sys.executable})"
    )


def _missing(exc: ImportError) -> NoReturn:
    what = f"no module {exc.name!r}" if exc.name else str(exc).splitlines()[0]
    _cannot_run(f"{sys.executable} lacks fastproxy's dependencies ({what})")


try:
    from fastproxy.cli_top import EPILOG, add_arguments, run
except ImportError as exc:
    if exc.name != "fastproxy":
        _missing(exc)
    sys.path.insert(0, str(ROOT))  # a checkout that is not installed: use its source tree
    try:
        from fastproxy.cli_top import EPILOG, add_arguments, run
    except ImportError as exc2:
        _missing(exc2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Show the active connections of a fastproxy gateway (GET /v1/diagnostics).",
        epilog=EPILOG,
    )
    add_arguments(parser, watch_default=False)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
