#!/usr/bin/env bash
# Install fastproxy with its test extras into ./.venv and run the whole suite:
# lint, then every test with the compiled _speedups core, then every test again with the
# pure-Python twin (FASTPROXY_NO_EXTENSIONS=1): the package must work without a compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Editable install builds the Cython extension in place, so tests import the compiled
# core from the source tree. FASTPROXY_REQUIRE_EXTENSIONS makes a failed build loud.
FASTPROXY_REQUIRE_EXTENSIONS=1 .venv/bin/python -m pip install -q -e '.[test,exact-tokens]'
.venv/bin/python -c "import fastproxy._speedups as s; assert s.IMPLEMENTATION == 'cython', s.IMPLEMENTATION; print('speedups:', s.IMPLEMENTATION)"
.venv/bin/ruff check fastproxy tests bench scripts
.venv/bin/python -m pytest "$@"
FASTPROXY_NO_EXTENSIONS=1 .venv/bin/python -c "import fastproxy._speedups as s; assert s.IMPLEMENTATION == 'python'; print('speedups:', s.IMPLEMENTATION)"
FASTPROXY_NO_EXTENSIONS=1 .venv/bin/python -m pytest "$@"
