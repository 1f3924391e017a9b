"""``vmm fuzz``: fuzz a model's register interface (and everything it reaches) or the socket.

    vmm fuzz --target smmuv3 --runs 1000000              # built-in engine, one process
    vmm fuzz --target vtd --time 600 --jobs 2 --crashes crashes/ --corpus corpus/vtd
    vmm fuzz --target vtd --variants --runs 1000000 --jobs 2 --known tests/regressions
    vmm fuzz --target smmuv3 --engine atheris --time 60  # coverage-guided (pip install .[fuzz])
    vmm fuzz --target protocol --runs 1000000            # a live daemon over its socket
    vmm fuzz --reproduce crashes/vtd-exception-....json  # run a reproducer again

One execution is one step (one guest action: a register access, a queue publication, a table
entry, a DMA...) — for the protocol target one message.  The command prints executions per
second (wall clock, and per CPU-second, which the machine's load does not change) and the
coverage reached (behaviours for the built-in engine; libFuzzer's ``cov:`` with atheris).
Each new failure kind is minimized and written to ``--crashes`` as a reproducer (JSON, plus
a trace for ``vmm replay``).  Exit status: 1 when a new failure was found, 0 when the run was
clean, 2 when the target is unavailable here or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmm.fuzz import TARGET_NAMES

DEFAULT_CRASHES = "fuzz-crashes"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", choices=TARGET_NAMES, help="what to fuzz")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=int, metavar="N",
                        help="stop after N executions: steps (built-in), messages (protocol), "
                             "programs (atheris, as libFuzzer counts)")
    budget.add_argument("--time", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (job i uses seed + i)")
    parser.add_argument("--corpus", type=Path, metavar="DIR",
                        help="load programs from and save new finds to DIR")
    parser.add_argument("--crashes", type=Path, metavar="DIR", default=Path(DEFAULT_CRASHES),
                        help=f"where minimized reproducers go (default {DEFAULT_CRASHES}/)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel processes")
    parser.add_argument("--device", metavar="MODEL,key=value,...",
                        help="the model's options (default: the target's, every feature on)")
    parser.add_argument("--variants", action="store_true",
                        help="split the run over the target's device variants (option sets "
                             "that change what the model accepts: widths, stages, modes)")
    parser.add_argument("--engine", choices=("builtin", "atheris"), default="builtin",
                        help="built-in behaviour-guided loop, or atheris/libFuzzer coverage")
    parser.add_argument("--minimize-seconds", type=float, default=60.0, metavar="S",
                        help="time allowed to minimize each failure")
    parser.add_argument("--known", type=Path, metavar="DIR",
                        help="reproducers of open bugs (e.g. tests/regressions): failures of "
                             "their kinds are counted, not reported again")
    parser.add_argument("--reproduce", type=Path, metavar="FILE",
                        help="run a reproducer (a .json the fuzzer wrote) and report")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def main(args: argparse.Namespace) -> int:
    if args.reproduce is not None:
        return reproduce_main(args.reproduce)
    if args.target is None:
        print("vmm fuzz: --target or --reproduce is required", file=sys.stderr)
        return 2
    from vmm.fuzz.targets import unavailable

    reason = unavailable(args.target)
    if reason is not None:
        print(f"vmm fuzz: {reason}", file=sys.stderr)
        return 2
    if args.runs is None and args.time is None:
        args.runs = 100_000
    if args.engine == "atheris":
        return atheris_main(args)
    if args.target == "protocol":
        from vmm.fuzz.protocol import fuzz_protocol_jobs

        return fuzz_protocol_jobs(args)
    return builtin_main(args)


def reproduce_main(path: Path) -> int:
    from vmm.fuzz import reproducer

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"vmm fuzz: {path}: {exc}", file=sys.stderr)
        return 2
    if doc.get("target") == "protocol":
        from vmm.fuzz.protocol import reproduce_protocol

        failure = reproduce_protocol(doc)
        print(f"{path}: protocol, {len(doc['messages'])} messages; recorded failure: "
              f"{(doc.get('failure') or {}).get('kind', 'none')}")
        if failure is None:
            print("no failure: the run is clean now")
            return 0
        print(f"FAILURE {failure.kind}\n{failure.detail}")
        return 1
    try:
        rep, failure = reproducer.run(path)
    except (OSError, ValueError, KeyError) as exc:
        print(f"vmm fuzz: {path}: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {rep.target} ({rep.device}), {len(rep.steps)} steps; recorded failure: "
          f"{rep.kind or 'none'}")
    if failure is None:
        print("no failure: the run is clean now")
        return 0
    print(f"FAILURE {failure.kind}\n{failure.detail}")
    return 1


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    """One built-in engine process (also the whole run when --jobs 1)."""
    from vmm.fuzz.engine import Engine
    from vmm.fuzz.targets import make_target

    target = make_target(spec["target"], spec["device"])
    engine = Engine(target, seed=spec["seed"], corpus_dir=spec["corpus"],
                    crashes_dir=spec["crashes"], minimize_seconds=spec["minimize"],
                    log=None if spec["quiet"] else sys.stderr, known=spec["known"])
    stats = engine.fuzz(runs=spec["runs"], seconds=spec["time"])
    return {"execs": stats.execs, "programs": stats.programs, "seconds": stats.seconds,
            "cpu": stats.cpu_seconds, "device": target.device, "features": stats.features, "corpus": stats.corpus,
            "failures": [(f.kind, f.detail.splitlines()[0], str(f.path) if f.path else None,
                          len(f.steps)) for f in stats.failures],
            "known": stats.known,
            "line": stats.line()}


def builtin_main(args: argparse.Namespace) -> int:
    jobs = max(1, args.jobs)
    devices: list[str | None] = [args.device]
    if args.variants:
        from vmm.fuzz.targets import MODEL_TARGETS

        cls = MODEL_TARGETS[args.target]
        devices = list(cls.variants or (cls.default_device,))
    parts = len(devices) * jobs
    known = known_kinds(args.known, args.target)
    specs = [{
        "target": args.target, "device": device, "seed": args.seed + i,
        "corpus": args.corpus, "crashes": args.crashes, "minimize": args.minimize_seconds,
        "quiet": args.quiet or i > 0,
        "runs": None if args.runs is None else args.runs // parts + (i < args.runs % parts),
        "time": None if args.time is None else args.time / len(devices), "known": known,
    } for i, device in enumerate(d for d in devices for _ in range(jobs))]
    print(f"vmm fuzz: target {args.target}, built-in engine, {jobs} job(s), "
          + (f"{args.runs} execs" if args.runs is not None else f"{args.time} s")
          + (f", {len(devices)} device variants" if args.variants else ""), flush=True)
    results, wall = run_specs(_job, specs, jobs)
    return report(args.target, results, wall)


def known_kinds(directory: Path | None, target: str) -> frozenset[str]:
    """The failure kinds of ``target`` that the reproducers in ``directory`` record as open."""
    if directory is None:
        return frozenset()
    kinds = set()
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("target") == target and (doc.get("expect") or {}).get("fails"):
            kinds.add(str((doc.get("failure") or {}).get("kind")))
    return frozenset(kinds)


def run_specs(job: Callable[[dict[str, Any]], dict[str, Any]], specs: list[dict[str, Any]],
              jobs: int) -> tuple[list[dict[str, Any]], float]:
    """Run ``specs`` on ``jobs`` processes (in this one when there is a single spec); the
    results and the wall-clock seconds it took."""
    start = time.monotonic()
    if len(specs) == 1:
        results = [job(specs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(job, specs, chunksize=1)
    return results, time.monotonic() - start


def report(target: str, results: list[dict[str, Any]], wall: float) -> int:
    execs = sum(r["execs"] for r in results)
    programs = sum(r["programs"] for r in results)
    if len(results) > 1:
        for r in results:
            print(f"  job ({r.get('device') or target}): {r['line']}")
    rate = execs / wall if wall else 0.0
    per_job = [r["execs"] / r["seconds"] for r in results if r["seconds"]]
    cpu = sum(r.get("cpu", 0.0) for r in results)
    per_cpu = f", {execs / cpu:,.0f} per CPU-second" if cpu else ""
    print(f"{target}: {execs} execs ({programs} programs) in {wall:.1f} s: "
          f"{rate:,.0f} exec/s{per_cpu}"
          + (f" ({', '.join(f'{x:,.0f}' for x in per_job)} per job)" if len(per_job) > 1
             else ""))
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"{target}: note: load average {load:.1f} on {os.cpu_count()} CPUs during the run")
    print(f"{target}: coverage {max(r['features'] for r in results)} behaviours "
          f"(largest job), corpus {sum(r['corpus'] for r in results)} programs")
    failures = [f for r in results for f in r["failures"]]
    for kind, first, path, nsteps in failures:
        print(f"FAILURE {kind}: {first}\n  reproducer ({nsteps} steps): {path}")
    known: dict[str, int] = {}
    for r in results:
        for kind, count in (r.get("known") or {}).items():
            known[kind] = known.get(kind, 0) + count
    for kind, count in known.items():
        print(f"known (--known): {kind} in {count} programs")
    if not failures:
        print(f"{target}: clean (no new failure)" if known else f"{target}: clean (no failure)")
    return 1 if failures else 0


def atheris_main(args: argparse.Namespace) -> int:
    """Run the atheris engine in a fresh interpreter, so that the models are instrumented
    as they are imported (atheris cannot instrument modules already loaded here)."""
    if importlib.util.find_spec("atheris") is None:
        print("vmm fuzz: --engine atheris needs the 'atheris' package "
              "(pip install 'viommu[fuzz]')", file=sys.stderr)
        return 2
    if args.target == "protocol":
        print("vmm fuzz: the protocol target runs with the built-in engine only",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "vmm.fuzz.atheris_main", "--target", args.target,
           "--seed", str(args.seed), "--crashes", str(args.crashes),
           "--minimize-seconds", str(args.minimize_seconds)]
    if args.device:
        cmd += ["--device", args.device]
    if args.runs is not None:
        cmd += ["--runs", str(args.runs)]
    if args.time is not None:
        cmd += ["--time", str(args.time)]
    if args.corpus is not None:
        cmd += ["--corpus", str(args.corpus)]
    jobs = max(1, args.jobs)
    procs = [subprocess.Popen([*cmd, "--job", str(i)]) for i in range(jobs)]
    codes = [p.wait() for p in procs]
    return max(codes) if all(c in (0, 1) for c in codes) else 1


if __name__ == "__main__":  # pragma: no cover - the entry point is vmm.cli
    parser = argparse.ArgumentParser(prog="vmm fuzz")
    configure(parser)
    sys.exit(main(parser.parse_args()))
