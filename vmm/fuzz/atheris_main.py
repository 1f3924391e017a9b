"""The atheris engine (``vmm fuzz --engine atheris``), run as ``python -m vmm.fuzz.atheris_main``.

It must be a fresh interpreter: atheris instruments Python bytecode as modules are imported,
so the models (``devices``), the session (``protocols``) and the process layer (``vmm``) are
imported inside ``atheris.instrument_imports`` before anything else loads them.  libFuzzer's
bytes become a program through the same generators as the built-in engine
(``BytesSource``): the fuzzer mutates choices, not raw structures.  libFuzzer prints its own
coverage (``cov:``, ``ft:``, in its final ``DONE`` line) and exec/s per program; at the
end this module prints the steps executed per second.  Here ``--runs`` counts libFuzzer
inputs (programs), as libFuzzer's ``-runs`` does.  A failure is minimized and saved like the built-in engine's, and
then raised so that libFuzzer keeps its crash file too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import atheris

# The fuzzer's own modules are imported first, uninstrumented: coverage of the generators
# would reward new input shapes rather than new model behaviour.
from vmm.fuzz import reproducer
from vmm.fuzz.minimize import minimize
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import BytesSource, Step
from vmm.fuzz.targets import make_target
from vmm.fuzz.world import World

with atheris.instrument_imports(include=["devices", "protocols", "vmm"]):
    from vmm import config

    for _target in config.MODELS.values():
        importlib.import_module(_target.partition(":")[0])

MAX_STEPS = 128


def main() -> None:
    parser = argparse.ArgumentParser(prog="vmm.fuzz.atheris_main")
    parser.add_argument("--target", required=True)
    parser.add_argument("--device")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--time", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job", type=int, default=0)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"))
    parser.add_argument("--minimize-seconds", type=float, default=60.0)
    args = parser.parse_args()

    target = make_target(args.target, args.device)
    counts = {"steps": 0, "programs": 0, "reported": int(time.monotonic())}
    start = time.monotonic()

    def summary() -> None:
        elapsed = time.monotonic() - start
        rate = counts["steps"] / elapsed if elapsed else 0.0
        print(f"{args.target} (atheris, job {args.job}): {counts['steps']} execs "
              f"({counts['programs']} programs) in {elapsed:.1f} s: {rate:,.0f} exec/s",
              flush=True)

    def one_input(data: bytes) -> None:
        src = BytesSource(data)
        steps: list[Step] = []
        while not src.exhausted and len(steps) < MAX_STEPS:
            steps.append(target.generate(src))
        world = World(target)
        try:
            for step in steps:
                counts["steps"] += 1
                world.run(step)
            target.finish(world)
        except Failure as failure:
            small = minimize(target, steps, failure.kind, seconds=args.minimize_seconds)
            path = reproducer.save_failure(args.crashes, target, small, failure)
            print(f"FAILURE {failure.kind}: {failure.detail.splitlines()[0]}\n"
                  f"  reproducer ({len(small)} steps): {path}", flush=True)
            raise
        finally:
            world.close()
        counts["programs"] += 1
        now = time.monotonic()
        # libFuzzer ends the process with C exit(): atexit does not run, so report as we go.
        if counts["programs"] == args.runs or now - counts["reported"] >= 5.0:
            counts["reported"] = int(now)
            summary()

    libfuzzer = [sys.argv[0], f"-seed={args.seed + args.job + 1}", "-print_final_stats=1",
                 "-max_len=2048", "-len_control=0"]
    if args.runs is not None:
        libfuzzer.append(f"-runs={args.runs}")
    if args.time is not None:
        libfuzzer.append(f"-max_total_time={max(1, int(args.time))}")
    if args.corpus is not None:
        args.corpus.mkdir(parents=True, exist_ok=True)
        libfuzzer.append(str(args.corpus))
    args.crashes.mkdir(parents=True, exist_ok=True)
    libfuzzer.append(f"-artifact_prefix={args.crashes}/")
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
