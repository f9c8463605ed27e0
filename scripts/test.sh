#!/usr/bin/env bash
# Install fastproxy with its test extras into ./.venv and run the suite: lint, format and type
# checks, then every test once with the compiled _speedups core, then, with the
# pure-Python twin forced (FASTPROXY_NO_EXTENSIONS=1), the two suites that cover what
# differs between the builds: tests/speedups (both implementations side by side, in one
# process) and tests/twin (a real gateway process per implementation). Each of those two
# runs once, in the second pass, since it tests both builds itself; docs/testing.md says
# why this replaces running the whole suite a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# What this script needs before pip can take over, each checked with one line on stderr
# and exit 2 (docs/cli.md) instead of a page of venv or pip output.
fail() { echo "scripts/test.sh: $*" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
    command -v "$PY" >/dev/null 2>&1 ||
        fail "$PY not found; set PYTHON to a Python 3.11 or newer"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        fail "$PY is not Python 3.11 or newer; set PYTHON to one"
    out=$("$PY" -m venv .venv 2>&1) ||
        fail "$PY -m venv .venv failed: $(printf '%s\n' "$out" | grep -m1 . || true) (Debian/Ubuntu: apt install python3-venv)"
fi
# A venv whose ensurepip step failed has a python and no pip, and is not remade above.
.venv/bin/python -m pip --version >/dev/null 2>&1 ||
    fail ".venv has no pip (made without ensurepip?); remove .venv, install python3-venv, rerun"
.venv/bin/python -m pip install -q --upgrade pip
# tests/dashboard drive a real headless Chromium; a fresh machine (root, apt) gets Debian's.
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 &&
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing chromium and chromium-driver (apt-get) for tests/dashboard" >&2
    out=$( { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium chromium-driver; } 2>&1) ||
        fail "apt-get install chromium chromium-driver failed: $(printf '%s\n' "$out" | tail -n 3)"
fi
# The usage store suites run against a real PostgreSQL server (tests/storage/pg_server.py
# makes a throwaway cluster with Debian's binaries); a fresh machine (root, apt) gets them.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null &&
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing postgresql (apt-get) for the usage store tests" >&2
    out=$( { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends postgresql; } 2>&1) ||
        fail "apt-get install postgresql failed: $(printf '%s\n' "$out" | tail -n 3)"
fi
# Editable install builds the Cython extension in place, so tests import the compiled
# core from the source tree. FASTPROXY_REQUIRE_EXTENSIONS makes a failed build loud.
FASTPROXY_REQUIRE_EXTENSIONS=1 .venv/bin/python -m pip install -q -e '.[test,exact-tokens]'
.venv/bin/python -c "import fastproxy._speedups as s; assert s.IMPLEMENTATION == 'cython', s.IMPLEMENTATION; print('speedups:', s.IMPLEMENTATION)"
.venv/bin/ruff check fastproxy tests bench scripts
.venv/bin/ruff format --check fastproxy tests bench scripts
# Types: the package's seams are typed Protocols; mypy (settings in pyproject.toml) keeps
# every implementation true to them. The import rules are a test (tests/test_architecture.py).
.venv/bin/mypy fastproxy
# Pass 1, compiled core: everything except the two suites that test both builds themselves.
# Arguments go to this pass only (a path, -k or -x for the suite a developer is working on;
# a path under tests/speedups or tests/twin given here is run here, --ignore or not).
.venv/bin/python -m pytest --ignore=tests/speedups --ignore=tests/twin "$@"
# Pass 2, pure-Python twin selected in this process too.
FASTPROXY_NO_EXTENSIONS=1 .venv/bin/python -c "import fastproxy._speedups as s; assert s.IMPLEMENTATION == 'python'; print('speedups:', s.IMPLEMENTATION)"
FASTPROXY_NO_EXTENSIONS=1 .venv/bin/python -m pytest tests/speedups tests/twin
