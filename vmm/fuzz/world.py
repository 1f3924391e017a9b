"""One program's run: a fresh guest session driven through the sans-IO connection.

``World`` is the executor.  It builds a ``FuzzSession`` (a ``GuestSession`` whose memory is
observed and whose interrupts are logged), feeds it real protocol messages through
``protocols.session.Connection`` — so the bytes a step produces are exactly what a front-end
would send — and runs the oracles after every step:

1. no exception escapes the step;
2. the step's guest-memory accesses stay within its work bound — ``WORK_BASE`` +
   ``WORK_PER_ENTRY`` × the entries of every queue as the registers size them +
   ``WORK_PER_PAGE`` × the pages of a DMA (``WorkExceeded`` is raised in the middle of a
   runaway step), and it ends within ``WATCHDOG_SECONDS`` (SIGALRM raises ``Hang`` in it);
3. no access outside guest RAM is anything but ``None``/``False``, and no write lands outside;
4. every reply is well formed (``oracles.check_reply``);
5. the target's register invariants (``Target.check``);
6. after a full invalidation: cached translations agree with a cold walk (``cold_translate``).

It also collects the coverage features of the built-in engine; with a ``vmm.record``
recorder attached, the run is written as a trace (reproducers).
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from devices.model import DmaFault, DmaRequest, DmaTarget, IommuModel
from protocols import messages as m
from protocols.messages import Request
from protocols.session import Connection
from vmm.config import DaemonConfig
from vmm.fuzz.observe import ObservedMemory, ScratchMemory
from vmm.fuzz.oracles import (
    Failure,
    Hang,
    WorkExceeded,
    check_fault_record,
    check_mmio_read,
    check_reply,
    check_translation,
)
from vmm.fuzz.program import Step
from vmm.guest import GuestSession
from vmm.memory import GuestMemory, make_memfd

if TYPE_CHECKING:
    from vmm.fuzz.targets.base import ModelTarget
    from vmm.record import Observer, Recorder

WORK_BASE = 4096
"""Guest-memory accesses any step may make (register side effects, one walk, MSIs)."""
WORK_PER_ENTRY = 4096
"""Accesses per queue entry the registers allow the model to consume in one step."""
WORK_PER_PAGE = 256
"""Accesses per 4 KiB page of one DMA/TRANSLATE (configuration fetch + nested walk)."""

_DMA_HEAD = m.DMA.codec
_TRANSLATE_REQ = m.TRANSLATE.codec
_MMIO_W = m.MMIO_WRITE.codec
_MMIO_R = m.MMIO_READ.codec
_HEADER = m.HEADER.codec
_VERSION = m.VERSION
_COLD_SAMPLES = 8
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_FUZZ_DIR = os.path.dirname(os.path.abspath(__file__))

WATCHDOG_SECONDS = 10.0
"""A step still running after this long has hung: SIGALRM raises ``Hang`` inside it."""



def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def _arm_watchdog() -> bool:
    """Arm the per-step watchdog (main thread only: that is where signals are delivered)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
    return True


class FuzzSession(GuestSession):
    """A guest session whose every model access to guest RAM is observed (and recorded,
    with a ``recorder``), and whose interrupts are logged."""

    def __init__(self, config: DaemonConfig, *, recorder: Observer | None = None) -> None:
        self.raw = GuestMemory()
        self.observed = ObservedMemory(self.raw)
        super().__init__(config, memory=self.observed, recorder=recorder)
        self.irq_log: list[tuple[int, int, int, int]] = []

    def deliver_irq(self, device: int, vector: int, msi_address: int, msi_data: int) -> bool:
        self.irq_log.append((device, vector, msi_address, msi_data))
        return super().deliver_irq(device, vector, msi_address, msi_data)


def mem_table_message(layout: list[tuple[int, int]]) -> tuple[bytes, list[int]]:
    """SET_MEM_TABLE for ``layout`` with fresh memfds (the connection closes them)."""
    fds = [make_memfd(size) for _, size in layout]
    payload = m.MEM_TABLE_HEAD.pack(len(layout), 0) + b"".join(
        m.REGION.pack(gpa, size, 0) for gpa, size in layout)
    return m.request(Request.SET_MEM_TABLE, payload), fds


