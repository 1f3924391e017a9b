"""A driver for the SMMUv3 model in-process, shipped as real code (STYLE.md 9).

``SmmuRig`` programs a model the way a driver does — queues, stream table, STEs and CDs in
guest memory, commands through the command queue, events read back — using the model's own
layouts (``ste.STE``, ``cd.CD``, ``commands.build``), so unit tests read like the spec:
``rig.ste(5, Config=S1, S1ContextPtr=...)``, ``rig.command(Op.CFGI_STE, StreamID=5)``.
The end-to-end driver (vmm/drivers/smmuv3.py) deliberately uses its own encodings instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devices.model import DmaFault, DmaRequest, DmaTarget, MemoryPort
from devices.pagetable.arm import s2_sl0
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder, TableAllocator
from devices.regs import Register
from devices.testing import FlatMemory, RecordingEnv

from . import commands as c
from . import regs as r
from .cd import CD, CD_SIZE, L1CD
from .device import SMMUv3
from .events import EVENT_SIZE, EventType
from .events import decode as decode_event
from .priq import PRIQ_ENTRY, PRIQ_ENTRY_SIZE
from .ste import L1STD, STE, STE_SIZE


@dataclass(frozen=True)
class Event:
    type: EventType | int
    fields: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.fields[name]


class SmmuRig:
    """Queues, tables and commands of one SMMUv3 model, in its guest memory."""

    def __init__(self, dev: SMMUv3, mem: MemoryPort, alloc: TableAllocator) -> None:
        self.dev = dev
        self.mem = mem
        self.alloc = alloc
        self.strtab = 0
        self.strtab_fmt = 0
        self.split = 8
        self.l2: dict[int, int] = {}
        self.cmdq = self.evtq = self.priq = 0
        self.cmdq_log2 = self.evtq_log2 = self.priq_log2 = 0
        self.data = 0
        """Start of guest RAM set aside for DMA targets (``make_rig``)."""

    # -- registers ---------------------------------------------------------------------------

    def read(self, reg: Register) -> int:
        return self.dev.mmio_read(reg.offset, reg.size)

    def write(self, reg: Register, value: int) -> None:
        self.dev.mmio_write(reg.offset, reg.size, value)

    def cr0(self, value: int) -> None:
        self.write(r.CR0, value)

    # -- bring-up ------------------------------------------------------------------------------

    def setup(self, *, sid_bits: int = 8, two_level: bool = False, split: int = 6,
              cmdq_log2: int = 6, evtq_log2: int = 6, priq_log2: int = 4,
              enable: bool = True, irqs: int = 0, cr2: int = 0) -> None:
        """Program queues and an empty stream table; enable everything (Linux's order)."""
        self.cr0(0)
        self.cmdq_log2, self.evtq_log2, self.priq_log2 = cmdq_log2, evtq_log2, priq_log2
        self.cmdq = self.alloc.alloc(max(16 << cmdq_log2, 32))
        self.evtq = self.alloc.alloc(EVENT_SIZE << evtq_log2)
        self.priq = self.alloc.alloc(max(PRIQ_ENTRY_SIZE << priq_log2, 32))
        self.write(r.CMDQ_BASE, self.cmdq | cmdq_log2)
        self.write(r.EVENTQ_BASE, self.evtq | evtq_log2)
        self.write(r.PRIQ_BASE, self.priq | priq_log2)
        for reg in (r.CMDQ_PROD, r.CMDQ_CONS, r.EVENTQ_PROD, r.EVENTQ_CONS, r.PRIQ_PROD,
                    r.PRIQ_CONS):
            self.write(reg, 0)
        self.strtab_fmt = int(two_level)
        self.split = split
        self.l2 = {}
        if two_level:
            self.strtab = self.alloc.alloc(max(64, 8 << max(sid_bits - split, 0)))
            cfg = sid_bits | split << 6 | 1 << 16
        else:
            self.strtab = self.alloc.alloc(STE_SIZE << sid_bits)
            cfg = sid_bits
        self.write(r.STRTAB_BASE, self.strtab)
        self.write(r.STRTAB_BASE_CFG, cfg)
        self.write(r.CR2, cr2)
        self.write(r.IRQ_CTRL, irqs)
        if enable:
            self.cr0(r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask | r.CR0.PRIQEN.mask)
            self.command(c.Op.CFGI_STE_RANGE, Range=c.CFGI_ALL_RANGE)
            self.command(c.Op.TLBI_NSNH_ALL)
            self.sync()
            self.cr0(r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask | r.CR0.PRIQEN.mask
                     | r.CR0.SMMUEN.mask)

    # -- the stream table --------------------------------------------------------------------

    def l1std(self, sid: int, span: int | None = None, l2ptr: int | None = None) -> int:
        """Make (or rewrite) the L1STD covering ``sid``; its L2 array's address."""
        index = sid >> self.split
        if span is None:
            span = self.split + 1
        if l2ptr is None:
            l2ptr = self.l2.get(index) or self.alloc.alloc(STE_SIZE << max(span - 1, 0))
        self.l2[index] = l2ptr
        self.mem.write(self.strtab + 8 * index, L1STD.build(Span=span, L2Ptr=l2ptr >> 6))
        return l2ptr

    def ste_address(self, sid: int) -> int:
        if not self.strtab_fmt:
            return self.strtab + STE_SIZE * sid
        index = sid >> self.split
        base = self.l2.get(index)
        if base is None:
            base = self.l1std(sid)
        return base + STE_SIZE * (sid & ((1 << self.split) - 1))

    def ste(self, sid: int, *, invalidate: bool = True, **fields: Any) -> int:
        """Write STE ``sid`` (V = 1 unless given) and, by default, CFGI_STE + SYNC."""
        fields.setdefault("V", 1)
        addr = self.ste_address(sid)
        self.mem.write(addr, STE.build(**fields))
        if invalidate:
            self.command(c.Op.CFGI_STE, StreamID=sid)
            self.sync()
        return addr

    # -- context descriptors -------------------------------------------------------------------

    def cd_table(self, cdmax: int, fmt: int = 0) -> int:
        """An empty CD table (linear) or L1 table (2-level) for 2^cdmax CDs."""
        if fmt == 0:
            return self.alloc.alloc(CD_SIZE << cdmax)
        split = 6 if fmt == 1 else 10
        return self.alloc.alloc(max(64, 8 << max(cdmax - split, 0)))

    def cd_address(self, table: int, index: int, fmt: int = 0) -> int:
        if fmt == 0:
            return table + CD_SIZE * index
        split = 6 if fmt == 1 else 10
        l1 = table + 8 * (index >> split)
        raw = self.mem.read_u64(l1) or 0
        d = L1CD.decode(raw.to_bytes(8, "little"))
        if d["V"]:
            l2 = d["L2Ptr"] << 12
        else:
            l2 = self.alloc.alloc(CD_SIZE << split)
            self.mem.write(l1, L1CD.build(V=1, L2Ptr=l2 >> 12))
        return l2 + CD_SIZE * (index & ((1 << split) - 1))

    def cd(self, addr: int, **fields: Any) -> None:
        """Write a CD at ``addr``: V, AA64, A, R default to 1; TTB0 etc. as byte addresses
        are accepted as ``ttb0=``/``ttb1=``."""
        for flag in ("V", "AA64", "A", "R"):
            fields.setdefault(flag, 1)
        if "ttb0" in fields:
            fields["TTB0"] = fields.pop("ttb0") >> 4
        if "ttb1" in fields:
            fields["TTB1"] = fields.pop("ttb1") >> 4
        self.mem.write(addr, CD.build(**fields))

    # -- the command queue ---------------------------------------------------------------------

    def submit(self, raw: bytes) -> None:
        """Put one command at PROD and publish it (the model consumes it at once)."""
        prod = self.read(r.CMDQ_PROD)
        mask = (2 << self.cmdq_log2) - 1
        index = prod & ((1 << self.cmdq_log2) - 1)
        self.mem.write(self.cmdq + 16 * index, raw)
        self.write(r.CMDQ_PROD, ((prod & mask) + 1) & mask)

    def command(self, op: c.Op, **fields: int) -> int:
        """Submit one command; CMDQ_CONS.ERR afterwards."""
        self.submit(c.build(op, **fields))
        return r.CMDQ_CONS.ERR.get(self.read(r.CMDQ_CONS))

    def sync(self, **fields: int) -> int:
        return self.command(c.Op.SYNC, **fields)

    @property
    def cmdq_error(self) -> bool:
        return bool((self.read(r.GERROR) ^ self.read(r.GERRORN)) & r.GERROR.CMDQ_ERR.mask)

    def ack_gerror(self) -> None:
        self.write(r.GERRORN, self.read(r.GERROR))

    # -- the event and PRI queues --------------------------------------------------------------

    def events(self) -> list[Event]:
        """Consume every event record (and acknowledge an overflow)."""
        out: list[Event] = []
        prod = self.read(r.EVENTQ_PROD)
        cons = self.read(r.EVENTQ_CONS)
        mask = (2 << self.evtq_log2) - 1
        size = 1 << self.evtq_log2
        ptr = cons & mask
        while ptr != prod & mask:
            raw = self.mem.read(self.evtq + EVENT_SIZE * (ptr & (size - 1)), EVENT_SIZE)
            assert raw is not None
            etype, fields = decode_event(raw)
            out.append(Event(etype, fields))
            ptr = (ptr + 1) & mask
        self.write(r.EVENTQ_CONS, ptr | (prod & r.EVENTQ_PROD.OVFLG.mask))
        return out

    def page_requests(self) -> list[dict[str, int]]:
        out = []
        prod = self.read(r.PRIQ_PROD)
        cons = self.read(r.PRIQ_CONS)
        mask = (2 << self.priq_log2) - 1
        size = 1 << self.priq_log2
        ptr = cons & mask
        while ptr != prod & mask:
            raw = self.mem.read(self.priq + PRIQ_ENTRY_SIZE * (ptr & (size - 1)),
                                PRIQ_ENTRY_SIZE)
            assert raw is not None
            out.append(PRIQ_ENTRY.decode(raw))
            ptr = (ptr + 1) & mask
        self.write(r.PRIQ_CONS, ptr | (prod & r.PRIQ_PROD.OVFLG.mask))
        return out

    # -- transactions --------------------------------------------------------------------------

    def dma(self, sid: int, iova: int, *, pasid: int | None = None, write: bool = False,
            privileged: bool = False, execute: bool = False,
            record: bool = True) -> DmaTarget | DmaFault:
        return self.dev.translate(DmaRequest(sid, pasid, iova, write, privileged, execute,
                                             record))


RAM_BASE = 0x4000_0000
"""Where ``make_rig``'s guest RAM starts (QEMU virt's RAM base)."""


def make_rig(options: dict[str, Any] | None = None, *, ram: int = 8 << 20,
             base: int = RAM_BASE, setup: bool = True,
             **setup_args: Any) -> tuple[SmmuRig, RecordingEnv]:
    """A model over ``ram`` bytes of recording guest RAM at ``base``; tables come from the
    first half (``rig.alloc``), the second half is for data (``rig.data``)."""
    mem = FlatMemory(base, ram)
    env = RecordingEnv(memory=mem)
    dev = SMMUv3(dict(options or {}), env)
    rig = SmmuRig(dev, mem, TableAllocator(mem, base, ram // 2))
    rig.data = base + ram // 2
    if setup:
        rig.setup(**setup_args)
        env.clear()
    return rig, env


_TG0 = {4096: 0, 65536: 1, 16384: 2}
_TG1 = {16384: 1, 4096: 2, 65536: 3}


def s2_fields(s2: ArmS2Builder, **extra: int) -> dict[str, Any]:
    """STE stage-2 fields for the tables ``s2`` built (S2PS 48 bits, recording on)."""
    fields: dict[str, Any] = {"S2T0SZ": s2.tsz, "S2SL0": s2_sl0(s2.granule, s2.start_level),
              "S2TG": _TG0[s2.granule], "S2PS": 5, "S2AA64": 1, "S2R": 1,
              "S2TTB": s2.root >> 4}
    fields.update(extra)
    return fields


def cd_fields(s1: ArmS1Builder, *, upper: ArmS1Builder | None = None,
              **extra: Any) -> dict[str, Any]:
    """CD fields for the stage-1 tables ``s1`` built (TTB0; ``upper`` for TTB1, else
    EPD1 = 1), IPS 48 bits."""
    fields: dict[str, Any] = {"T0SZ": s1.tsz, "TG0": _TG0[s1.granule], "ttb0": s1.root,
                              "IPS": 5}
    if upper is None:
        fields["EPD1"] = 1
    else:
        fields.update(T1SZ=upper.tsz, TG1=_TG1[upper.granule], ttb1=upper.root)
    fields.update(extra)
    return fields
