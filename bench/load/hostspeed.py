"""How steady is this machine's CPU? A fixed pure-Python workload, timed per second.

    python -m bench.load.hostspeed            # 15 one-second samples on CPU 0
    python -m bench.load.hostspeed --seconds 30 --cpu 1

Nothing else should run meanwhile. Each sample is the number of workload iterations per
second of this process's own CPU time (so time stolen by other processes or by the
hypervisor does not count against it), with the steal ticks the kernel reported for that
CPU. On a machine whose cores run at a steady speed the samples agree within a few
percent; when they do not, no benchmark of CPU-bound Python on that machine can repeat
more closely than they do (docs/BENCHMARKS.md, "Does a second run agree?").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _steal(cpu: int) -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8])
    return 0


def _work() -> None:
    # Dict stores and integer arithmetic: the interpreter's common case, like a relay's.
    d: dict[int, int] = {}
    for i in range(20_000):
        d[i % 1000] = i


def sample(seconds: float, cpu: int) -> tuple[float, int]:
    """(iterations per CPU-second, steal ticks) over ``seconds`` of wall time."""
    steal0, c0, t0 = _steal(cpu), time.process_time(), time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        _work()
        n += 1
    return n / max(time.process_time() - c0, 1e-9), _steal(cpu) - steal0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.load.hostspeed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=int, default=15, help="samples of one second each")
    p.add_argument("--cpu", type=int, default=0, help="the CPU to run on (default 0)")
    ns = p.parse_args(argv)
    os.sched_setaffinity(0, {ns.cpu})
    rates = []
    for i in range(ns.seconds):
        rate, steal = sample(1.0, ns.cpu)
        rates.append(rate)
        print(f"{i + 1:3d}  {rate:8.1f} iterations per CPU-second  steal {steal} ticks")
    lo, hi, med = min(rates), max(rates), statistics.median(rates)
    print(
        f"median {med:.1f}; slowest {lo / med:.2f}x, fastest {hi / med:.2f}x the median; "
        f"fastest / slowest {hi / lo:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
