"""The built-in fuzzing engine: a corpus of programs, structure-aware mutation, and a coverage
map of *behaviour* rather than lines.

Line coverage through ``sys.settrace`` costs more than the model itself, so the map is made of
cheap signals the executor already has (``vmm.fuzz.world``): the (register, field, value
class) of every field a step changed, the (request, status) of every reply, every fault record
(kind, code, stage), every translation's permissions and size, the size and first byte of
every record the model wrote to guest memory (event types, status writes).  A program that
reaches a new signal joins the corpus, cut after the last step that found something.

Each round takes a corpus program (or a seed, or a fresh random one), applies one to four
mutations — insert generated steps, delete, mutate one step field-aware, splice with another
program, duplicate — and runs it on a fresh session.  One step is one execution.

A failure is minimized (``vmm.fuzz.minimize``) and written as a reproducer
(``vmm.fuzz.reproducer``) once per failure kind; fuzzing goes on.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from vmm.fuzz import reproducer
from vmm.fuzz.minimize import minimize
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import RandomSource, Source, Step
from vmm.fuzz.targets.base import ModelTarget
from vmm.fuzz.world import World

MAX_STEPS = 128
MIN_STEPS = 32
CORPUS_MAX = 4096


@dataclass
class FoundFailure:
    kind: str
    detail: str
    steps: list[Step]
    path: Path | None = None


@dataclass
class Stats:
    target: str
    execs: int = 0
    programs: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of this process: exec per CPU-second does not depend on the machine's load."""
    features: int = 0
    corpus: int = 0
    failures: list[FoundFailure] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)
    """Programs that hit an already-recorded failure kind (``--known``), by kind."""

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        cpu_rate = self.execs / self.cpu_seconds if self.cpu_seconds > 0 else 0.0
        return (f"{self.target}: {self.execs} execs in {self.seconds:.1f} s = "
                f"{self.rate:,.0f} exec/s ({cpu_rate:,.0f} per CPU-second, "
                f"{self.programs} programs), "
                f"coverage {self.features} behaviours, corpus {self.corpus}, "
                f"failures {len(self.failures)}"
                + (f", known {sum(self.known.values())}" if self.known else ""))


