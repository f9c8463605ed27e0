"""Soak: many SSE streams, with client aborts, backend resets and slow readers, through one
gateway process; afterwards the gateway must hold what it held before.

Run (from the repository root, 127.0.0.1 only, stops by itself)::

    .venv/bin/python -m bench.soak                 # 10,000 streams at c=200 (+2,000 warm-up)
    .venv/bin/python -m bench.soak --quick         # 1,000 streams at c=50 (+300 warm-up)
    .venv/bin/python -m bench.soak --streams 200 --concurrency 20 --warmup 40 --seed 7

Processes: ``fastproxy mock-llm --port 0`` and ``fastproxy run`` with a generated YAML
config (one OpenAI backend, the mock; usage tracking on, its SQLite file in a temp dir),
each its own process. The load generator (uvloop, raw sockets) and a sampler thread run
in this process.

Phases:

1. **idle**: the gateway before any request: its sockets and fds, the probe's floor.
2. **preflight**: one normal stream must go through, or the run stops there.
3. **warm-up** (``--warmup`` streams, the same mix), long enough to reach the main
   phase's steady state. Slow readers hold their slot ~100 times longer than the other
   kinds, so they fill most slots only after a few of their lifetimes. After a warm-up
   of 500 the main phase's first three seconds grew RSS from 147 to 182 MiB (1.25x),
   then 1.9 MiB over its last 4,668 streams: the high-water mark of a denser mix, not a
   leak, and not what the RSS check is for. Then the gateway must settle (its TCP
   sockets as when idle, usage queue empty, fd count steady). That state is the
   baseline: its RSS is the *warm* RSS, its fds the *warm* fds. (fds are compared with
   the warm state, not the idle one, because the usage store opens its database files
   with the first record.)
4. **main** (``--streams`` at ``--concurrency``): kinds drawn per stream with ``--seed``
   (``loadgen.py`` says what each kind does).
5. **settle**: polled with a deadline (``--settle-timeout``) until the TCP sockets are
   the idle ones, the fds the warm ones and RSS within ``--rss-tolerance`` of warm.
6. **stop**: SIGTERM; the gateway must exit 0. The usage store writes every queued
   record before the process exits, so records are counted only then.

Every second, one line: progress, RSS, fds, the gateway's TCP sockets by state,
and the event-loop lag probe (``sampler.py`` says exactly what is measured). All
samples, the checks and the figures go to ``bench/results/soak-<UTC time>.json``
(git-ignored).

Checks (exit status 0 when all hold, 1 otherwise):

- **client results**: normal and slow streams end with ``data: [DONE]``; reset streams
  end with the ``stream_truncated`` error event and a properly closed chunked body;
  aborts left as planned; nothing ran out of time.
- **sockets back**: the gateway's TCP sockets by state equal the idle ones (no
  ESTABLISHED or CLOSE_WAIT left over).
- **fds back**: the fd count equals the warm baseline's.
- **rss back**: final RSS at most 1.10x the warm RSS.
- **gateway stopped**: exit status 0 after SIGTERM.
- **one record per request**: every request the gateway received (its session id) has
  exactly one usage record, none is extra, and the three counts agree (``records.py``).
- **record outcomes**: normal and slow ``ok``, abort ``client_aborted``, reset
  ``truncated``.

Settings chosen for a soak rather than a deployment (``procs.gateway_config``): the
backend's ``idle_timeout_s`` is 2 s (``--backend-idle-timeout``) so that a slow reader's
stall (1.5x it) outlasts it within a bounded run: a backend paused by the gateway's own
backpressure must not read as a stalled one. Idle pooled upstream sockets live 2 s so the
settle phase is short. The circuit breaker is off: injected resets are faults of single
requests, and a chance run of them opening the breaker would refuse the normal streams.
"""
