#!/usr/bin/env python3
"""Executions per second of every fuzz target, and the time one million would take.

    python scripts/bench_fuzz.py                    # 50,000 inputs per target, table
    python scripts/bench_fuzz.py --runs 20000 --json
    python scripts/bench_fuzz.py --targets smmuv3 vtd

Each target runs in this process (the protocol target drives its own daemon subprocess),
one after the other, with the built-in engine and the same seed, so runs are comparable.
Figures: executions per wall-clock second, per CPU-second (this process, plus the daemon for
the protocol target: independent of what else the machine runs), the extrapolated wall time
of 1,000,000 inputs, coverage (behaviours), and the load average at the end — on a shared
2-core machine the wall-clock rate halves when something else is busy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmm.fuzz.engine import Engine  # noqa: E402
from vmm.fuzz.protocol import fuzz_protocol  # noqa: E402
from vmm.fuzz.targets import ALL_TARGETS, make_target, unavailable  # noqa: E402


def bench(name: str, runs: int, seed: int, crashes: Path) -> dict[str, object]:
    if name == "protocol":
        stats = fuzz_protocol(runs=runs, seconds=None, seed=seed, crashes=crashes,
                              minimize_seconds=10, log=None)
        execs, seconds, cpu = stats.execs, stats.seconds, stats.cpu_seconds
        coverage, failures = len(stats.behaviours), [f[0] for f in stats.failures]
    else:
        engine = Engine(make_target(name), seed=seed, crashes_dir=crashes, log=None,
                        minimize_seconds=10)
        result = engine.fuzz(runs=runs)
        execs, seconds, cpu = result.execs, result.seconds, result.cpu_seconds
        coverage, failures = result.features, [f.kind for f in result.failures]
    rate = execs / seconds if seconds else 0.0
    return {"target": name, "execs": execs, "seconds": round(seconds, 2),
            "exec_per_s": round(rate), "exec_per_cpu_s": round(execs / cpu) if cpu else None,
            "million_in_s": round(1_000_000 / rate) if rate else None,
            "coverage": coverage, "failures": failures,
            "load": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", nargs="*", default=list(ALL_TARGETS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        for name in args.targets:
            reason = unavailable(name)
            if reason is not None:
                print(reason, file=sys.stderr)
                continue
            start = time.monotonic()
            rows.append(bench(name, args.runs, args.seed, Path(tmp)))
            if not args.json:
                r = rows[-1]
                print(f"{name:9} {r['execs']:>8} execs {r['seconds']:>7}s "
                      f"{r['exec_per_s']:>7} exec/s  {r['exec_per_cpu_s']} /CPU-s  "
                      f"1M in ~{r['million_in_s']}s  coverage {r['coverage']}  "
                      f"load {r['load']}  failures {r['failures'] or 'none'}  "
                      f"({time.monotonic() - start:.0f}s)", flush=True)
    if args.json:
        print(json.dumps(rows))
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
