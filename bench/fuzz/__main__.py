"""``python -m bench.fuzz``: the CI fuzz properties, run for many more examples.

The properties live in tests/reliability/test_fuzz_*.py and run in CI with a small,
fixed number of examples each (tests/reliability/fuzz_settings.py). This runs the same
tests with ``--examples`` per property (``HYPOTHESIS_PROFILE=long`` plus
``FASTPROXY_FUZZ_EXAMPLES``), with pytest's per-test timeout off, once with the compiled
``_speedups`` core and, with ``--both``, again with the pure-Python twin.

Examples:
    python -m bench.fuzz                                   # 20,000 examples per property
    python -m bench.fuzz --examples 2000 --targets sse,config
    python -m bench.fuzz --both --report /tmp/fuzz.txt

Explicit ``@example`` cases (known defects pinned as regression cases) run first; a
property that fails on one stops there, so ``--skip-explicit`` leaves them out to let
the random search go on looking for something else.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {
    "request_path": "tests/reliability/test_fuzz_request_path.py",
    "sse": "tests/reliability/test_fuzz_sse.py",
    "dialects": "tests/reliability/test_fuzz_dialects.py",
    "config": "tests/reliability/test_fuzz_config.py",
    "admin_query": "tests/reliability/test_fuzz_admin_query.py",
}


def run(
    targets: list[str],
    examples: int,
    pure: bool,
    skip_explicit: bool,
    extra: list[str],
    verbose: bool,
) -> tuple[int, float, str]:
    env = dict(os.environ, HYPOTHESIS_PROFILE="long", FASTPROXY_FUZZ_EXAMPLES=str(examples))
    if pure:
        env["FASTPROXY_NO_EXTENSIONS"] = "1"
    if skip_explicit:
        env["FASTPROXY_FUZZ_SKIP_EXPLICIT"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *(TARGETS[t] for t in targets),
        "-v",
        "-rf",
        "-o",
        "timeout=0",
        "-p",
        "no:cacheprovider",
        "--durations=0",
        *extra,
    ]
    t0 = time.monotonic()
    lines = []
    # Streamed as it comes (a long run shows its progress), and kept for the report.
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if verbose:
                print(line, end="", flush=True)
    return proc.returncode, time.monotonic() - t0, "".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.fuzz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--examples", type=int, default=20_000, help="examples per property")
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {', '.join(TARGETS)}",
    )
    ap.add_argument(
        "--both",
        action="store_true",
        help="also run with FASTPROXY_NO_EXTENSIONS=1 (the pure-Python twin)",
    )
    ap.add_argument(
        "--skip-explicit",
        action="store_true",
        help="leave out the explicit @example cases (pinned known defects)",
    )
    ap.add_argument("--report", type=Path, help="also write the full pytest output here")
    ap.add_argument(
        "--quiet",
        action="store_true",
        help="print only the summary, not pytest's output as it runs",
    )
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s): {', '.join(unknown)}")
    worst = 0
    report = []
    for pure in (False, True) if args.both else (False,):
        label = "pure-Python _speedups" if pure else "compiled _speedups (when built)"
        print(
            f"== {label}: {args.examples} examples per property, targets {', '.join(targets)}",
            flush=True,
        )
        code, seconds, output = run(
            targets, args.examples, pure, args.skip_explicit, args.pytest_args, not args.quiet
        )
        summary = [
            line
            for line in output.splitlines()
            if line.startswith(("FAILED", "ERROR")) or " passed" in line or " failed" in line
        ]
        print("\n".join(summary))
        print(f"== {label}: exit {code} after {seconds:.0f} s", flush=True)
        report.append(f"== {label}: exit {code} after {seconds:.0f} s\n{output}")
        worst = max(worst, code)
    if args.report is not None:
        args.report.write_text("\n".join(report))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
