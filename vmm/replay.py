"""``vmm replay``: re-run a recorded trace with no guest attached, or import a foreign one.

A viommu trace (``protocols/trace.py``, written by ``vmm daemon --record``) is replayed
bit-exact: a fresh ``GuestSession`` is built from the recorded configuration, every recorded
request goes through a ``protocols.session.Connection`` as the daemon's would, guest memory is
a ``ReplayMemory`` that answers each read with the bytes the trace recorded, and everything the
models do is checked against the trace in order: each reply, each memory read (address and
size), each memory write, interrupt and back-end channel message, and the registers after
every request (the ``regs`` members).  A difference is a *divergence*; it is reported with the
trace line, the request it happened in, expected against observed, and the registers whose
replayed values differ from the recorded ones.

    vmm replay TRACE [--continue] [--until N] [--quiet]
    vmm replay --format qtest SCRIPT --device smmuv3 [--ram GPA:SIZE ...]
    vmm replay --format qemu-trace LOG --device vtd [--region NAME] [--ignore REG ...]

Imported formats run against a real, zeroed guest RAM (``--ram``; default: the first 2 GiB
less the device windows):

* qtest scripts and logs (``protocols/qtest.py``): absolute addresses inside a device's
  window become MMIO at ``address - base``, others touch RAM.  Every ``readX`` result is
  reported; a log's ``[S]`` reply lines are compared like QEMU trace reads (below).
* QEMU trace logs (``protocols/qemutrace.py``): ``memory_region_ops_write`` of the region is
  replayed, ``memory_region_ops_read`` values are compared under a per-register mask.

The read mask, derived from the register declarations (``devices.regs.Register``): a read
of an *ID register* is compared in all its bits, any other read is only shown.  An ID register
is one whose every bit is read-only or reserved (no write-1-to-clear, clear-on-read or
write-only bits) and whose reset value is not zero: the constant an implementation chose
(SMMU_IDR0/1/3/5, IIDR, AIDR, the CoreSight ID block; VT-d VER, CAP, ECAP, VCCAP).  Read-only
registers that reset to zero are status the device moves (CR0ACK, GERROR, GSTS, IQH, FRCD...),
and everything writable depends on what the guest wrote and on guest memory a foreign trace
does not carry, so the architecture does not fix what they read.  A mismatch in an ID register
says that the model was not configured like the traced one; ``--ignore REG`` drops a register
from the comparison.

Exit status: 0 no divergence; 1 divergences (or read mismatches); 2 the input cannot be read
(not a trace, an unsupported qtest command, a missing file).
"""

from __future__ import annotations

import argparse
import bisect
import errno as E
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from devices.regs import Register, RegisterFile
from protocols import messages as m
from protocols import trace as t
from protocols.messages import RegionSpec
from protocols.session import Connection
from vmm.config import (
    ConfigError,
    DaemonConfig,
    DeviceSpec,
    HelpRequested,
    build_devices,
    model_class,
)
from vmm.guest import GuestSession
from vmm.memory import PAGE_SIZE, RegionError, SessionMemory, check_spec, make_memfd
from vmm.record import model_registers

EXIT_OK, EXIT_DIVERGED, EXIT_BAD_INPUT = 0, 1, 2


# -- configuration -------------------------------------------------------------------------------

def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples ``DaemonConfig.to_json`` turned into lists."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def config_from_json(doc: dict[str, Any]) -> DaemonConfig:
    """The ``DaemonConfig`` a trace header carries (``DaemonConfig.to_json``'s inverse)."""
    try:
        specs = [DeviceSpec(d["model"], int(d["id"]), str(d["name"]), int(d["segment"]),
                            {k: _tuples(v) for k, v in d["options"].items()})
                 for d in doc["devices"]]
        config = DaemonConfig(specs)
        if "devid_map" in doc or "dma_masters" in doc:
            from vmm.devidmap import restore  # the ID map's own inverse of to_json

            restore(config, doc)
    except (KeyError, TypeError, ValueError, ImportError) as exc:
        raise t.TraceError(f"bad configuration in the header: {exc!r}", 1) from None
    return config


# -- divergences -----------------------------------------------------------------------------

@dataclass
class StateDiff:
    device: str
    register: str
    expected: int | None
    observed: int | None

    def __str__(self) -> str:
        exp = "-" if self.expected is None else f"{self.expected:#x}"
        obs = "-" if self.observed is None else f"{self.observed:#x}"
        return f"{self.device}.{self.register}: expected {exp}, observed {obs}"


@dataclass
class Divergence:
    """Where the replay and the trace part ways."""

    line: int
    """The trace line of the expected event (the request's line for a reply or state)."""
    request_line: int
    request: str
    what: str
    expected: str
    observed: str
    state: list[StateDiff] = field(default_factory=list)

    @property
    def event(self) -> int:
        return self.line - 1

    def render(self) -> str:
        lines = [f"divergence at line {self.line} (event {self.event}): {self.what}",
                 f"  in request at line {self.request_line}: {self.request}",
                 f"  expected: {self.expected}",
                 f"  observed: {self.observed}"]
        if self.state:
            lines.append("  device state that differs:")
            lines += [f"    {d}" for d in self.state]
        return "\n".join(lines)


