"""A guest-side programmer of a ``VTd`` model, for tests (STYLE.md 9: test doubles are code).

``Programmer`` plays a minimal VT-d driver against a model driven directly (no socket): it
lays out root, context and PASID tables in guest memory with the structure declarations of
this package, builds second- and first-stage tables with ``devices.pagetable.builders``, and
feeds the invalidation queue.  The harness's driver (vmm/drivers/vtd.py) does the same over the
wire with offsets of its own; this one is for unit tests, where speed and brevity matter.
"""

from __future__ import annotations

import struct
from typing import Any

from devices.model import MemoryPort
from devices.pagetable.builders import TableAllocator, VtdSsBuilder, X86Builder

from . import descriptors as d
from .context import CONTEXT_ENTRY, ROOT_ENTRY, SM_CONTEXT_ENTRY, SM_ROOT_ENTRY
from .device import VTd
from .layout import Layout
from .pasid import PASID_DIR_ENTRY, PASID_ENTRY, Pgtt
from .regs import GSTS_PERSISTENT_MASK

GCMD, GSTS, RTADDR = 0x18, 0x1C, 0x20
FSTS, FECTL, FEDATA, FEADDR = 0x34, 0x38, 0x3C, 0x40
IQH, IQT, IQA, ICS, IECTL, IEDATA, IEADDR, IQERCD = 0x80, 0x88, 0x90, 0x9C, 0xA0, 0xA4, 0xA8, 0xB0
PQH, PQT, PQA, PRS, PECTL = 0xC0, 0xC8, 0xD0, 0xDC, 0xE0
TE, SRTP, QIE = 1 << 31, 1 << 30, 1 << 26


class Programmer:
    """Tables and queue of one remapping unit, in ``[base, base + size)`` of guest RAM."""

    def __init__(self, dev: VTd, mem: MemoryPort, base: int, size: int = 8 << 20) -> None:
        self.dev = dev
        self.mem = mem
        self.alloc = TableAllocator(mem, base, size)
        self.scalable = dev.features.scalable_mode
        self.root = self.alloc.alloc(4096)
        self.queue = 0
        self.wide = False
        self.queue_size = 0
        self.tail = 0
        self.status = self.alloc.alloc(64)
        self.context_tables: dict[tuple[int, int], int] = {}
        self.pasid_dirs: dict[int, int] = {}
        self.pasid_tables: dict[tuple[int, int], int] = {}

    # -- registers ---------------------------------------------------------------------------

    def read(self, offset: int, size: int = 4) -> int:
        return self.dev.mmio_read(offset, size)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.dev.mmio_write(offset, size, value)

    def gcmd(self, bit: int, on: bool = True) -> None:
        status = self.read(GSTS) & GSTS_PERSISTENT_MASK
        self.write(GCMD, status | bit if on else status & ~bit)

    def enable(self, *, qi: bool = True, qs: int = 0) -> None:
        """Root table, SRTP, the invalidation queue, TE: Linux's order."""
        self.write(RTADDR, self.root | (1 << 10 if self.scalable else 0), 8)
        self.gcmd(SRTP)
        if qi:
            self.enable_qi(qs=qs, wide=self.scalable)
        self.gcmd(TE)

    def enable_qi(self, *, qs: int = 0, wide: bool = False) -> None:
        self.queue_size = 4096 << qs
        self.queue = self.alloc.alloc(self.queue_size)
        self.wide = wide
        self.tail = 0
        self.write(IQT, 0, 8)
        self.write(IQA, self.queue | (1 << 11 if wide else 0) | qs, 8)
        self.gcmd(QIE)

    # -- context and PASID tables ------------------------------------------------------------

    def _context_table(self, bus: int, upper: bool) -> int:
        key = (bus, int(upper))
        table = self.context_tables.get(key)
        if table is None:
            table = self.context_tables[key] = self.alloc.alloc(4096)
            slot = self.root + bus * 16
            if self.scalable:
                raw = self.mem.read(slot, 16)
                assert raw is not None
                e = SM_ROOT_ENTRY.decode(raw)._asdict()
                if upper:
                    e.update(UP=1, UCTP=table >> 12)
                else:
                    e.update(LP=1, LCTP=table >> 12)
                self.mem.write(slot, SM_ROOT_ENTRY.build(**e))
            else:
                self.mem.write(slot, ROOT_ENTRY.build(P=1, CTP=table >> 12))
        return table

    def second_stage(self, levels: int = 4) -> VtdSsBuilder:
        return VtdSsBuilder(self.mem, self.alloc, levels)

    def first_stage(self, levels: int = 4) -> X86Builder:
        return X86Builder(self.mem, self.alloc, levels)

    def legacy_context(self, sid: int, did: int, ss: VtdSsBuilder | None = None, *,
                       tt: int = 0, fpd: int = 0, aw: int | None = None, **extra: int) -> int:
        table = self._context_table(sid >> 8, False)
        slot = table + (sid & 0xFF) * 16
        if aw is None:
            aw = (ss.levels - 2) if ss is not None else 2
        self.mem.write(slot, CONTEXT_ENTRY.build(
            P=1, FPD=fpd, TT=tt, SSPTPTR=(ss.root >> 12) if ss else 0, DID=did, AW=aw,
            **extra))
        return slot

    def sm_context(self, sid: int, *, pdts: int = 0, paside: int = 1, pre: int = 0,
                   dte: int = 0, fpd: int = 0, **extra: int) -> int:
        devfn = sid & 0xFF
        table = self._context_table(sid >> 8, devfn >= 0x80)
        directory = self.pasid_dirs.get(sid)
        if directory is None:
            directory = self.pasid_dirs[sid] = self.alloc.alloc(4096 << max(pdts - 2, 0))
        slot = table + (devfn & 0x7F) * 32
        self.mem.write(slot, SM_CONTEXT_ENTRY.build(
            P=1, FPD=fpd, DTE=dte, PASIDE=paside, PRE=pre, PDTS=pdts,
            PASIDDIRPTR=directory >> 12, **extra))
        return slot

    def pasid_entry(self, sid: int, pasid: int, pgtt: Pgtt, did: int, *,
                    ss: VtdSsBuilder | None = None, fs: X86Builder | None = None,
                    **extra: int) -> int:
        directory = self.pasid_dirs[sid]
        key = (sid, pasid >> 6)
        table = self.pasid_tables.get(key)
        if table is None:
            table = self.pasid_tables[key] = self.alloc.alloc(4096)
            self.mem.write(directory + (pasid >> 6) * 8,
                           PASID_DIR_ENTRY.build(P=1, PTP=table >> 12))
        slot = table + (pasid & 0x3F) * 64
        fields = {"P": 1, "PGTT": int(pgtt), "DID": did}
        if ss is not None:
            fields.update(SSPTPTR=ss.root >> 12, AW=ss.levels - 2)
        if fs is not None:
            fields.update(FSPTPTR=fs.root >> 12, FSPM=int(fs.levels == 5), NXE=int(fs.nxe))
        fields.update(extra)
        self.mem.write(slot, PASID_ENTRY.build(**fields))
        return slot

    # -- the invalidation queue --------------------------------------------------------------

    def put(self, *descs: bytes) -> None:
        """Write descriptors at the tail (not yet handed over)."""
        step = 32 if self.wide else 16
        for desc in descs:
            raw = desc.ljust(step, b"\0")
            assert len(raw) == step, "a 256-bit descriptor in a 128-bit queue"
            self.mem.write(self.queue + self.tail, raw)
            self.tail = (self.tail + step) % self.queue_size

    def submit(self, *descs: bytes) -> None:
        """Write descriptors and move IQT past them."""
        self.put(*descs)
        self.write(IQT, self.tail, 8)

    def sync(self, *descs: bytes, value: int = 1) -> bool:
        """Submit ``descs`` then a status-writing wait; whether the status was written."""
        self.mem.write_u32(self.status, 0)
        self.submit(*descs, wait(sw=1, status=self.status, data=value))
        return self.mem.read_u32(self.status) == value