def bucket(value: int, width: int) -> int:
    """The value class of a field for the coverage map: 0, 1, all-ones, small, other."""
    if value == 0:
        return 0
    if value == 1:
        return 1
    if value == (1 << width) - 1:
        return 2
    return 3 if value < 16 else 4


class World:
    """A fresh session for one program, its connection, and the oracles' state."""

    def __init__(self, target: ModelTarget, *, features: set[int] | None = None,
                 recorder: Recorder | None = None) -> None:
        self.target = target
        self.session = FuzzSession(target.config, recorder=recorder)
        self.conn = (Connection(self.session) if recorder is None
                     else recorder.connection(self.session))
        message, fds = mem_table_message(target.layout)
        status, _ = check_reply(Request.SET_MEM_TABLE, self.conn.receive(message, fds))
        if status:
            raise RuntimeError(f"SET_MEM_TABLE of the target's layout failed: {status}")
        self.raw = self.session.raw
        self.observed = self.session.observed
        self.observed.features = features
        self.features = features
        self.model: IommuModel = self.session.slots[0].model
        self.regs = getattr(self.model, "regs", None)
        self.recent: deque[tuple[int, int | None, int, int]] = deque(maxlen=32)
        """Recent successful translations: (requester, pasid, iova, flags)."""
        self.state: dict[str, Any] = {}
        """Target-owned per-program state (page-table builders and the like)."""
        self.step_index = 0
        self.last_message = b""
        """The last message sent (a reproducer's trace ends with it when it crashed)."""
        self.wrote: dict[str, int] = {}
        """Registers the current step wrote, with the value (the register oracles use it)."""
        self._prev_values: dict[str, int] = dict(self.regs.values) if self.regs else {}
        target.start(self)

    def close(self) -> None:
        self.session.close()

    # -- running a step ---------------------------------------------------------------------

    def run(self, step: Step) -> None:
        """Run one step and every oracle after it; raises ``Failure``."""
        target = self.target
        handler = target.ops.get(step.op)
        if handler is None:
            return  # an op this target does not have (a reproducer from elsewhere): skip
        observed = self.observed
        observed.accesses = 0
        observed.violation = None
        self.wrote.clear()
        observed.limit = WORK_BASE + WORK_PER_ENTRY * target.queue_entries(self)
        self.step_index += 1
        try:
            self._limit_work(handler, step)
            observed.limit = 1 << 62  # the oracles' own translations are not the step's work
        except Failure:
            raise
        except WorkExceeded:
            raise Failure("work", f"{step}: more than {observed.limit} guest-memory accesses"
                                  f" (queues {target.queue_entries(self)} entries)") from None
        except Hang:
            raise Failure("hang", f"{step}: still running when the watchdog fired") from None
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)
            where = tb[-1] if tb else None
            if where is not None and where.filename.startswith(_FUZZ_DIR):
                raise  # the fuzzer's own bug, not a finding
            place = f" at {where.filename}:{where.lineno} in {where.name}" if where else ""
            raise Failure(f"exception:{type(exc).__name__}{place}",
                          f"{step}: {type(exc).__name__}: {exc}\n"
                          + "".join(traceback.format_exception(exc))) from exc
        if observed.violation is not None:
            raise Failure("memory", f"{step}: {observed.violation}")
        target.check(self, step)
        irqs = self.session.irq_log
        if self.features is not None:
            for _, vector, msi_address, _ in irqs:
                self.features.add(hash(("irq", vector, msi_address != 0)))
            if self.regs is not None:
                self._state_features()
        irqs.clear()

    def _limit_work(self, handler: Callable[[World, Step], None], step: Step) -> None:
        armed = _arm_watchdog()
        try:
            handler(self, step)
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)
        observed = self.observed
        if observed.accesses > observed.limit:
            raise WorkExceeded

    def _state_features(self) -> None:
        """Coverage: the (register, field, value class) of every field the step changed."""
        assert self.regs is not None and self.features is not None
        values = self.regs.values
        prev = self._prev_values
        if values == prev:
            return
        features = self.features
        layout = self.target.field_layout
        for name, value in values.items():
            changed = prev.get(name, ~value) ^ value
            if not changed:
                continue
            for fname, lsb, mask, width in layout.get(name, ()):
                if changed & mask:
                    features.add(hash((name, fname, bucket((value & mask) >> lsb, width))))
        self._prev_values = dict(values)

    # -- what a step does: messages through the connection --------------------------------------

    def send(self, code: int, payload: bytes) -> tuple[int, bytes]:
        """One request through the sans-IO connection; the reply checked; (status, data)."""
        message = _HEADER.pack(code, _VERSION, len(payload)) + payload
        self.last_message = message
        reply = self.conn.receive(message)
        status, data = check_reply(code, reply)
        if self.features is not None:
            self.features.add(hash((code, status)))
        return status, data

    def mmio_write(self, offset: int, size: int, value: int) -> int:
        status, _ = self.send(Request.MMIO_WRITE, _MMIO_W.pack(
            0, size & _U32, offset & _U64, value & _U64))
        if status == 0 and self.regs is not None:
            # Only a write the model received: the connection refuses a value wider than
            # the access, or a bad size or offset, before any model sees it.
            reg = self.regs.lookup(offset, size)
            if reg is not None:
                self.wrote[reg.name] = value
        return status

    def mmio_read(self, offset: int, size: int) -> int | None:
        status, data = self.send(Request.MMIO_READ, _MMIO_R.pack(0, size & _U32, offset & _U64))
        if status:
            return None
        return check_mmio_read(data, size)

    def reg(self, name: str) -> int:
        """The guest's read of a whole register (a 64-bit one as two halves is the same)."""
        assert self.regs is not None
        r = self.regs.register(name)
        return self.model.mmio_read(r.offset, r.size)

    def write_reg(self, name: str, value: int) -> int:
        assert self.regs is not None
        r = self.regs.register(name)
        return self.mmio_write(r.offset, r.size, value & r.full_mask)

    def guest_write(self, gpa: int, data: bytes) -> bool:
        """The guest CPU writes its RAM (not a model access: not counted)."""
        return self.raw.write(gpa, data)

    def guest_read_u64(self, gpa: int) -> int | None:
        return self.raw.read_u64(gpa)

    def dma(self, requester: int, pasid: int, iova: int, length: int, flags: int) -> int:
        writes = bool(flags & m.DmaFlag.WRITE)
        body = _dma_pattern(length, iova) if writes else b""
        payload = _DMA_HEAD.pack(requester & 0xFFFF_FFFF, pasid & 0xFFFF_FFFF,
                                 iova & 0xFFFF_FFFF_FFFF_FFFF, length, flags & 0xFFFF, 0) + body
        self.observed.limit += WORK_PER_PAGE * ((length >> 12) + 2)
        status, data = self.send(Request.DMA, payload)
        if status == 0:
            if len(data) != (0 if writes else length):
                raise Failure("reply:dma-length", f"DMA of {length} bytes answered {len(data)} bytes")
            self.recent.append((requester, None if pasid == m.NO_PASID else pasid, iova, flags))
        elif status < 0 and data:
            kind, code, stage = check_fault_record(data, translate=False, iova=iova, length=length)
            if self.features is not None:
                self.features.add(hash(("fault", kind, code, stage)))
        return status

    def translate(self, requester: int, pasid: int, iova: int, flags: int) -> int:
        payload = _TRANSLATE_REQ.pack(requester & 0xFFFF_FFFF, pasid & 0xFFFF_FFFF,
                                      iova & 0xFFFF_FFFF_FFFF_FFFF, flags & 0xFFFF, 0, 0)
        self.observed.limit += WORK_PER_PAGE
        status, data = self.send(Request.TRANSLATE, payload)
        if status == 0:
            _, size, perms = check_translation(data, iova, flags)
            self.recent.append((requester, None if pasid == m.NO_PASID else pasid, iova, flags))
            if self.features is not None:
                self.features.add(hash(("xlate", perms, size.bit_length())))
        elif status < 0 and data:
            kind, code, stage = check_fault_record(data, translate=True, iova=iova, length=1)
            if self.features is not None:
                self.features.add(hash(("fault", kind, code, stage)))
        return status

    # -- the IOTLB oracle ---------------------------------------------------------------------------

    def check_cold(self) -> None:
        """After a complete invalidation: every recent translation the model still answers
        from its caches must be one a cold walk of the current tables also gives."""
        for requester, pasid, iova, flags in list(self.recent)[-_COLD_SAMPLES:]:
            req = DmaRequest(requester, pasid, iova, bool(flags & m.DmaFlag.WRITE),
                             bool(flags & m.DmaFlag.PRIVILEGED), bool(flags & m.DmaFlag.EXECUTE),
                             record=False)
            cached = self.model.translate(req)
            if not isinstance(cached, DmaTarget):
                continue
            cold = cold_translate(self, req)
            if not isinstance(cold, DmaTarget):
                raise Failure("iotlb", f"after a full invalidation {iova:#x} (rid {requester:#x}, "
                                       f"pasid {pasid}) still translates to {cached.gpa:#x}; the "
                                       f"tables say {cold}")
            if cold.gpa != cached.gpa or int(cached.perms) & ~int(cold.perms):
                raise Failure("iotlb", f"after a full invalidation {iova:#x} (rid {requester:#x}) "
                                       f"translates to {cached.gpa:#x} perms {int(cached.perms)}; "
                                       f"a cold walk gives {cold.gpa:#x} perms {int(cold.perms)}")