@dataclass
class Summary:
    events: int = 0
    requests: int = 0
    seconds: float = 0.0
    divergences: list[Divergence] = field(default_factory=list)
    complete: bool = False
    """The trace ended with its ``end`` event (the recorder closed it)."""
    stopped_at: int | None = None
    """``--until``: the last event replayed."""
    stopped_early: bool = False
    """A divergence ended the replay (no ``--continue``)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class _Stop(Exception):  # noqa: N818 - control flow inside this module, never escapes it
    """The first divergence ends a replay without ``--continue``."""


# -- guest memory answered from the trace -----------------------------------------------------

class ReplayMemory:
    """A ``SessionMemory`` whose reads are answered from the trace and whose writes are
    checked against it; the memory table is kept as a layout only (no bytes behind it)."""

    __slots__ = ("run", "generation", "_starts", "_spans")

    def __init__(self, run: TraceReplay) -> None:
        self.run = run
        self.generation = 0
        self._starts: list[int] = []
        self._spans: list[tuple[int, int]] = []  # (gpa, end), sorted

    def ram_ranges(self) -> list[tuple[int, int]]:
        return [(gpa, end - gpa) for gpa, end in self._spans]

    def contains(self, gpa: int, length: int) -> bool:
        spans = self._spans
        while length > 0:
            i = bisect.bisect_right(self._starts, gpa) - 1
            if i < 0 or gpa >= spans[i][1]:
                return False
            chunk = min(length, spans[i][1] - gpa)
            gpa += chunk
            length -= chunk
        return True

    def _install(self, spans: list[tuple[int, int]]) -> None:
        spans.sort()
        self._spans = spans
        self._starts = [s[0] for s in spans]
        self.generation += 1

    # accesses
    def read(self, gpa: int, length: int) -> bytes | None:
        return self.run.memory_read(gpa, length)

    def read_u32(self, gpa: int) -> int | None:
        data = self.run.memory_read(gpa, 4)
        return None if data is None else int.from_bytes(data, "little")

    def read_u64(self, gpa: int) -> int | None:
        data = self.run.memory_read(gpa, 8)
        return None if data is None else int.from_bytes(data, "little")

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        ok = self.contains(gpa, len(data))
        self.run.memory_write(gpa, bytes(data), ok)
        return ok

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.write(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.write(gpa, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    # the table: its outcome is an input (it depends on the fds the guest sent)
    def set_table(self, entries: list[tuple[RegionSpec, int]]) -> None:
        specs = [spec for spec, _ in entries]
        self.run.memory_table("set", specs)
        self._install([(s.gpa, s.gpa + s.size) for s in specs])

    def add(self, spec: RegionSpec, fd: int) -> None:
        self.run.memory_table("add", [spec, *(RegionSpec(g, e - g, 0) for g, e in self._spans)])
        self._install([*self._spans, (spec.gpa, spec.gpa + spec.size)])

    def remove(self, gpa: int, size: int) -> None:
        self.run.memory_table("rem", [])
        self._install([s for s in self._spans if s != (gpa, gpa + size)])

    def clear(self) -> None:
        self._install([])


def _table_error(specs: list[RegionSpec]) -> RegionError | None:
    """What GuestMemory would say about a table, its fds aside (a fallback after a
    divergence, when the trace has no answer)."""
    try:
        for spec in specs:
            check_spec(spec)
    except RegionError as exc:
        return exc
    ordered = sorted(specs, key=lambda s: s.gpa)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.gpa < a.gpa + a.size:
            return RegionError(-E.EINVAL, "regions overlap")
    return None


# -- fds a replayed request carries ------------------------------------------------------------

class _Fds:
    """Stand-ins for the fds a recorded request carried: of the same kind, so the session's
    checks (eventfd? connected stream?) answer as they did."""

    def __init__(self) -> None:
        self.peers: list[socket.socket] = []

    def make(self, kinds: Iterable[str]) -> list[int]:
        fds = []
        for kind in kinds:
            if kind == "eventfd":
                fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            elif kind == "stream":
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                ours.setblocking(False)
                self.peers.append(ours)
                fds.append(theirs.detach())
            elif kind == "socket":
                fds.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach())
            elif kind.startswith("file:"):
                fds.append(make_memfd(int(kind[5:]), "replay"))
            elif kind == "bad":
                fds.append(-1)
            else:
                fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        return fds

    def drain(self) -> None:
        for peer in self.peers:
            try:
                while peer.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.peers.clear()


# -- replaying a viommu trace --------------------------------------------------------------------

Effect = tuple[int, t.Event]
_EFFECT_MEMBERS = {"read": {"gpa", "n", "data"}, "write": {"gpa", "data"}, "table": {"op"},
                   "irq": {"dev", "vec"}, "atc_inv": {"seg", "req", "pasid", "addr", "size"},
                   "page_resp": {"seg", "req", "pasid", "group", "code"}}
_MMIO_KINDS = frozenset(["mmio_read", "mmio_write"])


def _hx(value: str | None) -> int:
    return 0 if value is None else int(value, 16)


class _ModelState:
    """One model's registers: the replayed ones, and the ones the trace says it has (a list
    in the order of the register file's dict, so that comparing them is one list compare)."""

    __slots__ = ("device", "name", "values", "view", "names", "index", "expected", "extra")

    def __init__(self, device: str, name: str, values: dict[str, int]) -> None:
        self.device = device
        self.name = name
        self.values = values  # RegisterFile.values: one dict for the file's life
        self.view = values.values()
        self.names = list(values)
        self.index = {reg: i for i, reg in enumerate(self.names)}
        self.expected: list[int | None] = list(self.view)
        self.extra: dict[str, int] = {}
        """Registers the trace names that this model does not have."""

    def load(self, recorded: dict[str, int]) -> None:
        self.expected = [recorded.get(reg) for reg in self.names]
        self.extra = {reg: v for reg, v in recorded.items() if reg not in self.index}

    def apply(self, delta: dict[str, str]) -> None:
        index, expected = self.index, self.expected
        for reg, value in delta.items():
            i = index.get(reg)
            if i is None:
                self.extra[reg] = int(value, 16)
            else:
                expected[i] = int(value, 16)

    def same(self) -> bool:
        return not self.extra and [*self.view] == self.expected

    def diff(self) -> list[StateDiff]:
        current = dict(self.values)
        out = [StateDiff(self.name, reg, exp, current.get(reg))
               for reg, exp in zip(self.names, self.expected, strict=True)
               if exp != current.get(reg)]
        out += [StateDiff(self.name, reg, v, None) for reg, v in self.extra.items()]
        return out


