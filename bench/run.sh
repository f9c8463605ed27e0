#!/usr/bin/env bash
# One command for the load benchmark: direct vs nginx vs fastproxy (docs/BENCHMARKS.md).
#   bash bench/run.sh                 # full suite: 10 rounds x 3 s, about 25-35 minutes
#   bash bench/run.sh --quick         # smoke run, about 3 minutes
#   bash bench/run.sh --scenarios a,b --rounds 5
# Needs the project venv (.venv, see README); installs nginx and wrk from Debian's
# packages when they are missing and we are root. Results: bench/results/<timestamp>.*
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [[ ! -x $PY ]]; then
    echo "bench/run.sh: no .venv here; create it first (see README.md)" >&2
    exit 2
fi
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    if (( ${#missing[@]} )); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y "${missing[@]}" >/dev/null; }
    fi
fi
echo "load before: $(uptime)" >&2
exec "$PY" -m bench.load "$@"
