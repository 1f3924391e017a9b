"""The harness's VT-d driver: what Linux intel-iommu does to a remapping unit.

Offsets, bits and descriptor encodings are the driver's own (Linux ``drivers/iommu/intel/
iommu.h``: ``DMAR_*_REG``, ``QI_*``, ``pasid.h``), not the model's declarations, so a model
that puts a field in the wrong place fails here.  Sequence (``init_dmars``,
``iommu_set_root_entry``, ``dmar_enable_qi``, ``iommu_flush_*``, ``iommu_enable_translation``):
read VER/CAP/ECAP, program the root table and latch it with SRTP, enable queued invalidation
(256-bit descriptors in scalable mode), invalidate the context cache, the PASID cache and the
IOTLB globally, then enable translation — each GCMD command one bit per write computed from
GSTS.  Devices are attached by writing context entries (legacy) or context + PASID entries
(scalable mode), followed by the invalidations Linux issues; mappings go into second-stage or
first-stage tables built with ``devices.pagetable.builders`` in guest RAM, each followed by a
page-selective IOTLB invalidation and a wait descriptor.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from devices.model import Perm
from devices.pagetable.builders import TableAllocator, VtdSsBuilder, X86Builder
from vmm.drivers.smmuv3 import ProbeResult
from vmm.harness import Client, GuestRam, RamPort
from vmm.harness import Fault as HarnessFault

VER, CAP, ECAP = 0x00, 0x08, 0x10
GCMD, GSTS, RTADDR, CCMD = 0x18, 0x1C, 0x20, 0x28
FSTS, FECTL, FEDATA, FEADDR, FEUADDR = 0x34, 0x38, 0x3C, 0x40, 0x44
IQH, IQT, IQA, ICS, IECTL, IEDATA, IEADDR = 0x80, 0x88, 0x90, 0x9C, 0xA0, 0xA4, 0xA8
IQERCD = 0xB0
PQH, PQT, PQA, PRS, PECTL, PEDATA, PEADDR = 0xC0, 0xC8, 0xD0, 0xDC, 0xE0, 0xE4, 0xE8
VCMD, VCRSP, VCCAP = 0xE00, 0xE10, 0xE30

GCMD_TE, GCMD_SRTP, GCMD_QIE = 1 << 31, 1 << 30, 1 << 26
GSTS_TES, GSTS_RTPS, GSTS_QIES = 1 << 31, 1 << 30, 1 << 26
# One-shot status bits that must not be written back into GCMD (Linux: 0x96FFFFFF).
GSTS_PERSISTENT = 0x96FF_FFFF
FSTS_PFO, FSTS_PPF, FSTS_IQE, FSTS_ITE = 1 << 0, 1 << 1, 1 << 4, 1 << 6
ECAP_QI, ECAP_DT, ECAP_PASID = 1 << 1, 1 << 2, 1 << 40
ECAP_SMTS, ECAP_VCS, ECAP_PRS = 1 << 43, 1 << 44, 1 << 29
ECAP_NEST, ECAP_FSTS, ECAP_SSTS = 1 << 26, 1 << 47, 1 << 46
RTADDR_TTM_SCALABLE = 1 << 10
IQA_DW = 1 << 11
CAP_CM = 1 << 7

# QI descriptor types and fields (Linux iommu.h QI_*).
QI_CC_TYPE, QI_IOTLB_TYPE, QI_DIOTLB_TYPE, QI_IEC_TYPE = 0x1, 0x2, 0x3, 0x4
QI_IWD_TYPE, QI_EIOTLB_TYPE, QI_PC_TYPE, QI_DEIOTLB_TYPE = 0x5, 0x6, 0x7, 0x8
QI_PGRP_RESP_TYPE = 0x9
QI_IWD_STATUS_DATA_SHIFT = 32
QI_IWD_STATUS_WRITE, QI_IWD_IF, QI_IWD_FENCE, QI_IWD_PRQ_DRAIN = 1 << 5, 1 << 4, 1 << 6, 1 << 7
QI_GRAN_GLOBAL, QI_GRAN_DOMAIN, QI_GRAN_DEVICE_OR_PAGE = 1 << 4, 2 << 4, 3 << 4
QI_PC_ALL_PASIDS, QI_PC_PASID_SEL, QI_PC_GLOBAL = 0 << 4, 1 << 4, 3 << 4
QI_EIOTLB_NG, QI_EIOTLB_PSI = 2 << 4, 3 << 4
QI_IOTLB_DR, QI_IOTLB_DW = 1 << 7, 1 << 6

# PASID entry PGTT values (Linux pasid.h PASID_ENTRY_PGTT_*).
PGTT_FL_ONLY, PGTT_SL_ONLY, PGTT_NESTED, PGTT_PT = 1, 2, 3, 4

PAGE = 4096


def qi_desc(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


def cc_global() -> bytes:
    return qi_desc(QI_CC_TYPE | QI_GRAN_GLOBAL, 0)


def cc_device(did: int, sid: int, fm: int = 0) -> bytes:
    return qi_desc(QI_CC_TYPE | QI_GRAN_DEVICE_OR_PAGE | did << 16 | sid << 32 | fm << 48, 0)


def iotlb_global() -> bytes:
    return qi_desc(QI_IOTLB_TYPE | QI_GRAN_GLOBAL | QI_IOTLB_DR | QI_IOTLB_DW, 0)


def iotlb_domain(did: int) -> bytes:
    return qi_desc(QI_IOTLB_TYPE | QI_GRAN_DOMAIN | QI_IOTLB_DR | QI_IOTLB_DW | did << 16, 0)


def iotlb_page(did: int, addr: int, am: int = 0, ih: int = 0) -> bytes:
    return qi_desc(QI_IOTLB_TYPE | QI_GRAN_DEVICE_OR_PAGE | QI_IOTLB_DR | QI_IOTLB_DW
                   | did << 16, addr | ih << 6 | am)


def pasid_iotlb(did: int, pasid: int, addr: int | None = None, am: int = 0) -> bytes:
    if addr is None:
        return qi_desc(QI_EIOTLB_TYPE | QI_EIOTLB_NG | did << 16 | pasid << 32, 0, 0, 0)
    return qi_desc(QI_EIOTLB_TYPE | QI_EIOTLB_PSI | did << 16 | pasid << 32, addr | am, 0, 0)


def pasid_cache(gran: int, did: int = 0, pasid: int = 0) -> bytes:
    return qi_desc(QI_PC_TYPE | gran | did << 16 | pasid << 32, 0, 0, 0)


def dev_iotlb(sid: int, addr: int, size_bit: int = 0, qdep: int = 0) -> bytes:
    return qi_desc(QI_DIOTLB_TYPE | qdep << 16 | sid << 32, addr | size_bit)


def pasid_dev_iotlb(sid: int, pasid: int, addr: int, size_bit: int = 0, glob: int = 0,
                    qdep: int = 0) -> bytes:
    return qi_desc(QI_DEIOTLB_TYPE | qdep << 4 | sid << 16 | pasid << 32,
                   addr | size_bit << 11 | glob, 0, 0)


def iec(index: int = 0, mask: int = 0, glob: bool = True) -> bytes:
    return qi_desc(QI_IEC_TYPE | (0 if glob else 1 << 4) | mask << 27 | index << 32, 0)


def wait_desc(*, status: int = 0, data: int = 0, sw: bool = False, iflag: bool = False,
              fence: bool = False, drain: bool = False) -> bytes:
    lo = QI_IWD_TYPE | data << QI_IWD_STATUS_DATA_SHIFT
    lo |= (QI_IWD_STATUS_WRITE if sw else 0) | (QI_IWD_IF if iflag else 0)
    lo |= (QI_IWD_FENCE if fence else 0) | (QI_IWD_PRQ_DRAIN if drain else 0)
    return qi_desc(lo, status)


def page_group_response(rid: int, group: int, code: int, pasid: int | None = None,
                        last: bool = True) -> bytes:
    lo = QI_PGRP_RESP_TYPE | code << 12 | rid << 16
    if pasid is not None:
        lo |= 1 << 4 | pasid << 32
    return qi_desc(lo, (1 << 2 if last else 0) | group << 3, 0, 0)


@dataclass
class Attached:
    """A device attached to a domain: where its translation tables are."""

    sid: int
    did: int
    pasid: int | None = None
    ss: VtdSsBuilder | None = None
    fs: X86Builder | None = None


@dataclass
class VTdDriver:
    client: Client
    device: int
    ram: GuestRam
    cap: int = 0
    ecap: int = 0
    scalable: bool = False
    root: int = 0
    queue: int = 0
    queue_size: int = 0
    tail: int = 0
    wide: bool = False
    status: int = 0
    seq: int = 0
    segment: int = -1
    """The PCI segment of the unit's requesters (default: the device id, as the daemon)."""
    port: RamPort = field(init=False)
    alloc: TableAllocator | None = None
    context_tables: dict[tuple[int, bool], int] = field(default_factory=dict)
    pasid_dirs: dict[int, int] = field(default_factory=dict)
    pasid_tables: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.port = RamPort(self.ram)
        if self.segment < 0:
            self.segment = self.device

    # -- registers ---------------------------------------------------------------------------

    async def read(self, offset: int, size: int = 4) -> int:
        return await self.client.mmio_read(self.device, offset, size)

    async def write(self, offset: int, value: int, size: int = 4) -> None:
        await self.client.mmio_write(self.device, offset, value, size)

    async def gcmd(self, bit: int, status_bit: int, enable: bool, r: ProbeResult,
                   what: str) -> None:
        status = (await self.read(GSTS)) & GSTS_PERSISTENT
        await self.write(GCMD, status | bit if enable else status & ~bit)
        after = await self.read(GSTS)
        r.check(what, bool(after & status_bit) == enable, f"GSTS={after:#x}")

    async def probe(self, requester: int = 0x0018) -> ProbeResult:
        """Bring the unit up, attach ``requester`` and DMA through a translation (the test
        guest's check list behind ``vmm run``)."""
        r = await self.bring_up()
        if not r.ok:
            return r
        if self.scalable:
            await self.sm_context(requester)
            dev = await self.attach_pasid(requester, 0, 1, PGTT_SL_ONLY)
        else:
            dev = await self.attach_legacy(requester, 1)
        buf = self.ram.alloc(2 * PAGE)
        iova = 0x1_0000_0000
        await self.map(dev, iova, buf + PAGE, PAGE)
        await self.map(dev, iova + PAGE, buf, PAGE, Perm.R)
        pattern = bytes(range(256)) * 20
        seg = self.segment
        wrote = await self.client.dma(requester, iova + 0x100, data=pattern[:PAGE - 0x100],
                                      segment=seg)
        landed = self.ram.read(buf + PAGE + 0x100, PAGE - 0x100) == pattern[:PAGE - 0x100]
        r.check("DMA write through the second stage lands at the mapped page",
                wrote == b"" and landed)
        self.ram.write(buf, b"read-only")
        back = await self.client.dma(requester, iova + PAGE, 9, segment=seg)
        r.check("DMA read through a read-only mapping", back == b"read-only", repr(back))
        denied = await self.client.dma(requester, iova + PAGE, data=b"x", segment=seg)
        frcd_hi = await self.read(0x228, 8)
        r.check("DMA write to a read-only page faults and is recorded",
                isinstance(denied, HarnessFault) and (frcd_hi >> 32) & 0xFF == denied.code,
                f"{denied!r} FRCD={frcd_hi:#x}")
        await self.write(0x228, 1 << 63, 8)  # service the record
        return r

    async def bring_up(self, *, scalable: bool | None = None, qs: int = 0,
                       table_bytes: int = 4 << 20) -> ProbeResult:
        r = ProbeResult()
        r.idr0 = await self.read(VER)
        self.cap = r.idr1 = await self.read(CAP, 8)
        self.ecap = r.idr3 = await self.read(ECAP, 8)
        sagaw = (self.cap >> 8) & 0x1F
        r.check("CAP.SAGAW names a supported width", sagaw & 0b1110 != 0, f"CAP={self.cap:#x}")
        r.check("ECAP.QI", bool(self.ecap & ECAP_QI), f"ECAP={self.ecap:#x}")
        r.check("GCMD reads as zero", await self.read(GCMD) == 0)
        self.scalable = bool(self.ecap & ECAP_SMTS) if scalable is None else scalable
        base = self.ram.alloc(table_bytes)
        self.alloc = TableAllocator(self.port, base, table_bytes)
        self.root = self.alloc.alloc(PAGE)
        self.status = self.alloc.alloc(64)
        await self.write(RTADDR, self.root | (RTADDR_TTM_SCALABLE if self.scalable else 0), 8)
        await self.gcmd(GCMD_SRTP, GSTS_RTPS, True, r, "SRTP latches the root table")
        self.queue_size = PAGE << qs
        self.queue = self.alloc.alloc(self.queue_size)
        self.wide = self.scalable
        self.tail = 0
        await self.write(IQT, 0, 8)
        await self.write(IQA, self.queue | (IQA_DW if self.wide else 0) | qs, 8)
        await self.gcmd(GCMD_QIE, GSTS_QIES, True, r, "queued invalidation enabled")
        r.check("IQH reset to 0", await self.read(IQH, 8) == 0)
        descs = [cc_global(), iotlb_global()]
        if self.scalable:
            descs.insert(1, pasid_cache(QI_PC_GLOBAL))
        r.check("global invalidations complete", await self.qi_sync(*descs))
        await self.gcmd(GCMD_TE, GSTS_TES, True, r, "translation enabled")
        fsts = await self.read(FSTS)
        r.check("no fault status", fsts == 0, f"FSTS={fsts:#x}")
        return r

    # -- the invalidation queue --------------------------------------------------------------

    async def qi_put(self, *descs: bytes) -> None:
        step = 32 if self.wide else 16
        for desc in descs:
            self.ram.write(self.queue + self.tail, desc.ljust(step, b"\0")[:step])
            self.tail = (self.tail + step) % self.queue_size

    async def qi_submit(self, *descs: bytes) -> None:
        await self.qi_put(*descs)
        await self.write(IQT, self.tail, 8)

    async def qi_sync(self, *descs: bytes) -> bool:
        """Submit ``descs`` and a status-writing wait descriptor; True once it completed
        (Linux's qi_submit_sync, which also watches FSTS.IQE and FSTS.ITE)."""
        self.seq = (self.seq + 1) & 0xFFFF_FFFF or 1
        self.ram.write_u32(self.status, 0)
        await self.qi_submit(*descs, wait_desc(status=self.status, data=self.seq, sw=True))
        for _ in range(4):
            if self.ram.read_u32(self.status) == self.seq:
                return True
            if await self.read(FSTS) & (FSTS_IQE | FSTS_ITE):
                return False
        return False

    # -- attaching devices -------------------------------------------------------------------

    def _tables(self) -> TableAllocator:
        assert self.alloc is not None, "bring_up first"
        return self.alloc

    def _context_table(self, bus: int, upper: bool) -> int:
        key = (bus, upper)
        table = self.context_tables.get(key)
        if table is None:
            table = self.context_tables[key] = self._tables().alloc(PAGE)
            slot = self.root + bus * 16
            lo, hi = struct.unpack("<2Q", self.ram.read(slot, 16))
            if not self.scalable:
                lo = table | 1
            elif upper:
                hi = table | 1
            else:
                lo = table | 1
            self.ram.write(slot, struct.pack("<2Q", lo, hi))
        return table

    def second_stage(self, levels: int | None = None) -> VtdSsBuilder:
        if levels is None:
            sagaw = (self.cap >> 8) & 0x1F
            levels = 4 if sagaw & 0b100 else 3
        return VtdSsBuilder(self.port, self._tables(), levels)

    def first_stage(self, levels: int = 4) -> X86Builder:
        return X86Builder(self.port, self._tables(), levels)

    async def attach_legacy(self, sid: int, did: int, *, tt: int = 0,
                            ss: VtdSsBuilder | None = None, fpd: bool = False) -> Attached:
        """A legacy context entry (TT 00 second stage, 01 with device-TLB, 10 pass-through),
        then the device-selective context-cache and domain IOTLB invalidations (Linux's
        domain_context_mapping_one with caching mode, and always here)."""
        if ss is None and tt != 2:
            ss = self.second_stage()
        table = self._context_table(sid >> 8, False)
        aw = (ss.levels - 2) if ss is not None else 2
        lo = (ss.root if ss is not None else 0) | tt << 2 | (2 if fpd else 0) | 1
        hi = did << 8 | aw
        self.ram.write(table + (sid & 0xFF) * 16, struct.pack("<2Q", lo, hi))
        await self.qi_sync(cc_device(0, sid), iotlb_domain(did))
        return Attached(sid, did, None, ss)

    def _pasid_dir(self, sid: int, pdts: int) -> int:
        directory = self.pasid_dirs.get(sid)
        if directory is None:
            directory = self.pasid_dirs[sid] = self._tables().alloc(PAGE << max(pdts - 2, 0))
        return directory

    async def sm_context(self, sid: int, *, pdts: int = 0, pre: bool = False,
                         dte: bool = False, fpd: bool = False) -> None:
        devfn = sid & 0xFF
        table = self._context_table(sid >> 8, devfn >= 0x80)
        directory = self._pasid_dir(sid, pdts)
        lo = directory | pdts << 9 | (1 << 4 if pre else 0) | 1 << 3 | (1 << 2 if dte else 0)
        lo |= (2 if fpd else 0) | 1
        self.ram.write(table + (devfn & 0x7F) * 32, struct.pack("<4Q", lo, 0, 0, 0))
        await self.qi_sync(cc_device(0, sid), pasid_cache(QI_PC_GLOBAL), iotlb_global())

    async def attach_pasid(self, sid: int, pasid: int, did: int, pgtt: int, *,
                           ss: VtdSsBuilder | None = None, fs: X86Builder | None = None,
                           sre: bool = False, wpe: bool = False, fpd: bool = False,
                           invalidate: bool = True) -> Attached:
        """A scalable-mode PASID table entry, then the PASID-selective PASID-cache and the
        PASID-based IOTLB invalidations (Linux's pasid_flush_caches)."""
        if pgtt in (PGTT_SL_ONLY, PGTT_NESTED) and ss is None:
            ss = self.second_stage()
        if pgtt in (PGTT_FL_ONLY, PGTT_NESTED) and fs is None:
            fs = self.first_stage()
        directory = self.pasid_dirs[sid]
        key = (sid, pasid >> 6)
        table = self.pasid_tables.get(key)
        if table is None:
            table = self.pasid_tables[key] = self._tables().alloc(PAGE)
            self.ram.write_u64(directory + (pasid >> 6) * 8, table | 1)
        q0 = pgtt << 6 | (2 if fpd else 0) | 1
        if ss is not None:
            q0 |= ss.root | (ss.levels - 2) << 2
        q1 = did
        q2 = 0
        if fs is not None:
            q2 = fs.root | (1 if sre else 0) | (1 << 4 if wpe else 0) | (1 << 5 if fs.nxe else 0)
            q2 |= (1 << 2) if fs.levels == 5 else 0
        self.ram.write(table + (pasid & 0x3F) * 64, struct.pack("<8Q", q0, q1, q2, 0, 0, 0, 0, 0))
        if invalidate:
            await self.qi_sync(pasid_cache(QI_PC_PASID_SEL, did, pasid),
                               pasid_iotlb(did, pasid), iotlb_domain(did))
        return Attached(sid, did, pasid, ss, fs)

    # -- mappings ----------------------------------------------------------------------------

    async def map(self, dev: Attached, iova: int, gpa: int, size: int = PAGE,
                  perm: Perm = Perm.R | Perm.W, *, invalidate: bool = True) -> None:
        """Map into the device's first stage if it has one, else its second stage (map a
        nested PASID's second stage through ``dev.ss`` directly); then the page-selective
        invalidation and a wait, as Linux does on caching-mode units."""
        if dev.fs is not None:
            dev.fs.map(iova, gpa, size, perm)
        else:
            assert dev.ss is not None
            dev.ss.map(iova, gpa, size, perm)
        if invalidate:
            await self.flush(dev, iova, size)

    async def unmap(self, dev: Attached, iova: int, size: int = PAGE) -> int:
        if dev.fs is not None:
            done = dev.fs.unmap(iova, size)
        else:
            assert dev.ss is not None
            done = dev.ss.unmap(iova, size)
        await self.flush(dev, iova, size)
        return done

    async def flush(self, dev: Attached, iova: int, size: int) -> bool:
        am = max(size - 1, 0).bit_length() - 12 if size > PAGE else 0
        addr = iova & ~((PAGE << am) - 1)
        if dev.fs is not None:
            desc = pasid_iotlb(dev.did, dev.pasid or 0, addr, am)
        else:
            desc = iotlb_page(dev.did, addr, am)
        return await self.qi_sync(desc)

    # -- virtual commands --------------------------------------------------------------------

    async def vcmd(self, cmd: int, operand: int = 0) -> tuple[int, int]:
        """(status code, result) of a virtual command (rev 3.3+ layout)."""
        await self.write(VCMD, cmd | operand << 16, 8)
        rsp = await self.read(VCRSP, 8)
        return (rsp >> 1) & 0x7F, rsp >> 16

    async def alloc_pasid(self) -> int | None:
        sc, result = await self.vcmd(1)
        return result & 0xFFFFF if sc == 0 else None

    async def free_pasid(self, pasid: int) -> bool:
        sc, _ = await self.vcmd(2, pasid)
        return sc == 0