class TraceReplay:
    """One trace re-run against a fresh session; the session's ``Observer``."""

    def __init__(self, header: t.Event, *, keep_going: bool = False) -> None:
        self.header = header
        self.keep_going = keep_going
        self.config = config_from_json(header["config"])
        self.summary = Summary()
        self._effects: list[Effect] = []
        self._cursor = 0
        self._req_line = 0
        self._req_ev: t.Event = {"k": "none"}
        self._found: list[Divergence] = []
        self.memory = ReplayMemory(self)
        self.session = GuestSession(self.config, memory=self.memory, recorder=self)
        self.conn = Connection(self.session)
        self._fds = _Fds()
        names = {str(dev): slot.spec.name for dev, slot in self.session.slots.items()}
        self._models = [_ModelState(dev, names[dev], regs.values)
                        for dev, regs in model_registers(self.session)]
        self._model_of = {st.device: st for st in self._models}
        self._one_model = {int(st.device): [st] for st in self._models}
        self._reported: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self._check_initial_state()

    # -- the Observer side ----------------------------------------------------------------------

    def wrap_memory(self, memory: SessionMemory) -> SessionMemory:
        return memory

    def _take(self, kind: str, match: Callable[[t.Event], bool], observed: str,
              ) -> t.Event | None:
        """The next expected effect if it is ``kind`` and matches; otherwise a divergence and
        the first matching effect further on (skipping what lies between), or None."""
        effects, i = self._effects, self._cursor
        if i < len(effects):
            ev = effects[i][1]
            if ev["k"] == kind and match(ev):
                self._cursor = i + 1
                return ev
            self._diverge(effects[i][0], f"{kind} not as recorded",
                          f"line {effects[i][0]}: {_effect_text(ev)}", observed)
        else:
            self._diverge(self._after_line(), f"{kind} the trace does not have",
                          "nothing more in this request", observed)
        for j in range(i + 1, len(effects)):
            ev = effects[j][1]
            if ev["k"] == kind and match(ev):
                self._cursor = j + 1
                return ev
        return None

    def _after_line(self) -> int:
        return self._effects[-1][0] + 1 if self._effects else self._req_line + 1

    def memory_read(self, gpa: int, length: int) -> bytes | None:
        effects, i = self._effects, self._cursor
        if i < len(effects):  # the common case, kept short
            ev = effects[i][1]
            if ev["k"] == "read" and ev["n"] == length and int(ev["gpa"], 16) == gpa:
                self._cursor = i + 1
                data = ev["data"]
                return None if data is None else bytes.fromhex(data)
        ev2 = self._take("read", lambda e: e["n"] == length and int(e["gpa"], 16) == gpa,
                         f"read gpa={gpa:#x} n={length}")
        if ev2 is not None:
            data = ev2["data"]
            return None if data is None else bytes.fromhex(data)
        return bytes(length) if self.memory.contains(gpa, length) else None

    def memory_write(self, gpa: int, data: bytes, ok: bool) -> None:
        hexdata = data.hex()
        self._take("write", lambda e: (int(e["gpa"], 16) == gpa and e["data"] == hexdata
                                       and e.get("ok", True) == ok),
                   f"write gpa={gpa:#x} data={_short(hexdata)}" + ("" if ok else " ok=false"))

    def memory_table(self, op: str, specs: list[RegionSpec]) -> None:
        ev = self._take("table", lambda e: e["op"] == op, f"table op={op}")
        if ev is None:
            error = _table_error(specs) if op != "rem" else None
            if error is not None:
                raise error
            return
        errno = ev.get("errno", 0)
        if errno:
            raise RegionError(int(errno), "refused, as recorded")

    def irq(self, device: int, vector: int, msi_address: int, msi_data: int,
            delivered: bool) -> bool:
        # Whether an MSI was delivered is an input (the trace's "ok"): the replay's own
        # channel and fds are not the guest's.
        ev = self._take("irq", lambda e: (e["dev"] == device and e["vec"] == vector
                                          and _hx(e.get("addr")) == msi_address
                                          and _hx(e.get("data")) == msi_data),
                        f"irq dev={device} vec={vector}"
                        + (f" addr={msi_address:#x} data={msi_data:#x}" if msi_address else ""))
        if ev is None or not msi_address:
            return delivered
        return bool(ev.get("ok", True))

    def atc_invalidate(self, segment: int, requester: int, pasid: int, address: int,
                       size: int, delivered: bool) -> bool:
        want = (segment, requester, None if pasid == m.NO_PASID else pasid, address, size)
        ev = self._take("atc_inv", lambda e: (e["seg"], e["req"], e["pasid"], _hx(e["addr"]),
                                              _hx(e["size"])) == want,
                        f"atc_inv seg={segment} req={requester:#x} pasid={want[2]} "
                        f"addr={address:#x} size={size:#x}")
        return delivered if ev is None else bool(ev.get("ok", True))

    def page_response(self, segment: int, requester: int, pasid: int, group: int,
                      code: int) -> None:
        want = (segment, requester, None if pasid == m.NO_PASID else pasid, group, code)
        self._take("page_resp", lambda e: (e["seg"], e["req"], e["pasid"], e["group"],
                                           e["code"]) == want,
                   f"page_resp seg={segment} req={requester:#x} pasid={want[2]} "
                   f"group={group} code={code}")

    # -- divergences ------------------------------------------------------------------------------

    def _diverge(self, line: int, what: str, expected: str, observed: str) -> None:
        self._found.append(Divergence(line, self._req_line, t.describe(self._req_ev), what,
                                      expected, observed))

    def state_diff(self) -> list[StateDiff]:
        """Every register whose replayed value is not the recorded one."""
        return [d for st in self._models if not st.same() for d in st.diff()]

    def _check_initial_state(self) -> None:
        recorded = t.header_state(self.header)
        for st in self._models:
            if st.device in recorded:
                st.load(recorded[st.device])
        diff = self.state_diff()
        if diff:
            self.summary.divergences.append(Divergence(
                1, 1, "(the models as built from the header's configuration)",
                "initial registers differ", "the registers the header records",
                "the registers of the models built now", diff))
            for d in diff:
                self._reported[(d.device, d.register)] = (d.expected, d.observed)

    def _finish_request(self) -> None:
        """Leftover effects, the registers; then the request's divergences are final."""
        ev = self._req_ev
        deltas = ev.get("regs")
        if deltas:
            model_of = self._model_of
            for dev, delta in deltas.items():
                st = model_of.get(dev)
                if st is not None:
                    st.apply(delta)
        if not self._found and self._cursor == len(self._effects):
            # An MMIO request reaches one model: only its registers can have changed (the
            # recorder looks no further either).
            models = self._one_model.get(ev["dev"], self._models) \
                if ev["k"] in _MMIO_KINDS else self._models
            for st in models:
                if [*st.view] != st.expected or st.extra:
                    break
            else:
                return  # the common case: as recorded
        self._finish_divergent()

    def _finish_divergent(self) -> None:
        if self._cursor < len(self._effects):
            line, ev = self._effects[self._cursor]
            rest = len(self._effects) - self._cursor
            self._diverge(line, "recorded output the replay did not produce",
                          f"line {line}: {_effect_text(ev)}"
                          + (f" (and {rest - 1} more)" if rest > 1 else ""), "nothing")
        fresh: list[StateDiff] = []
        for diff in self.state_diff():
            key = (diff.device, diff.register)
            if self._reported.get(key) != (diff.expected, diff.observed):
                self._reported[key] = (diff.expected, diff.observed)
                fresh.append(diff)
        if fresh and not self._found:
            self._diverge(self._req_line, "registers differ after the request",
                          ", ".join(f"{d.device}.{d.register}={_h(d.expected)}" for d in fresh),
                          ", ".join(f"{d.device}.{d.register}={_h(d.observed)}" for d in fresh))
        if self._found:
            found = self._found if self.keep_going else self._found[:1]
            self._found = []
            state = self.state_diff()
            for d in found:
                d.state = state
            self.summary.divergences.extend(found)
            if not self.keep_going:
                raise _Stop

    # -- requests ---------------------------------------------------------------------------------

    def _request(self, line: int, ev: t.Event, effects: list[Effect]) -> None:
        self._effects = effects
        self._cursor = 0
        self._req_line = line
        self._req_ev = ev
        try:
            fast = t.fast_exchange(ev)
            if fast is None:
                header, payload = t.request_bytes(ev)
                expected = t.reply_bytes(ev)
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise t.TraceError(f"bad {ev.get('k')} event: {exc!r}", line) from None
        conn = self.conn
        if fast is not None:
            expected = fast[1]
            reply = conn.receive(fast[0])
        else:
            kinds = ev.get("fds")
            if kinds is None:
                reply = conn.receive(header + payload if payload else header)
            elif ev.get("late") and payload:  # fds that came with payload bytes
                reply = conn.receive(header)
                reply += conn.receive(payload, self._fds.make(kinds))
            else:
                reply = conn.receive(header + payload, self._fds.make(kinds))
            if self._fds.peers:
                self._fds.drain()
        if reply != expected:
            self._diverge(line, "reply differs",
                          _reply_text(ev, expected), _reply_text(ev, reply))
        self._finish_request()

    def run(self, events: Iterable[tuple[int, t.Event]], *, until: int | None = None,
            progress: Callable[[int], None] | None = None) -> Summary:
        """Replay ``events`` (line, event); stops at the first divergence unless
        ``keep_going``, and before the first request past event ``until``."""
        summary = self.summary
        start = time.perf_counter()
        it: Iterator[tuple[int, t.Event]] = iter(events)
        requests = t.REQUEST_KINDS
        effect_kinds = t.EFFECT_KINDS
        pending = next(it, None)
        count = 0
        try:
            if summary.divergences and not self.keep_going:
                raise _Stop
            while pending is not None:
                line, ev = pending
                kind = ev["k"]
                if kind in requests:
                    if until is not None and line - 1 > until:
                        summary.stopped_at = until
                        break
                    effects: list[Effect] = []
                    pending = next(it, None)
                    while pending is not None and pending[1]["k"] in effect_kinds:
                        if not pending[1].keys() >= _EFFECT_MEMBERS[pending[1]["k"]]:
                            raise t.TraceError(f"a {pending[1]['k']} event needs members "
                                               f"{sorted(_EFFECT_MEMBERS[pending[1]['k']])}",
                                               pending[0])
                        effects.append(pending)
                        pending = next(it, None)
                    count += 1 + len(effects)
                    summary.requests += 1
                    self._request(line, ev, effects)
                    if progress is not None and summary.requests & 0x3FF == 0:
                        progress(count)
                    continue
                pending = next(it, None)
                count += 1
                if kind == "end":
                    summary.complete = True
                elif kind == "eof":
                    self.conn.eof()
                elif kind in effect_kinds:
                    self._req_line, self._req_ev, self._effects = line, {"k": "none"}, []
                    self._diverge(line, "output before any request", _effect_text(ev),
                                  "nothing")
                    self._finish_request()
                else:
                    raise t.TraceError(f"unknown event kind {kind!r}", line)
        except _Stop:
            summary.stopped_early = True
        finally:
            summary.events = count
            summary.seconds = time.perf_counter() - start
        return summary

    def registers(self) -> list[tuple[str, str, int]]:
        """(device, register, value) of registers that left their header (reset) value."""
        initial = t.header_state(self.header)
        out = []
        for st in self._models:
            base = initial.get(st.device, {})
            for reg, value in st.values.items():
                if base.get(reg) != value:
                    out.append((st.name, reg, value))
        return out

    def close(self) -> None:
        self.session.close()
        self._fds.close()


