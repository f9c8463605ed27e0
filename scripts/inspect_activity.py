#!/usr/bin/env python3
"""Live connection activity of a running fastproxy gateway (docs/activity.md).

    scripts/inspect_activity.py                      # one snapshot from http://localhost:8001
    scripts/inspect_activity.py --watch              # refresh every second until Ctrl-C
    scripts/inspect_activity.py --watch --interval 2
    scripts/inspect_activity.py --raw                # the /v1/diagnostics JSON
    scripts/inspect_activity.py http://localhost:9000

The same code as ``fastproxy top`` (fastproxy/cli_top.py), which watches by default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from fastproxy.cli_top import add_arguments, run
except ModuleNotFoundError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fastproxy.cli_top import add_arguments, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inspect_activity.py",
        description="Show the active connections of a fastproxy gateway (GET /v1/diagnostics).",
        epilog="Exit codes: 0 ok, 1 unreachable, 3 activity tracking off.",
    )
    add_arguments(parser, watch_default=False)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
