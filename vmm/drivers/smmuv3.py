"""The harness's SMMUv3 driver: what Linux arm-smmu-v3 does, over the wire.

Offsets, bits, STE/CD/command/event encodings are the driver's own (as in Linux
``arm-smmu-v3.h``: ``FIELD_PREP`` of named masks), deliberately not imported from the model's
declarations, so a wrong model layout shows up as a driver failure.

* ``probe`` — ``arm_smmu_device_hw_probe`` / ``arm_smmu_device_reset``: read the ID registers,
  disable (CR0 := 0, wait for CR0ACK), GBPA abort, CR1/CR2, the stream table (linear or
  2-level), the command queue, CMDQEN, CMD_CFGI_ALL + CMD_TLBI_NSNH_ALL + CMD_SYNC, the event
  and PRI queues, interrupts (MSI or wired), then SMMUEN — each step acknowledged.
* Commands go in batches ending with a CMD_SYNC: MSIPOLL when IDR0.MSI (the sync's MSI writes
  0 into the sync entry itself, ``arm_smmu_cmdq_poll_until_msi``), else CS = SEV with CONS
  polling.
* ``attach_*`` — ``arm_smmu_attach_dev``: write the STE (and the CD table behind it), then
  CMD_CFGI_STE + CMD_SYNC and CMD_PREFETCH_CONFIG.  ``Domain.map``/``unmap`` use
  ``devices.pagetable.builders`` on guest RAM, as io-pgtable does; an unmap issues
  CMD_TLBI_NH_VA (a range when IDR3.RIL) or CMD_TLBI_S2_IPA, then CMD_SYNC, then
  CMD_ATC_INV + CMD_SYNC for ATS-enabled streams (``arm_smmu_tlb_inv_range_*``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from devices.model import Perm
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder, TableAllocator
from vmm.harness import Client, ClientError, GuestRam, RamPort

IDR0, IDR1, IDR3, IDR5 = 0x00, 0x04, 0x0C, 0x14
CR0, CR0ACK, CR1, CR2 = 0x20, 0x24, 0x28, 0x2C
GBPA = 0x44
IRQ_CTRL, IRQ_CTRLACK = 0x50, 0x54
GERROR, GERRORN = 0x60, 0x64
GERROR_IRQ_CFG0, GERROR_IRQ_CFG1 = 0x68, 0x70
STRTAB_BASE, STRTAB_BASE_CFG = 0x80, 0x88
CMDQ_BASE, CMDQ_PROD, CMDQ_CONS = 0x90, 0x98, 0x9C
EVTQ_BASE, EVTQ_PROD, EVTQ_CONS = 0xA0, 0x100A8, 0x100AC
EVTQ_IRQ_CFG0, EVTQ_IRQ_CFG1 = 0xB0, 0xB8
PRIQ_BASE, PRIQ_PROD, PRIQ_CONS = 0xC0, 0x100C8, 0x100CC
PRIQ_IRQ_CFG0, PRIQ_IRQ_CFG1 = 0xD0, 0xD8

CR0_SMMUEN, CR0_PRIQEN, CR0_EVTQEN, CR0_CMDQEN, CR0_ATSCHK = 1, 1 << 1, 1 << 2, 1 << 3, 1 << 4
CR2_RECINVSID, CR2_PTM = 1 << 1, 1 << 2
GBPA_UPDATE, GBPA_ABORT = 1 << 31, 1 << 20
IRQ_CTRL_GERROR, IRQ_CTRL_PRI, IRQ_CTRL_EVTQ = 1 << 0, 1 << 1, 1 << 2
GERROR_CMDQ_ERR = 1 << 0
Q_BASE_RWA = 1 << 62
Q_OVF = 1 << 31
CMDQ_CONS_ERR_SHIFT = 24
CERROR_ILL, CERROR_ABT, CERROR_ATC_INV_SYNC = 1, 2, 3
# CR1: inner/outer write-back, inner-shareable for queues and tables.
CR1_WB_ISH = (1 << 0) | (1 << 2) | (3 << 4) | (1 << 6) | (1 << 8) | (3 << 10)

IDR0_S2P, IDR0_S1P = 1 << 0, 1 << 1
IDR0_ATS, IDR0_MSI, IDR0_PRI = 1 << 10, 1 << 13, 1 << 16
IDR0_CD2L = 1 << 19
IDR0_ST_LEVEL_SHIFT = 27
IDR3_RIL = 1 << 10

# -- commands (Linux CMDQ_*) ------------------------------------------------------------------
OP_PREFETCH_CFG, OP_PREFETCH_ADDR = 0x01, 0x02
OP_CFGI_STE, OP_CFGI_ALL, OP_CFGI_CD, OP_CFGI_CD_ALL = 0x03, 0x04, 0x05, 0x06
OP_TLBI_NH_ALL, OP_TLBI_NH_ASID, OP_TLBI_NH_VA, OP_TLBI_NH_VAA = 0x10, 0x11, 0x12, 0x13
OP_TLBI_S12_VMALL, OP_TLBI_S2_IPA, OP_TLBI_NSNH_ALL = 0x28, 0x2A, 0x30
OP_ATC_INV, OP_PRI_RESP, OP_CMD_SYNC = 0x40, 0x41, 0x46
SYNC_CS_NONE, SYNC_CS_IRQ, SYNC_CS_SEV = 0, 1, 2

# -- STE (Linux STRTAB_STE_*) -----------------------------------------------------------------
STE_CFG_ABORT, STE_CFG_BYPASS, STE_CFG_S1, STE_CFG_S2, STE_CFG_NESTED = 0, 4, 5, 6, 7
S1DSS_TERMINATE, S1DSS_BYPASS, S1DSS_SSID0 = 0, 1, 2
S1FMT_LINEAR, S1FMT_4K, S1FMT_64K = 0, 1, 2

PAGE = 4096


def _field(value: int, lsb: int, width: int) -> int:
    return (value & ((1 << width) - 1)) << lsb


def command(op: int, dw0: int = 0, dw1: int = 0) -> bytes:
    return struct.pack("<QQ", op | dw0, dw1)


def cmd_cfgi_ste(sid: int, leaf: bool = True) -> bytes:
    return command(OP_CFGI_STE, _field(sid, 32, 32), int(leaf))


def cmd_cfgi_all() -> bytes:
    return command(OP_CFGI_ALL, 0, 31)  # CFGI_STE_RANGE with Range = 31


def cmd_cfgi_cd(sid: int, ssid: int, leaf: bool = True) -> bytes:
    return command(OP_CFGI_CD, _field(ssid, 12, 20) | _field(sid, 32, 32), int(leaf))


def cmd_cfgi_cd_all(sid: int) -> bytes:
    return command(OP_CFGI_CD_ALL, _field(sid, 32, 32))


def cmd_prefetch_cfg(sid: int) -> bytes:
    return command(OP_PREFETCH_CFG, _field(sid, 32, 32))


def cmd_tlbi_nh_asid(asid: int, vmid: int = 0) -> bytes:
    return command(OP_TLBI_NH_ASID, _field(vmid, 32, 16) | _field(asid, 48, 16))


def cmd_tlbi_nh_all(vmid: int = 0) -> bytes:
    return command(OP_TLBI_NH_ALL, _field(vmid, 32, 16))


def cmd_tlbi_s12_vmall(vmid: int) -> bytes:
    return command(OP_TLBI_S12_VMALL, _field(vmid, 32, 16))


def cmd_tlbi_nsnh_all() -> bytes:
    return command(OP_TLBI_NSNH_ALL)


def _range_fields(num: int, scale: int, tg: int, ttl: int) -> tuple[int, int]:
    return _field(num, 12, 5) | _field(scale, 20, 5), _field(ttl, 8, 2) | _field(tg, 10, 2)


def cmd_tlbi_nh_va(asid: int, address: int, *, vmid: int = 0, leaf: bool = True,
                   num: int = 0, scale: int = 0, tg: int = 0, ttl: int = 0,
                   all_asids: bool = False) -> bytes:
    dw0, dw1 = _range_fields(num, scale, tg, ttl)
    op = OP_TLBI_NH_VAA if all_asids else OP_TLBI_NH_VA
    asid_bits = 0 if all_asids else _field(asid, 48, 16)
    return command(op, dw0 | _field(vmid, 32, 16) | asid_bits,
                   dw1 | int(leaf) | (address & ~0xFFF & (1 << 64) - 1))


def cmd_tlbi_s2_ipa(vmid: int, ipa: int, *, leaf: bool = True, num: int = 0, scale: int = 0,
                    tg: int = 0, ttl: int = 0) -> bytes:
    dw0, dw1 = _range_fields(num, scale, tg, ttl)
    return command(OP_TLBI_S2_IPA, dw0 | _field(vmid, 32, 16),
                   dw1 | int(leaf) | (ipa & 0x00FF_FFFF_FFFF_F000))


def cmd_atc_inv(sid: int, address: int, size_log2_pages: int, ssid: int | None = None,
                global_: bool = False) -> bytes:
    dw0 = _field(sid, 32, 32) | (_field(ssid, 12, 20) | 1 << 11 if ssid is not None else 0)
    dw0 |= int(global_) << 9
    return command(OP_ATC_INV, dw0, (address & ~0xFFF) | _field(size_log2_pages, 0, 6))


def cmd_pri_resp(sid: int, grpid: int, resp: int, ssid: int | None = None) -> bytes:
    dw0 = _field(sid, 32, 32) | (_field(ssid, 12, 20) | 1 << 11 if ssid is not None else 0)
    return command(OP_PRI_RESP, dw0, _field(grpid, 0, 9) | _field(resp, 12, 2))


def cmd_sync(cs: int = SYNC_CS_NONE, msi_address: int = 0, msi_data: int = 0) -> bytes:
    dw0 = _field(cs, 12, 2) | _field(3, 22, 2) | _field(0xF, 24, 4) | _field(msi_data, 32, 32)
    return command(OP_CMD_SYNC, dw0, msi_address & 0x00FF_FFFF_FFFF_FFFC)


# -- STE and CD encoders (Linux arm_smmu_make_*_ste, arm_smmu_make_s1_cd) ---------------------

def ste_abort() -> bytes:
    return struct.pack("<Q", 1) + bytes(56)


def ste_bypass() -> bytes:
    return struct.pack("<QQ", 1 | STE_CFG_BYPASS << 1, 1 << 44) + bytes(48)  # SHCFG incoming


def ste_words(*, config: int, cdtab: int = 0, s1fmt: int = 0, s1cdmax: int = 0,
              s1dss: int = 0, eats: int = 0, s2: dict[str, int] | None = None,
              vmid: int = 0, ppar: bool = False) -> bytes:
    dw0 = 1 | _field(config, 1, 3) | _field(s1fmt, 4, 2) | (cdtab & 0x00FF_FFFF_FFFF_FFC0)
    dw0 |= _field(s1cdmax, 59, 5)
    dw1 = _field(s1dss, 0, 2) | _field(1, 2, 2) | _field(1, 4, 2) | _field(3, 6, 2)  # WBRA ISH
    dw1 |= _field(eats, 28, 2) | int(ppar) << 18
    dw2 = _field(vmid, 0, 16)
    dw3 = 0
    if s2 is not None:
        dw2 |= (_field(s2["t0sz"], 32, 6) | _field(s2["sl0"], 38, 2) | _field(1, 40, 2)
                | _field(1, 42, 2) | _field(3, 44, 2) | _field(s2["tg"], 46, 2)
                | _field(s2["ps"], 48, 3) | 1 << 51 | 1 << 58)  # S2AA64, S2R
        dw3 = s2["ttb"] & 0x000F_FFFF_FFFF_FFF0
    return struct.pack("<4Q", dw0, dw1, dw2, dw3) + bytes(32)


def cd_words(*, ttb0: int, t0sz: int = 16, tg0: int = 0, ips: int = 5, asid: int = 0,
             record: bool = True, tbi0: bool = False) -> bytes:
    dw0 = (_field(t0sz, 0, 6) | _field(tg0, 6, 2) | _field(1, 8, 2) | _field(1, 10, 2)
           | _field(3, 12, 2) | 1 << 30 | 1 << 31 | _field(ips, 32, 3) | int(tbi0) << 38
           | 1 << 41 | int(record) << 45 | 1 << 46 | 1 << 47 | _field(asid, 48, 16))
    return struct.pack("<4Q", dw0, ttb0 & 0x000F_FFFF_FFFF_FFF0, 0, 0x0404_FF44) + bytes(32)


# -- events (Linux EVTQ_*) ---------------------------------------------------------------------

@dataclass(frozen=True)
class EventRecord:
    type: int
    sid: int
    ssid: int | None
    input_addr: int
    s2: int
    cls: int
    rnw: int
    ipa: int
    fetch_addr: int
    raw: bytes

    @classmethod
    def decode(cls, raw: bytes) -> EventRecord:
        d0, d1, d2, d3 = struct.unpack("<4Q", raw)
        ssv = d0 >> 11 & 1 or d0 & 0xFF == 0x08  # C_BAD_SUBSTREAMID: always valid
        return cls(d0 & 0xFF, d0 >> 32, (d0 >> 12) & 0xFFFFF if ssv else None, d2,
                   d1 >> 39 & 1, d1 >> 40 & 3, d1 >> 35 & 1,
                   d3 & 0x00FF_FFFF_FFFF_F000, d3 & 0x00FF_FFFF_FFFF_FFF8, raw)


@dataclass
class ProbeResult:
    idr0: int = 0
    idr1: int = 0
    idr3: int = 0
    idr5: int = 0
    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.steps)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.steps.append((name, ok, detail))


@dataclass
class Domain:
    """An io-pgtable domain: stage-1 tables (with an ASID) or stage-2 tables (a VMID)."""

    driver: SMMUv3Driver
    stage: int
    asid: int = 0
    vmid: int = 0
    s1: ArmS1Builder | None = None
    s2: ArmS2Builder | None = None
    streams: list[tuple[int, int | None]] = field(default_factory=list)
    """(StreamID, SubstreamID) attached, for ATC invalidation."""

    @property
    def tables(self) -> ArmS1Builder | ArmS2Builder:
        tables = self.s1 if self.stage == 1 else self.s2
        assert tables is not None
        return tables

    async def map(self, iova: int, gpa: int, size: int = PAGE,
                  perm: Perm = Perm.R | Perm.W, **kw: Any) -> None:
        """A new mapping needs no invalidation (the SMMU caches no invalid entries)."""
        self.tables.map(iova, gpa, size, perm, **kw)

    async def unmap(self, iova: int, size: int = PAGE) -> int:
        removed = self.tables.unmap(iova, size)
        await self.driver.tlb_inv_range(self, iova, size)
        return removed


class SMMUv3Driver:
    def __init__(self, client: Client, device: int, ram: GuestRam, *,
                 two_level: bool | None = None, use_msi: bool | None = None,
                 cmdq_log2: int = 8, evtq_log2: int = 7, priq_log2: int = 6) -> None:
        self.client = client
        self.device = device
        self.ram = ram
        self.mem = RamPort(ram)
        self.two_level = two_level
        self.use_msi = use_msi
        self.cmdq_log2, self.evtq_log2, self.priq_log2 = cmdq_log2, evtq_log2, priq_log2
        self.idr0 = self.idr1 = self.idr3 = self.idr5 = 0
        self.strtab = self.cmdq = self.evtq = self.priq = 0
        self.sid_bits = 0
        self.split = 8
        self.l2: dict[int, int] = {}
        self.prod = 0
        self.evtq_cons = 0
        self.priq_cons = 0
        self._alloc: TableAllocator | None = None
        self.next_asid = 1
        self.next_vmid = 1
        self.cd_tables: dict[int, tuple[int, int, int]] = {}
        """StreamID → (CD table, S1CDMax, S1Fmt) of the streams attached with CDs."""
        self.ats: set[int] = set()

    # -- MMIO ---------------------------------------------------------------------------------

    async def read(self, offset: int, size: int = 4) -> int:
        return await self.client.mmio_read(self.device, offset, size)

    async def write(self, offset: int, value: int, size: int = 4) -> None:
        await self.client.mmio_write(self.device, offset, value, size)

    async def write_cr0(self, value: int, result: ProbeResult, what: str) -> None:
        await self.write(CR0, value)
        ack = await self.read(CR0ACK)
        result.check(what, ack == value, f"CR0ACK={ack:#x}")

    @property
    def tables(self) -> TableAllocator:
        if self._alloc is None:
            start = self.ram.alloc(4 << 20, 1 << 16)
            self._alloc = TableAllocator(self.mem, start, 4 << 20)
        return self._alloc

    # -- probe and reset (arm_smmu_device_hw_probe / arm_smmu_device_reset) ---------------------

    async def probe(self, requester: int | None = 0x0008, segment: int = 0) -> ProbeResult:
        """Bring the SMMU up; then, unless ``requester`` is None, the ``dma_checks`` through
        it (what ``vmm run`` shows)."""
        r = ProbeResult()
        self.idr0 = r.idr0 = await self.read(IDR0)
        self.idr1 = r.idr1 = await self.read(IDR1)
        self.idr3 = r.idr3 = await self.read(IDR3)
        self.idr5 = r.idr5 = await self.read(IDR5)
        r.check("IDR0.TTF AArch64", (r.idr0 >> 2) & 3 in (2, 3), f"IDR0={r.idr0:#x}")
        r.check("IDR0 has a stage", r.idr0 & 3 != 0)
        if self.use_msi is None:
            self.use_msi = bool(r.idr0 & IDR0_MSI)
        await self.write_cr0(0, r, "disable (CR0 := 0)")
        # GBPA: abort unmatched traffic while we program the tables (Linux's disable_bypass).
        await self.write(GBPA, GBPA_UPDATE | GBPA_ABORT)
        gbpa = await self.read(GBPA)
        r.check("GBPA.UPDATE completes", gbpa & GBPA_UPDATE == 0 and gbpa & GBPA_ABORT != 0,
                f"GBPA={gbpa:#x}")
        await self.write(CR1, CR1_WB_ISH)
        await self.write(CR2, CR2_RECINVSID | CR2_PTM)
        await self._stream_table(r)
        self.cmdq = self.ram.alloc(16 << self.cmdq_log2, max(32, 16 << self.cmdq_log2))
        await self.write(CMDQ_BASE, self.cmdq | Q_BASE_RWA | self.cmdq_log2, 8)
        await self.write(CMDQ_PROD, 0)
        await self.write(CMDQ_CONS, 0)
        self.prod = 0
        stored = await self.read(CMDQ_BASE, 8)
        r.check("CMDQ_BASE stored", stored == self.cmdq | Q_BASE_RWA | self.cmdq_log2,
                f"{stored:#x}")
        enables = CR0_CMDQEN
        await self.write_cr0(enables, r, "CMDQEN")
        r.check("CMD_CFGI_ALL + CMD_SYNC", await self.submit(cmd_cfgi_all()))
        r.check("CMD_TLBI_NSNH_ALL + CMD_SYNC", await self.submit(cmd_tlbi_nsnh_all()))
        self.evtq = self.ram.alloc(32 << self.evtq_log2, 32 << self.evtq_log2)
        await self.write(EVTQ_BASE, self.evtq | Q_BASE_RWA | self.evtq_log2, 8)
        await self.write(EVTQ_PROD, 0)
        await self.write(EVTQ_CONS, 0)
        self.evtq_cons = 0
        enables |= CR0_EVTQEN
        await self.write_cr0(enables, r, "EVENTQEN")
        irqs = IRQ_CTRL_GERROR | IRQ_CTRL_EVTQ
        if r.idr0 & IDR0_PRI:
            self.priq = self.ram.alloc(16 << self.priq_log2, max(32, 16 << self.priq_log2))
            await self.write(PRIQ_BASE, self.priq | Q_BASE_RWA | self.priq_log2, 8)
            await self.write(PRIQ_PROD, 0)
            await self.write(PRIQ_CONS, 0)
            self.priq_cons = 0
            enables |= CR0_PRIQEN
            await self.write_cr0(enables, r, "PRIQEN")
            irqs |= IRQ_CTRL_PRI
        await self.write(IRQ_CTRL, 0)
        await self.write(IRQ_CTRL, irqs)
        ack = await self.read(IRQ_CTRLACK)
        r.check("IRQ_CTRLACK", ack == irqs, f"{ack:#x}")
        gerror, gerrorn = await self.read(GERROR), await self.read(GERRORN)
        r.check("no global error", gerror == gerrorn, f"GERROR={gerror:#x} GERRORN={gerrorn:#x}")
        enables |= CR0_SMMUEN
        await self.write_cr0(enables, r, "SMMUEN")
        if requester is not None and r.ok:
            try:
                r.steps.extend(await self.dma_checks(requester, segment))
            except ClientError as exc:  # e.g. -ENODEV: the requester is not behind this SMMU
                r.check(f"DMA checks through StreamID {requester:#x} skipped", True, str(exc))
        return r

    async def _stream_table(self, r: ProbeResult) -> None:
        self.sid_bits = min(r.idr1 & 0x3F, 16)
        two_level = self.two_level
        if two_level is None:  # Linux: 2-level when supported and the table would be large
            two_level = bool((r.idr0 >> IDR0_ST_LEVEL_SHIFT) & 3) and self.sid_bits > 8
        self.two_level = two_level
        if two_level:
            self.split = 8
            l1_bits = max(self.sid_bits - self.split, 0)
            size = max(64, 8 << l1_bits)
            self.strtab = self.ram.alloc(size, size)
            cfg = self.sid_bits | self.split << 6 | 1 << 16
        else:
            self.sid_bits = min(self.sid_bits, 8)
            self.strtab = self.ram.alloc(64 << self.sid_bits, 64 << self.sid_bits)
            cfg = self.sid_bits
        self.l2 = {}
        await self.write(STRTAB_BASE, self.strtab | Q_BASE_RWA, 8)
        await self.write(STRTAB_BASE_CFG, cfg)
        base = await self.read(STRTAB_BASE, 8)
        r.check("STRTAB_BASE stored", base & ~0x3F == self.strtab | Q_BASE_RWA, f"{base:#x}")

    # -- the command queue ------------------------------------------------------------------------

    async def put(self, *cmds: bytes) -> None:
        """Write commands at PROD and publish them (no sync)."""
        size = 1 << self.cmdq_log2
        mask = (2 << self.cmdq_log2) - 1
        for cmd in cmds:
            self.ram.write(self.cmdq + 16 * (self.prod & (size - 1)), cmd)
            self.prod = (self.prod + 1) & mask
        await self.write(CMDQ_PROD, self.prod)

    async def submit(self, *cmds: bytes) -> bool:
        """Commands then a CMD_SYNC, and wait for it (arm_smmu_cmdq_issue_cmdlist): MSIPOLL
        with MSIs, else CONS polling.  False if the queue stopped on an error."""
        sync_at = self.cmdq + 16 * ((self.prod + len(cmds)) & ((1 << self.cmdq_log2) - 1))
        if self.use_msi:
            sync = cmd_sync(SYNC_CS_IRQ, sync_at, 0)
        else:
            sync = cmd_sync(SYNC_CS_SEV)
        await self.put(*cmds, sync)
        cons = await self.read(CMDQ_CONS)
        done = (cons & ((2 << self.cmdq_log2) - 1)) == self.prod
        if self.use_msi:
            done = done and self.ram.read_u32(sync_at) == 0
        return done

    async def cmdq_error(self) -> int:
        """CMDQ_CONS.ERR when GERROR.CMDQ_ERR is active, else 0."""
        if not (await self.read(GERROR) ^ await self.read(GERRORN)) & GERROR_CMDQ_ERR:
            return 0
        return (await self.read(CMDQ_CONS) >> CMDQ_CONS_ERR_SHIFT) & 0x7F

    async def recover_cmdq(self) -> None:
        """Linux arm_smmu_cmdq_skip_err: CERROR_ILL replaces the bad command with a CMD_SYNC;
        CERROR_ABT (retry the fetch) and CERROR_ATC_INV_SYNC (re-run the CMD_SYNC at CONS)
        leave it; then acknowledge GERROR.CMDQ_ERR (consumption resumes)."""
        cons = await self.read(CMDQ_CONS)
        if (cons >> CMDQ_CONS_ERR_SHIFT) & 0x7F == CERROR_ILL:
            index = cons & ((1 << self.cmdq_log2) - 1)
            self.ram.write(self.cmdq + 16 * index, cmd_sync())
        await self.write(GERRORN, await self.read(GERROR))

    # -- the stream table ---------------------------------------------------------------------------

    def ste_address(self, sid: int) -> int:
        if not self.two_level:
            return self.strtab + 64 * sid
        index = sid >> self.split
        l2 = self.l2.get(index)
        if l2 is None:
            l2 = self.tables.alloc(64 << self.split)
            span = self.split + 1
            self.mem.write_u64(self.strtab + 8 * index, l2 | span)
            self.l2[index] = l2
        return l2 + 64 * (sid & ((1 << self.split) - 1))

    async def write_ste(self, sid: int, ste: bytes) -> bool:
        """Linux arm_smmu_write_ste: the STE, CMD_CFGI_STE + CMD_SYNC, CMD_PREFETCH_CONFIG."""
        self.ram.write(self.ste_address(sid), ste)
        ok = await self.submit(cmd_cfgi_ste(sid))
        await self.put(cmd_prefetch_cfg(sid))
        return ok

    # -- domains and attach ------------------------------------------------------------------------

    def s1_domain(self, *, granule: int = PAGE, tsz: int = 16) -> Domain:
        asid = self.next_asid
        self.next_asid += 1
        return Domain(self, 1, asid=asid, s1=ArmS1Builder(self.mem, self.tables, granule, tsz))

    def s2_domain(self, *, tsz: int = 20, identity: bool = False) -> Domain:
        vmid = self.next_vmid
        self.next_vmid += 1
        dom = Domain(self, 2, vmid=vmid, s2=ArmS2Builder(self.mem, self.tables, tsz=tsz))
        if identity:  # guest RAM at IPA = GPA, so stage-1 structures may live anywhere
            assert dom.s2 is not None
            start = self.ram.gpa & ~((2 << 20) - 1)
            for gpa in range(start, self.ram.gpa + self.ram.size, 2 << 20):
                dom.s2.map(gpa, gpa, 2 << 20, Perm.R | Perm.W | Perm.X)
        return dom

    @staticmethod
    def _s2_fields(dom: Domain) -> dict[str, int]:
        s2 = dom.s2
        assert s2 is not None
        tg = {4096: 0, 65536: 1, 16384: 2}[s2.granule]
        sl0 = (2 - s2.start_level) if s2.granule == 4096 else (3 - s2.start_level)
        return {"t0sz": s2.tsz, "sl0": sl0, "tg": tg, "ps": 5, "ttb": s2.root}

    async def attach_abort(self, sid: int) -> bool:
        return await self.write_ste(sid, ste_abort())

    async def attach_bypass(self, sid: int) -> bool:
        return await self.write_ste(sid, ste_bypass())

    async def attach_s2(self, sid: int, dom: Domain, *, ats: bool = False) -> bool:
        dom.streams.append((sid, None))
        if ats:
            self.ats.add(sid)
        return await self.write_ste(sid, ste_words(
            config=STE_CFG_S2, s2=self._s2_fields(dom), vmid=dom.vmid, eats=int(ats)))

    def _cd_table(self, sid: int, ssid_bits: int) -> tuple[int, int, int]:
        """Linux arm_smmu_alloc_cd_tables: linear up to 1024 CDs (or without CD2L), else a
        2-level table of 64 KB leaves."""
        if ssid_bits <= 10 or not self.idr0 & IDR0_CD2L:
            table = self.tables.alloc(64 << ssid_bits)
            fmt = S1FMT_LINEAR
        else:
            table = self.tables.alloc(max(64, 8 << (ssid_bits - 10)))
            fmt = S1FMT_64K
        self.cd_tables[sid] = (table, ssid_bits, fmt)
        return table, ssid_bits, fmt

    def cd_address(self, sid: int, ssid: int) -> int:
        table, _, fmt = self.cd_tables[sid]
        if fmt == S1FMT_LINEAR:
            return table + 64 * ssid
        l1 = table + 8 * (ssid >> 10)
        entry = self.mem.read_u64(l1) or 0
        if not entry & 1:
            l2 = self.tables.alloc(64 << 10)
            entry = l2 | 1
            self.mem.write_u64(l1, entry)
        return (entry & ~0xFFF) + 64 * (ssid & 0x3FF)

    async def attach_s1(self, sid: int, dom: Domain, *, ssid_bits: int = 0,
                        nested: Domain | None = None, s1dss: int = S1DSS_SSID0,
                        ats: bool = False, record: bool = True) -> bool:
        """Stage 1 (or nested over ``nested``'s stage 2) with a CD table of 2^ssid_bits CDs;
        ``dom`` is CD 0 (the CD of traffic without a SubstreamID)."""
        table, cdmax, fmt = self._cd_table(sid, ssid_bits)
        self._write_cd(sid, 0, dom, record)
        if ats:
            self.ats.add(sid)
        config = STE_CFG_S1 if nested is None else STE_CFG_NESTED
        return await self.write_ste(sid, ste_words(
            config=config, cdtab=table, s1fmt=fmt, s1cdmax=cdmax,
            s1dss=s1dss if cdmax else 0, eats=int(ats),
            s2=None if nested is None else self._s2_fields(nested),
            vmid=0 if nested is None else nested.vmid))

    def _write_cd(self, sid: int, ssid: int, dom: Domain, record: bool = True) -> None:
        s1 = dom.s1
        assert s1 is not None
        tg0 = {4096: 0, 65536: 1, 16384: 2}[s1.granule]
        self.mem.write(self.cd_address(sid, ssid), cd_words(
            ttb0=s1.root, t0sz=s1.tsz, tg0=tg0, asid=dom.asid, record=record))
        dom.streams.append((sid, ssid if ssid else None))

    async def set_pasid(self, sid: int, ssid: int, dom: Domain) -> bool:
        """Linux arm_smmu_set_pasid: write CD ``ssid``, then CMD_CFGI_CD + CMD_SYNC."""
        self._write_cd(sid, ssid, dom)
        return await self.submit(cmd_cfgi_cd(sid, ssid))

    async def clear_pasid(self, sid: int, ssid: int, dom: Domain) -> bool:
        self.mem.write(self.cd_address(sid, ssid), bytes(64))
        ok = await self.submit(cmd_cfgi_cd(sid, ssid), cmd_tlbi_nh_asid(dom.asid))
        dom.streams = [s for s in dom.streams if s != (sid, ssid)]
        return ok

    # -- TLB maintenance (arm_smmu_tlb_inv_range_*) -------------------------------------------------

    async def tlb_inv_range(self, dom: Domain, iova: int, size: int) -> bool:
        cmds = []
        granule = dom.tables.granule
        tg = {4096: 1, 16384: 2, 65536: 3}[granule]
        # The level of the leaves being invalidated (Linux: from the unmapped size).
        shift, bits = granule.bit_length() - 1, granule.bit_length() - 4
        ttl = max(1, 3 - max(size.bit_length() - 1 - shift, 0) // bits)
        if self.idr3 & IDR3_RIL:
            pages = max(size // granule, 1)
            start = iova
            while pages:
                scale = (pages & -pages).bit_length() - 1
                num = (pages >> scale) & 31  # odd, so never 0
                chunk = num << scale
                if dom.stage == 1:
                    cmds.append(cmd_tlbi_nh_va(dom.asid, start, num=num - 1, scale=scale,
                                               tg=tg, ttl=ttl))
                else:
                    cmds.append(cmd_tlbi_s2_ipa(dom.vmid, start, num=num - 1, scale=scale,
                                                tg=tg, ttl=ttl))
                start += chunk * granule
                pages -= chunk
        else:
            for addr in range(iova, iova + size, granule):
                cmds.append(cmd_tlbi_nh_va(dom.asid, addr) if dom.stage == 1
                            else cmd_tlbi_s2_ipa(dom.vmid, addr))
        if dom.stage == 2:
            cmds.append(cmd_tlbi_s12_vmall(dom.vmid))  # combined entries, as Linux does
        ok = await self.submit(*cmds)
        atc = [cmd_atc_inv(sid, iova, max(size.bit_length() - 13, 0), ssid)
               for sid, ssid in dom.streams if sid in self.ats]
        if atc:
            ok = await self.submit(*atc) and ok
        return ok

    # -- the event and PRI queues ---------------------------------------------------------------------

    async def events(self) -> list[EventRecord]:
        """Read every new event record and move EVENTQ_CONS (acknowledging overflow)."""
        prod = await self.read(EVTQ_PROD)
        out = []
        mask = (2 << self.evtq_log2) - 1
        size = 1 << self.evtq_log2
        cons = self.evtq_cons
        while cons != prod & mask:
            raw = bytes(self.ram.read(self.evtq + 32 * (cons & (size - 1)), 32))
            out.append(EventRecord.decode(raw))
            cons = (cons + 1) & mask
        self.evtq_cons = cons
        await self.write(EVTQ_CONS, cons | (prod & Q_OVF))
        return out

    async def page_requests(self) -> list[dict[str, int]]:
        prod = await self.read(PRIQ_PROD)
        out = []
        mask = (2 << self.priq_log2) - 1
        size = 1 << self.priq_log2
        cons = self.priq_cons
        while cons != prod & mask:
            d0, d1 = struct.unpack("<2Q", self.ram.read(self.priq + 16 * (cons & (size - 1)), 16))
            out.append({"sid": d0 & 0xFFFF_FFFF, "ssid": (d0 >> 32) & 0xFFFFF,
                        "ssv": d0 >> 63, "last": d0 >> 62 & 1, "write": d0 >> 61 & 1,
                        "read": d0 >> 60 & 1, "grpid": d1 & 0x1FF, "addr": d1 & ~0xFFF})
            cons = (cons + 1) & mask
        self.priq_cons = cons
        await self.write(PRIQ_CONS, cons | (prod & Q_OVF))
        return out

    # -- a short demonstration for ``vmm run`` ---------------------------------------------------------

    async def dma_checks(self, requester: int, segment: int = 0) -> list[tuple[str, bool, str]]:
        """Attach ``requester`` to a stage-1 domain, DMA through it, unmap and fault: the
        checks ``vmm run`` reports (after ``probe``)."""
        checks: list[tuple[str, bool, str]] = []
        dom = self.s1_domain()
        checks.append(("attach a stage-1 domain (STE + CD)", await self.attach_s1(requester, dom),
                       ""))
        buf = self.ram.alloc(2 * PAGE)
        iova = 0x1_0000_0000
        await dom.map(iova, buf, PAGE)
        pattern = bytes(range(256)) * 4
        wrote = await self.client.dma(requester, iova + 0x80, data=pattern, segment=segment)
        checks.append(("DMA write through stage 1", wrote == b"" and
                       self.ram.read(buf + 0x80, len(pattern)) == pattern, f"IOVA {iova:#x}"))
        back = await self.client.dma(requester, iova + 0x80, len(pattern), segment=segment)
        checks.append(("DMA read through stage 1", back == pattern, ""))
        await dom.unmap(iova, PAGE)
        fault = await self.client.dma(requester, iova, 16, segment=segment)
        events = await self.events()
        checks.append(("DMA after unmap + TLBI faults (F_TRANSLATION)",
                       getattr(fault, "code", None) == 0x10, repr(fault)))
        checks.append(("event queue holds the F_TRANSLATION record",
                       [(e.type, e.sid, e.input_addr) for e in events] == [(0x10, requester,
                                                                              iova)],
                       repr(events)))
        await self.attach_abort(requester)
        blocked = await self.client.dma(requester, iova, 16, segment=segment)
        checks.append(("STE abort blocks silently", getattr(blocked, "kind", None) == 7
                       and await self.events() == [], repr(blocked)))
        return checks