def _h(value: int | None) -> str:
    return "-" if value is None else f"{value:#x}"


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) // 2} bytes)"


def _effect_text(ev: t.Event) -> str:
    return " ".join([ev["k"], *(f"{k}={_short(str(v))}" for k, v in ev.items() if k != "k")])


def _reply_text(ev: t.Event, reply: bytes) -> str:
    fields = t.describe_reply(ev, reply)
    if not fields:
        return "status 0"
    return " ".join(f"{k}={_short(str(v))}" for k, v in fields.items())


def replay_file(path: str, *, keep_going: bool = False, until: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                ) -> tuple[Summary, TraceReplay]:
    """Replay the trace at ``path`` (raises ``TraceError`` for a file that is not one)."""
    with t.TraceReader(path) as reader:
        run = TraceReplay(reader.header, keep_going=keep_going)
        try:
            report = None if progress is None else (
                lambda _: progress(reader.consumed, reader.total))
            summary = run.run(reader.events(), until=until, progress=report)
        finally:
            run.close()
    return summary, run


TRACE_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd")


def replay_directory(directory: str, *, since: float = 0.0, keep_going: bool = False,
                     ) -> list[tuple[str, Summary | t.TraceError]]:
    """Replay every trace file in ``directory`` modified at or after ``since`` (a time
    stamp): (path, summary, or the error that made it unreadable), in name order."""
    out: list[tuple[str, Summary | t.TraceError]] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.endswith(TRACE_SUFFIXES) or os.path.getmtime(path) < since:
            continue
        try:
            summary, _ = replay_file(path, keep_going=keep_going)
        except t.TraceError as exc:
            out.append((path, exc))
        else:
            out.append((path, summary))
    return out


