#!/usr/bin/env python3
"""Inspect wire-capture files: the same command as ``fastproxy capture inspect``.

scripts/inspect_cbor_capture.py var/wire_captures --detect-issues
"""

from __future__ import annotations

import sys

try:
    from fastproxy.capture_cli import inspect_main
except ImportError as exc:  # run outside the install: say so in one line
    print(f"inspect_cbor_capture.py: fastproxy is not importable here ({exc})", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(inspect_main(sys.argv[1:]))