def _desc(layout: Layout[Any], t: d.DescType, **fields: int) -> bytes:
    return layout.build(TYPE_LO=t & 0xF, TYPE_HI=t >> 4, **fields)


def cc_inv(g: int = d.CC_G_GLOBAL, did: int = 0, sid: int = 0, fm: int = 0) -> bytes:
    return _desc(d.CONTEXT_CACHE_INV, d.DescType.CONTEXT_CACHE, G=g, DID=did, SID=sid, FM=fm)


def iotlb_inv(g: int = d.IOTLB_G_GLOBAL, did: int = 0, addr: int = 0, am: int = 0,
              ih: int = 0) -> bytes:
    return _desc(d.IOTLB_INV, d.DescType.IOTLB, G=g, DID=did, ADDR=addr >> 12, AM=am, IH=ih,
                 DR=1, DW=1)


def devtlb_inv(sid: int, addr: int = 0, s: int = 0, **extra: int) -> bytes:
    return _desc(d.DEVICE_TLB_INV, d.DescType.DEVICE_TLB, SID=sid, ADDR=addr >> 12, S=s,
                 **extra)


def iec_inv(g: int = 0, index: int = 0, im: int = 0) -> bytes:
    return _desc(d.IEC_INV, d.DescType.IEC, G=g, IIDX=index, IM=im)


def wait(*, sw: int = 0, iflag: int = 0, fn: int = 0, pd: int = 0, status: int = 0,
         data: int = 0) -> bytes:
    return _desc(d.WAIT_DESC, d.DescType.WAIT, SW=sw, IF=iflag, FN=fn, PD=pd,
                 STADDR=status >> 2, STDATA=data)


def piotlb_inv(did: int, pasid: int, g: int = d.PIOTLB_G_PASID, addr: int = 0, am: int = 0,
               ih: int = 0) -> bytes:
    return _desc(d.PASID_IOTLB_INV, d.DescType.PASID_IOTLB, G=g, DID=did, PASID=pasid,
                 ADDR=addr >> 12, AM=am, IH=ih)


def pc_inv(g: int = d.PC_G_GLOBAL, did: int = 0, pasid: int = 0) -> bytes:
    return _desc(d.PASID_CACHE_INV, d.DescType.PASID_CACHE, G=g, DID=did, PASID=pasid)


def pdevtlb_inv(sid: int, pasid: int, addr: int = 0, s: int = 0, g: int = 0,
                **extra: int) -> bytes:
    return _desc(d.PASID_DEVICE_TLB_INV, d.DescType.PASID_DEVICE_TLB, SID=sid, PASID=pasid,
                 ADDR=addr >> 12, S=s, G=g, **extra)


def page_response(rid: int, group: int, code: int = d.RC_SUCCESS, pasid: int | None = None,
                  last: int = 1) -> bytes:
    return _desc(d.PAGE_GROUP_RESPONSE, d.DescType.PAGE_GROUP_RESPONSE, RID=rid, PRGI=group,
                 RC=code, PASID=pasid or 0, PP=int(pasid is not None), LPIG=last)


def raw_desc(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)