# -- imported traces (qtest, QEMU trace logs) ---------------------------------------------------

def is_id_register(reg: Register) -> bool:
    """A constant the implementation chose (module docstring: the read mask)."""
    return ((reg.ro | reg.rsvd) == reg.full_mask and not (reg.w1c | reg.cor | reg.wo)
            and reg.reset != 0)


def read_mask(regs: RegisterFile, offset: int, size: int,
              ignore: frozenset[str] = frozenset()) -> tuple[int, str | None]:
    """(bits of a read at ``offset`` the architecture fixes, the register's name)."""
    reg = regs.lookup(offset, size)
    if reg is None:
        return 0, None
    if reg.name in ignore or not is_id_register(reg):
        return 0, reg.name
    shift = 8 * (offset - reg.offset)
    return (reg.full_mask >> shift) & ((1 << (8 * size)) - 1), reg.name


def device_windows(config: DaemonConfig) -> list[tuple[int, int, int]]:
    """(device id, base, size) of every model with an MMIO window."""
    out = []
    for spec in config.devices:
        size = model_class(spec.model).mmio_size
        if size:
            out.append((spec.id, spec.base, size))
    return out


def default_ram(windows: list[tuple[int, int]], limit: int = 1 << 31) -> list[tuple[int, int]]:
    """[0, ``limit``) less the device windows (page-rounded), as (gpa, size) regions."""
    holes = sorted((base & ~(PAGE_SIZE - 1), -(-(base + size) // PAGE_SIZE) * PAGE_SIZE)
                   for base, size in windows if size)
    out, pos = [], 0
    for lo, hi in holes:
        if lo > pos:
            out.append((pos, min(lo, limit) - pos))
        pos = max(pos, hi)
        if pos >= limit:
            break
    if pos < limit:
        out.append((pos, limit - pos))
    return [(g, s) for g, s in out if s > 0]


class SimulatedRam:
    """Zeroed guest RAM for imported traces, handed to the session as real memfds."""

    def __init__(self, layout: list[tuple[int, int]]) -> None:
        import mmap

        self.regions: list[tuple[int, int, int, Any]] = []  # gpa, size, fd, mmap
        for gpa, size in sorted(layout):
            fd = make_memfd(size, "replay-ram")
            self.regions.append((gpa, size, fd, mmap.mmap(fd, size, flags=mmap.MAP_SHARED)))

    def _pieces(self, gpa: int, length: int) -> Iterator[tuple[int, Any, int, int]]:
        """(offset into data, mapping, offset into mapping, length) of the RAM parts."""
        for rgpa, size, _, mm in self.regions:
            lo, hi = max(gpa, rgpa), min(gpa + length, rgpa + size)
            if lo < hi:
                yield lo - gpa, mm, lo - rgpa, hi - lo

    def covered(self, gpa: int, length: int) -> int:
        return sum(n for _, _, _, n in self._pieces(gpa, length))

    def write(self, gpa: int, data: bytes) -> int:
        done = 0
        for at, mm, off, n in self._pieces(gpa, len(data)):
            mm[off : off + n] = data[at : at + n]
            done += n
        return done

    def read(self, gpa: int, length: int) -> bytes:
        out = bytearray(length)  # what is not RAM reads as zero, like unassigned memory
        for at, mm, off, n in self._pieces(gpa, length):
            out[at : at + n] = mm[off : off + n]
        return bytes(out)

    def table_message(self) -> tuple[bytes, list[int]]:
        payload = m.MEM_TABLE_HEAD.pack(len(self.regions), 0) + b"".join(
            m.REGION.pack(gpa, size, 0) for gpa, size, _, _ in self.regions)
        return m.request(m.Request.SET_MEM_TABLE, payload), [r[2] for r in self.regions]

    def close(self) -> None:
        for _, _, fd, mm in self.regions:
            mm.close()
            os.close(fd)
        self.regions.clear()


@dataclass
class ImportSummary:
    events: int = 0
    mmio_writes: int = 0
    mmio_reads: int = 0
    compared: int = 0
    mismatches: int = 0
    errors: int = 0
    irqs: int = 0
    notes: int = 0
    seconds: float = 0.0


class ImportRun:
    """Runs imported events (``protocols.qtest`` / ``protocols.qemutrace``) against a fresh
    session with simulated RAM; the session's ``Observer`` (it reports interrupts)."""

    def __init__(self, config: DaemonConfig, ram: list[tuple[int, int]], *, out: TextIO,
                 quiet: bool = False, ignore: frozenset[str] = frozenset()) -> None:
        self.out = out
        self.quiet = quiet
        self.ignore = ignore
        self.summary = ImportSummary()
        self.session = GuestSession(config, recorder=self)
        self.conn = Connection(self.session)
        self.ram = SimulatedRam(ram)
        self.names = {dev: slot.spec.name for dev, slot in self.session.slots.items()}
        self._regs = {int(dev): regs for dev, regs in model_registers(self.session)}
        self._line = 0
        message, fds = self.ram.table_message()
        reply = self.conn.receive(message, [os.dup(fd) for fd in fds])  # it closes them
        status = m.STATUS.unpack(reply, m.HEADER_SIZE)[0]
        if status:
            raise ValueError(f"simulated RAM refused: {os.strerror(-status)}")

    def wrap_memory(self, memory: SessionMemory) -> SessionMemory:
        return memory

    def irq(self, device: int, vector: int, msi_address: int, msi_data: int,
            delivered: bool) -> bool:
        self.summary.irqs += 1
        if not self.quiet:
            slot = self.session.slots.get(device)
            name = slot.model.irq_names[vector] if slot and vector < len(
                slot.model.irq_names) else str(vector)
            msi = f" (MSI {msi_address:#x} <- {msi_data:#x})" if msi_address else ""
            self.say(f"line {self._line}: IRQ {self.names.get(device, device)} {name}{msi}")
        return True  # the imported run had a machine around it that took every interrupt

    def atc_invalidate(self, segment: int, requester: int, pasid: int, address: int,
                       size: int, delivered: bool) -> bool:
        if not self.quiet:
            self.say(f"line {self._line}: ATC invalidate {segment}:{requester:#x} "
                     f"{address:#x}+{size:#x}")
        return True  # as for interrupts: the device of the imported run answered

    def page_response(self, segment: int, requester: int, pasid: int, group: int,
                      code: int) -> None:
        if not self.quiet:
            self.say(f"line {self._line}: page response {segment}:{requester:#x} "
                     f"group {group} code {code}")

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def mismatch(self, text: str) -> None:
        self.summary.mismatches += 1
        print(text, file=self.out)

    def _call(self, code: int, payload: bytes) -> tuple[int, bytes]:
        reply = self.conn.receive(m.request(code, payload))
        status = m.STATUS.unpack(reply, m.HEADER_SIZE)[0]
        return status, reply[m.HEADER_SIZE + m.STATUS.size:]

    def mmio(self, line: int, device: int, offset: int, size: int, value: int | None,
             expect: int | None, text: str) -> None:
        self._line = line
        s = self.summary
        if value is not None:
            s.mmio_writes += 1
            status, _ = self._call(m.Request.MMIO_WRITE,
                                   m.MMIO_WRITE.pack(device, size, offset, value))
        else:
            s.mmio_reads += 1
            status, data = self._call(m.Request.MMIO_READ, m.MMIO_READ.pack(device, size, offset))
        if status:
            s.errors += 1
            self.say(f"line {line}: {text}: refused, {os.strerror(-status)} ({status})")
            return
        if value is not None:
            return
        got = int(m.MMIO_VALUE.unpack(data)[0])
        regs = self._regs.get(device)
        mask, name = read_mask(regs, offset, size, self.ignore) if regs else (0, None)
        where = f"{self.names.get(device, device)}.{name}" if name else \
            f"{self.names.get(device, device)}+{offset:#x}"
        if expect is not None and mask:
            s.compared += 1
            if (got ^ expect) & mask:
                self.mismatch(f"line {line}: {text}: {where} read {got:#x}, trace has "
                              f"{expect:#x} (differing bits {(got ^ expect) & mask:#x}"
                              + _field_names(regs, offset, size, (got ^ expect) & mask) + ")")
                return
        if not self.quiet:
            note = "" if expect is None else (
                f" (trace {expect:#x}{'' if mask else ', not compared'})")
            self.say(f"line {line}: {text} -> {got:#x} [{where}]{note}")

    def ram_write(self, line: int, gpa: int, data: bytes, text: str) -> None:
        self._line = line
        done = self.ram.write(gpa, data)
        if done < len(data):
            self.summary.notes += 1
            if not self.quiet:
                self.say(f"line {line}: {text}: {len(data) - done} of {len(data)} bytes "
                         "are not RAM (dropped, as unassigned memory)")

    def ram_read(self, line: int, gpa: int, size: int, expect: bytes | None, text: str,
                 as_int: bool = False) -> bytes:
        self._line = line
        data = self.ram.read(gpa, size)

        def show(raw: bytes) -> str:
            return hex(int.from_bytes(raw, "little")) if as_int else _short(raw.hex())

        if expect is not None:
            self.summary.compared += 1
            if data != expect:
                self.mismatch(f"line {line}: {text}: RAM holds {show(data)}, trace has "
                              f"{show(expect)}")
                return data
        if not self.quiet:
            self.say(f"line {line}: {text} -> {show(data)}")
        return data

    def close(self) -> None:
        self.session.close()
        self.ram.close()


def _field_names(regs: RegisterFile | None, offset: int, size: int, bits: int) -> str:
    if regs is None:
        return ""
    reg = regs.lookup(offset, size)
    if reg is None:
        return ""
    shift = 8 * (offset - reg.offset)
    names = [f.name for f in reg.fields if (f.mask >> shift) & bits]
    return f": {', '.join(names)}" if names else ""


def run_imported(events: Iterable[Any], run: ImportRun, *, keep_going: bool) -> ImportSummary:
    from protocols.qtest import ClockStep, MmioAccess, Note, RamRead, RamWrite

    start = time.perf_counter()
    s = run.summary
    for ev in events:
        s.events += 1
        if isinstance(ev, MmioAccess):
            run.mmio(ev.line, ev.device, ev.offset, ev.size, ev.value, ev.expect, ev.text)
        elif isinstance(ev, RamWrite):
            run.ram_write(ev.line, ev.gpa, ev.data, ev.text)
        elif isinstance(ev, RamRead):
            run.ram_read(ev.line, ev.gpa, ev.size, ev.expect, ev.text, ev.as_int)
        elif isinstance(ev, ClockStep | Note):
            s.notes += 1
            if not run.quiet:
                run.say(f"line {ev.line}: {ev.text}")
        if s.mismatches and not keep_going:
            break
    s.seconds = time.perf_counter() - start
    return s


# -- the command ---------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Re-run a trace recorded by 'vmm daemon --record' with no guest "
                          "attached and check every output; or run a qtest script or a QEMU "
                          "-trace log against the models.")
    parser.add_argument("file", metavar="FILE",
                        help="the trace, script or log (a directory: every trace in it)")
    parser.add_argument("--format", choices=("auto", "trace", "qtest", "qemu-trace"),
                        default="auto", help="what FILE is (default: guess from its contents)")
    parser.add_argument("--continue", dest="keep_going", action="store_true",
                        help="report every divergence instead of stopping at the first")
    parser.add_argument("--until", type=int, metavar="N",
                        help="stop after event N (events count from 1, on line N+1) and "
                             "show the registers")
    parser.add_argument("--device", action="append", metavar="MODEL,key=value,...",
                        help="qtest / qemu-trace: the models to run (as for vmm daemon)")
    parser.add_argument("--ram", action="append", metavar="GPA:SIZE",
                        help="qtest / qemu-trace: a guest RAM region (default: the first "
                             "2 GiB less the device windows)")
    parser.add_argument("--region", action="append", metavar="NAME[=ID]",
                        help="qemu-trace: the QEMU memory region to replay (default: the "
                             "model's usual region name), optionally onto device ID")
    parser.add_argument("--ignore", action="append", metavar="REG", default=[],
                        help="qtest / qemu-trace: do not compare reads of this register")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no per-read lines; the summary only")


def _guess_format(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b") or head == b"\x28\xb5\x2f\xfd" or head.startswith(b"{"):
        return "trace"
    with open(path, errors="replace") as f:
        for _, text in zip(range(200), f, strict=False):
            if "memory_region_ops_" in text:
                return "qemu-trace"
    return "qtest"


class _Progress:
    """A one-line bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 or total <= 0:
            return
        self.last = now
        frac = min(1.0, done / total)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r[{bar:<30}] {frac * 100:5.1f}%")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()


def _parse_ram(texts: list[str]) -> list[tuple[int, int]]:
    out = []
    for text in texts:
        gpa, sep, size = text.partition(":")
        if not sep:
            raise ValueError(f"--ram {text}: expected GPA:SIZE")
        value = size.strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:], 1)
        number = int(value[:-1] if scale > 1 else value, 0)
        out.append((int(gpa, 0), number * scale))
    return out


def _main_directory(args: argparse.Namespace) -> int:
    bad = 0
    results = replay_directory(args.file, keep_going=args.keep_going)
    for path, result in results:
        if isinstance(result, t.TraceError):
            bad += 1
            print(f"{path}: cannot replay: {result}")
            continue
        n = len(result.divergences)
        bad += bool(n)
        print(f"{path}: {result.events} events, "
              + ("no divergence" if not n else f"{n} divergence{'s' if n > 1 else ''}"))
        if n and not args.quiet:
            print(result.divergences[0].render())
    print(f"replayed {len(results)} traces: {bad} with divergences or unreadable")
    return EXIT_DIVERGED if bad else EXIT_OK


def _main_trace(args: argparse.Namespace) -> int:
    if os.path.isdir(args.file):
        return _main_directory(args)
    if args.device:
        print("vmm replay: a trace carries its configuration; --device is for qtest and "
              "qemu-trace", file=sys.stderr)
        return EXIT_BAD_INPUT
    progress = None
    if not args.quiet and sys.stderr.isatty():
        progress = _Progress(sys.stderr)
    try:
        summary, run = replay_file(args.file, keep_going=args.keep_going, until=args.until,
                                   progress=progress)
    except t.TraceError as exc:
        if progress is not None:
            progress.done()
        print(f"vmm replay: {args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if progress is not None:
        progress.done()
    for d in summary.divergences:
        print(d.render())
    if summary.stopped_at is not None and not args.quiet:
        print(f"stopped after event {summary.stopped_at}; registers changed since reset:")
        for dev, reg, value in run.registers():
            print(f"  {dev}.{reg} = {value:#x}")
    n = len(summary.divergences)
    verdict = "no divergence" if not n else f"{n} divergence{'s' if n > 1 else ''}"
    cut = not (summary.complete or summary.stopped_at is not None or summary.stopped_early)
    tail = " (the trace has no end record: cut short)" if cut else ""
    print(f"replayed {summary.events} events ({summary.requests} requests) in "
          f"{summary.seconds:.2f} s, {summary.rate:,.0f} events/s: {verdict}{tail}")
    return EXIT_DIVERGED if n else EXIT_OK


def _default_regions(config: DaemonConfig) -> dict[str, int]:
    from protocols.qemutrace import REGION_NAMES

    out: dict[str, int] = {}
    for spec in config.devices:
        for name in REGION_NAMES.get(spec.model, (spec.name,)):
            out.setdefault(name, spec.id)
    return out


def _main_imported(args: argparse.Namespace, fmt: str) -> int:
    from protocols import qemutrace, qtest

    if not args.device:
        print(f"vmm replay: --format {fmt} needs --device (the models the "
              f"{'script' if fmt == 'qtest' else 'log'} drives)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        config = DaemonConfig(build_devices(args.device))
        ram = _parse_ram(args.ram or [])
    except HelpRequested as req:
        print(req.text)
        return EXIT_OK
    except (ConfigError, ValueError) as exc:
        print(f"vmm replay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    windows = device_windows(config)
    if not ram:
        ram = default_ram([(base, size) for _, base, size in windows])
    try:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        print(f"vmm replay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    events: list[Any]
    try:
        if fmt == "qtest":
            events = qtest.parse(text, windows, skip_unsupported=args.keep_going)
        else:
            if args.region:
                regions = {}
                for item in args.region:
                    name, _, dev = item.partition("=")
                    regions[name] = int(dev, 0) if dev else config.devices[0].id
            else:
                regions = _default_regions(config)
            events = qemutrace.parse(text, regions, default_device=config.devices[0].id)
    except (qtest.QtestError, qemutrace.QemuTraceError, ValueError) as exc:
        print(f"vmm replay: {args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run = ImportRun(config, ram, out=sys.stdout, quiet=args.quiet,
                    ignore=frozenset(args.ignore))
    try:
        s = run_imported(events, run, keep_going=args.keep_going)
    finally:
        run.close()
    bad = s.mismatches + s.errors
    print(f"ran {s.events} events from {args.file} ({fmt}): {s.mmio_writes} MMIO writes, "
          f"{s.mmio_reads} MMIO reads, {s.compared} reads compared, {s.mismatches} "
          f"mismatches, {s.errors} refused, {s.irqs} interrupts")
    return EXIT_DIVERGED if bad else EXIT_OK


def main(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt == "auto" and os.path.isdir(args.file):
        fmt = "trace"  # every trace in the directory
    if fmt == "auto":
        try:
            fmt = _guess_format(args.file)
        except OSError as exc:
            print(f"vmm replay: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.until is not None and fmt != "trace":
        print("vmm replay: --until is for viommu traces", file=sys.stderr)
        return EXIT_BAD_INPUT
    if fmt == "trace":
        return _main_trace(args)
    return _main_imported(args, fmt)
