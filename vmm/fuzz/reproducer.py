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
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmm.fuzz.minimize import replay_steps
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Step
from vmm.fuzz.targets import make_target, unavailable
from vmm.fuzz.targets.base import ModelTarget

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
    except ImportError:
        return None
    try:
        recorder = Recorder(str(path), target.config, source="vmm fuzz")
    except OSError as exc:
        log.warning("cannot record %s: %s", path, exc)
        return None
    try:
        failure, world = replay_steps(target, steps, recorder=recorder)
    finally:
        recorder.close()
    if failure is not None and failure.kind.startswith("exception:") and world.last_message:
        _append_crashing_request(path, world.last_message)
    return path


def _append_crashing_request(path: Path, message: bytes) -> None:
    """The recorder leaves out a request that raised (it never got a reply).  Put it back as
    a raw ``msg`` event with no reply, before the ``end`` line, so that ``vmm replay`` sends
    it too and meets the same exception."""
    from protocols import trace as t

    lines = path.read_text().splitlines()
    if not lines:
        return
    end = json.loads(lines[-1])
    code, flags, size = struct.unpack_from("<III", message)
    event = {"k": "msg", "code": code, "flags": flags, "size": size,
             "payload": message[12:].hex(), "reply": ""}
    if end.get("k") == "end":
        end["events"] = int(end["events"]) + 1
        lines = [*lines[:-1], t.encode_line(event).rstrip("\n"),
                 t.encode_line(end).rstrip("\n")]
    else:
        lines.append(t.encode_line(event).rstrip("\n"))
    path.write_text("\n".join(lines) + "\n")


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
