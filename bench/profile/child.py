"""The profiled gateway: ``python -m bench.profile.child CONFIG.yaml OUT.prof``.

Runs the real gateway (``fastproxy.gateway.serve``) on uvloop under cProfile, and dumps
the statistics when it stops (SIGTERM: the gateway's own graceful stop). Only the event
loop's thread is profiled: cProfile follows the thread that enabled it, which is the
one the relay's CPU per request is spent on.
"""

from __future__ import annotations

import cProfile
import sys

import uvloop

from fastproxy.config import load_config
from fastproxy.gateway import serve


def main(config_file: str, out: str) -> int:
    # serve() takes the loaded config (it rereads the file on SIGHUP), not the Config.
    loaded = load_config(config_file=config_file, env={}, use_files=False)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return uvloop.run(serve(loaded))
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