class Engine:
    """One fuzzing process for one model target."""

    def __init__(self, target: ModelTarget, *, seed: int = 0, corpus_dir: Path | None = None,
                 crashes_dir: Path | None = None, minimize_seconds: float = 60.0,
                 log: TextIO | None = sys.stderr, known: frozenset[str] = frozenset()) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.src: Source = RandomSource(self.rng)
        self.features: set[int] = set()
        self.corpus: list[list[Step]] = []
        self.seeds = target.seeds()
        self.corpus_dir = corpus_dir
        self.crashes_dir = crashes_dir
        self.minimize_seconds = minimize_seconds
        self.log = log
        self.stats = Stats(target.name)
        self._kinds: set[str] = set()
        self.known = known
        """Failure kinds already recorded (``--known``): counted, not minimized again."""
        self._cpu_start = time.process_time()
        if corpus_dir is not None:
            corpus_dir.mkdir(parents=True, exist_ok=True)
            for path in sorted(corpus_dir.glob("*.json")):
                try:
                    self.corpus.append(reproducer.load(path).steps)
                except (OSError, ValueError, KeyError):
                    continue

    # -- choosing what to run ---------------------------------------------------------------

    def next_program(self) -> list[Step]:
        src = self.src
        if self.seeds and (not self.corpus or src.below(16) == 0):
            base = list(self.seeds[src.below(len(self.seeds))])
        elif not self.corpus or src.below(32) == 0:
            base = self.target.generate_program(src, 8 + src.below(56))
        else:
            # Favour recent finds: half the picks come from the newest eighth of the corpus.
            n = len(self.corpus)
            i = n - 1 - src.below(max(1, n // 8)) if src.below(2) else src.below(n)
            base = list(self.corpus[i])
        for _ in range(1 + src.below(4)):
            base = self.mutate(base)
        if len(base) < MIN_STEPS:
            # Short programs spend their time building sessions: grow them by exploring.
            base += [self.target.generate(src) for _ in range(MIN_STEPS - len(base)
                                                               + src.below(MIN_STEPS))]
        return base[:MAX_STEPS]

    def mutate(self, steps: list[Step]) -> list[Step]:
        src, target = self.src, self.target
        k = src.below(10)
        n = len(steps)
        if k < 3 or n == 0:
            at = src.below(n + 1)
            new = [target.generate(src) for _ in range(1 + src.below(4))]
            return steps[:at] + new + steps[at:]
        if k < 6:
            i = src.below(n)
            return steps[:i] + [target.mutate(src, steps[i])] + steps[i + 1 :]
        if k == 6 and n > 1:
            i = src.below(n)
            return steps[:i] + steps[i + 1 + src.below(min(4, n - i)) :]
        if k == 7 and self.corpus:
            other = self.corpus[src.below(len(self.corpus))]
            return steps[: src.below(n + 1)] + other[src.below(len(other) + 1) :]
        if k == 8:
            i = src.below(n)
            return steps[: i + 1] + [steps[i]] + steps[i + 1 :]
        return steps + [target.generate(src) for _ in range(1 + src.below(8))]

    # -- running -------------------------------------------------------------------------------

    def run_program(self, steps: list[Step]) -> Failure | None:
        features = self.features
        world = World(self.target, features=features)
        last_new = -1
        try:
            for i, step in enumerate(steps):
                before = len(features)
                self.stats.execs += 1
                world.run(step)
                if len(features) != before:
                    last_new = i
            self.target.finish(world)
        except Failure as failure:
            return failure
        finally:
            world.close()
        if last_new >= 0:
            kept = steps[: last_new + 1]
            self.corpus.append(kept)
            if len(self.corpus) > CORPUS_MAX:
                del self.corpus[self.src.below(CORPUS_MAX // 2)]
            if self.corpus_dir is not None:
                reproducer.save_program(self.corpus_dir, self.target, kept)
        return None

    def fuzz(self, *, runs: int | None = None, seconds: float | None = None,
             stop: Callable[[], bool] | None = None) -> Stats:
        """Run until ``runs`` executions (steps) or ``seconds`` have passed."""
        stats = self.stats
        start = time.monotonic()
        self._cpu_start = time.process_time()
        last_report = start
        loaded, self.corpus = self.corpus, []
        for steps in loaded:  # a saved corpus first rebuilds the coverage map it found
            if runs is not None and stats.execs >= runs:
                break
            failure = self.run_program(steps)
            stats.programs += 1
            if failure is not None:
                self.handle(failure, steps)
        self.corpus = self.corpus or loaded
        while True:
            now = time.monotonic()
            if runs is not None and stats.execs >= runs:
                break
            if seconds is not None and now - start >= seconds:
                break
            if stop is not None and stop():
                break
            steps = self.next_program()
            if runs is not None:
                steps = steps[: max(1, runs - stats.execs)]
            failure = self.run_program(steps)
            stats.programs += 1
            if failure is not None:
                self.handle(failure, steps)
            if self.log is not None and now - last_report >= 5.0:
                last_report = now
                self.update(now - start)
                print(f"  {stats.line()}", file=self.log, flush=True)
        self.update(time.monotonic() - start)
        return stats

    def update(self, elapsed: float) -> None:
        self.stats.seconds = elapsed
        self.stats.cpu_seconds = time.process_time() - self._cpu_start
        self.stats.features = len(self.features)
        self.stats.corpus = len(self.corpus)

    # -- failures ------------------------------------------------------------------------------

    def handle(self, failure: Failure, steps: list[Step]) -> None:
        """Minimize and save the first failure of each kind; count the rest."""
        if failure.kind in self.known:
            self.stats.known[failure.kind] = self.stats.known.get(failure.kind, 0) + 1
            return
        if failure.kind in self._kinds:
            return
        self._kinds.add(failure.kind)
        if self.log is not None:
            print(f"  FAILURE {failure.kind}: {failure.detail.splitlines()[0]}", file=self.log,
                  flush=True)
        small = minimize(self.target, steps, failure.kind, seconds=self.minimize_seconds)
        found = FoundFailure(failure.kind, failure.detail, small)
        if self.crashes_dir is not None:
            found.path = reproducer.save_failure(self.crashes_dir, self.target, small, failure)
            if self.log is not None:
                print(f"  minimized {len(steps)} -> {len(small)} steps: {found.path}",
                      file=self.log, flush=True)
        self.stats.failures.append(found)
