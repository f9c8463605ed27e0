"""Hypothesis settings for the ``test_fuzz_*`` modules: bounded in CI, long on demand.

CI (the default) runs each property for a fixed, small number of examples, the same
ones every run (derandomized), so the whole
``tests/reliability/test_fuzz_*`` set finishes in well under half a minute on a 2-core
machine. Longer runs are the same tests with more examples:

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/reliability -k fuzz
    FASTPROXY_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/reliability -k fuzz
    .venv/bin/python -m bench.fuzz --examples 20000          # the same, with a summary

(pytest's 120 s per-test timeout from pyproject.toml applies; pass ``-o timeout=0`` for
long runs, as bench.fuzz does.)

``HYPOTHESIS_PROFILE=long`` means 20,000 examples per property unless
``FASTPROXY_FUZZ_EXAMPLES`` says otherwise. The settings are applied per test, never as a
global profile, so the rest of the suite (tests/speedups has its own) is unaffected. No
example database is kept: the working tree stays clean, and a failure prints the
``@reproduce_failure`` blob to replay it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
LONG_DEFAULT = 20_000
# No "explain" phase: on a failing protocol example it replays hundreds of variants, which
# takes minutes the shrunk example and the assertion message make unnecessary.
# FASTPROXY_FUZZ_SKIP_EXPLICIT=1 (``bench.fuzz --skip-explicit``) also leaves out the
# pinned @example cases, so a long run searches on past a known defect.
PHASES = [Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
if os.environ.get("FASTPROXY_FUZZ_SKIP_EXPLICIT", "") not in ("1", "true", "yes"):
    PHASES.insert(0, Phase.explicit)


def examples(ci: int) -> int:
    """Examples per property: ``ci`` in CI, more when a long run is asked for."""
    explicit = os.environ.get("FASTPROXY_FUZZ_EXAMPLES")
    if explicit:
        return int(explicit)
    return LONG_DEFAULT if PROFILE == "long" else ci


def fuzz(ci: int = 150) -> settings:
    # CI draws the same examples every run (derandomized): a red CI must mean a change
    # broke something, not that this run's draw found an old, pinned defect. Searching
    # for new ones is what the long runs (random draws) are for.
    ci_run = PROFILE == "ci" and not os.environ.get("FASTPROXY_FUZZ_EXAMPLES")
    return settings(
        max_examples=examples(ci),
        derandomize=ci_run,
        deadline=None,
        database=None,
        print_blob=True,
        phases=PHASES,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