class _ColdIotlb:
    """An IOTLB that never hits and keeps nothing (tags still come from the real one)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def lookup(self, tag: Any, iova: int) -> None:
        return None

    def insert(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def cold_translate(world: World, req: DmaRequest) -> DmaTarget | DmaFault:
    """Translate ``req`` as if nothing were cached in the host: the IOTLB misses and shadow
    (filled) stage-2 blocks are hidden, and the walk's writes (A/D bits, fault records) go to
    a scratch copy; everything is put back after.

    The model's own configuration caches are not bypassed (they are the model's business and
    a full invalidation must have emptied them anyway)."""
    session = world.session
    host = session.host
    saved_iotlb = host.iotlb
    saved_memory = session.memory
    saved_guest = host.host_memory.guest
    saved_blocks = {}
    scratch = ScratchMemory(world.raw)
    try:
        host.iotlb = cast(Any, _ColdIotlb(saved_iotlb))
        session.memory = scratch
        host.host_memory.guest = scratch
        for ctx, context in host.contexts.items():
            s2 = context.s2
            saved_blocks[ctx] = (s2.blocks, s2.shifts, s2.mapped_bytes)
            kept = {shift: {k: v for k, v in table.items() if not v[2]}
                    for shift, table in s2.blocks.items()}
            s2.blocks = {shift: table for shift, table in kept.items() if table}
            s2.shifts = tuple(sorted(s2.blocks, reverse=True))
        return world.model.translate(req)
    finally:
        host.iotlb = saved_iotlb
        session.memory = saved_memory
        host.host_memory.guest = saved_guest
        for ctx, (blocks, shifts, mapped) in saved_blocks.items():
            kept_context = host.contexts.get(ctx)
            if kept_context is not None:
                s2 = kept_context.s2
                s2.blocks, s2.shifts, s2.mapped_bytes = blocks, shifts, mapped


_PATTERN = bytes(range(256)) * 16


def _dma_pattern(length: int, seed: int) -> bytes:
    """Deterministic DMA write data (cheap: slices of one 4 KiB pattern)."""
    start = seed & 0xFF
    chunk = _PATTERN[start : start + 3840]
    reps, rest = divmod(length, len(chunk))
    return chunk * reps + chunk[:rest]
