"""Reproducers and corpus files: a program as JSON, and the same run as a viommu trace.

A reproducer is one JSON object::

    {"format": "viommu-fuzz", "version": 1,
     "target": "vtd", "device": "vtd,scalable-mode=on,...",
     "failure": {"kind": "exception:KeyError at ...", "detail": "..."},   # absent in a corpus
     "steps": [{"op": "w", "args": [24, 4, 2147483648]},
               {"op": "qi", "args": [1], "data": "0500..."}, ...]}

``vmm fuzz --reproduce FILE`` runs the steps on a fresh session with every oracle and says
whether the failure is still there; ``tests/regressions`` runs each checked-in reproducer the
same way.  Next to a failure's JSON the fuzzer also writes the run as a trace
(``NAME.trace.jsonl``, ``protocols/trace.py``), recorded through ``vmm.record.Recorder``, that
``vmm replay`` re-runs: bit-exact up to the failing step, and — for an exception — ending with
the request that raised, so the replay meets it too.  Oracle failures (a malformed reply, a
register invariant) replay without divergence: the trace shows the behaviour, the JSON's
``failure`` says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmm.fuzz.minimize import replay_steps
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Step
from vmm.fuzz.targets import make_target, unavailable
from vmm.fuzz.targets.base import ModelTarget

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

FORMAT = "viommu-fuzz"
VERSION = 1


@dataclass
class Reproducer:
    target: str
    device: str
    steps: list[Step]
    kind: str | None
    detail: str | None


def _doc(target: ModelTarget, steps: list[Step], failure: Failure | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "target": target.name,
                           "device": target.device}
    if failure is not None:
        doc["failure"] = {"kind": failure.kind, "detail": failure.detail}
    doc["steps"] = [s.to_json() for s in steps]
    return doc


def _name(target: ModelTarget, steps: list[Step], kind: str | None) -> str:
    digest = hashlib.sha1(json.dumps([s.to_json() for s in steps]).encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", kind or "corpus").strip("-").lower()[:60]
    return f"{target.name}-{slug}-{digest}"


def save_program(directory: Path, target: ModelTarget, steps: list[Step]) -> Path:
    path = directory / f"{_name(target, steps, None)}.json"
    if not path.exists():
        path.write_text(json.dumps(_doc(target, steps, None)) + "\n")
    return path


def save_failure(directory: Path, target: ModelTarget, steps: list[Step],
                 failure: Failure) -> Path:
    """Write the reproducer (and its trace, where the recorder is available)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = _name(target, steps, failure.kind)
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(_doc(target, steps, failure), indent=1) + "\n")
    record_trace(target, steps, directory / f"{stem}.trace.jsonl")
    return path


def record_trace(target: ModelTarget, steps: list[Step], path: Path) -> Path | None:
    """Run ``steps`` once more with a trace recorder attached; the trace's path, or None."""
    try:
        from vmm.record import Recorder
    except ImportError:  # a tree without the recorder: the JSON alone reproduces
        return None
    try:
        recorder = Recorder(str(path), target.config, source="vmm fuzz")
    except OSError as exc:
        log.warning("cannot record %s: %s", path, exc)
        return None
    try:
        replay_steps(target, steps, recorder=recorder)
    finally:
        recorder.close()
    return path


def load(path: Path | str) -> Reproducer:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT or int(doc.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: not a viommu-fuzz file of version <= {VERSION}")
    failure = doc.get("failure") or {}
    return Reproducer(str(doc["target"]), str(doc["device"]),
                      [Step.from_json(s) for s in doc["steps"]],
                      failure.get("kind"), failure.get("detail"))


def run(path: Path | str) -> tuple[Reproducer, Failure | None]:
    """Run a reproducer; (what it is, the failure it still causes or None)."""
    rep = load(path)
    reason = unavailable(rep.target)
    if reason is not None:
        raise ValueError(reason)
    failure, _ = replay_steps(make_target(rep.target, rep.device), rep.steps)
    return rep, failure
