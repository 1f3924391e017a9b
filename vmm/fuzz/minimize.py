"""Running a program once, and shrinking a failing one (delta debugging over its steps).

``replay_steps`` is the one way a program runs outside the engine's loop: a fresh ``World``,
every step with every oracle, the first ``Failure`` returned.  ``minimize`` is Zeller's
ddmin over the step list with the predicate "fails with the same kind", followed by a pass
that drops single steps and one that simplifies the steps that remain (shorter data).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Step
from vmm.fuzz.targets.base import ModelTarget
from vmm.fuzz.world import World

if TYPE_CHECKING:
    from vmm.record import Recorder

T = TypeVar("T")


def replay_steps(target: ModelTarget, steps: Sequence[Step], *,
                 recorder: Recorder | None = None) -> tuple[Failure | None, World]:
    """Run ``steps`` on a fresh session; (the first failure or None, the closed world)."""
    world = World(target, recorder=recorder)
    try:
        for step in steps:
            world.run(step)
    except Failure as failure:
        return failure, world
    finally:
        world.close()
    return None, world


def ddmin(items: list[T], fails: Callable[[list[T]], bool], *, deadline: float) -> list[T]:
    """The smallest subsequence ddmin finds for which ``fails`` holds (1-minimal when time
    allows)."""
    n = 2
    while len(items) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(items) // n)
        subsets = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        reduced = False
        for i in range(len(subsets)):
            complement = [s for j, sub in enumerate(subsets) if j != i for s in sub]
            if complement and fails(complement):
                items = complement
                n = max(n - 1, 2)
                reduced = True
                break
            if time.monotonic() >= deadline:
                return items
        if not reduced:
            if n >= len(items):
                break
            n = min(len(items), n * 2)
    return items


def minimize(target: ModelTarget, steps: Sequence[Step], kind: str, *,
             seconds: float = 60.0) -> list[Step]:
    """A smaller program that still fails with ``kind``."""
    deadline = time.monotonic() + seconds

    def fails(candidate: list[Step]) -> bool:
        failure, _ = replay_steps(target, candidate)
        return failure is not None and failure.kind == kind

    items = list(steps)
    # The failing step is last: everything after it is noise already.
    items = ddmin(items, fails, deadline=deadline)
    i = 0
    while i < len(items) and time.monotonic() < deadline:
        candidate = items[:i] + items[i + 1 :]
        if candidate and fails(candidate):
            items = candidate
        else:
            i += 1
    for i, step in enumerate(items):
        if time.monotonic() >= deadline:
            break
        for simpler in _simpler(step):
            candidate = items[:i] + [simpler] + items[i + 1 :]
            if fails(candidate):
                items = candidate
                break
    return items


def _simpler(step: Step) -> list[Step]:
    out = []
    if step.op in ("cmds", "qi") and step.args and step.args[0] > 1:
        size = len(step.data) // step.args[0]
        for i in range(step.args[0]):
            out.append(Step(step.op, (1, *step.args[1:]), step.data[i * size : (i + 1) * size]))
    if step.op == "dma" and len(step.args) >= 4 and step.args[3] > 4:
        out.append(Step(step.op, (*step.args[:3], 4, *step.args[4:]), step.data))
    return out
