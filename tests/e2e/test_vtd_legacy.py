"""Legacy-mode VT-d end to end: the Linux bring-up, second-stage and pass-through contexts,
DMA through the daemon, and the legacy fault reasons recorded in FRCD.

Expected register values marked "7.2 meas." are QEMU 7.2 measurements (reference/vtd.md §4b,
§9): the FRCD layout is the same, except where QEMU deviates (tests named ``..._qemu_deviation``).
"""

from __future__ import annotations

import struct

import pytest

from devices.model import Perm
from devices.pagetable.builders import TableAllocator
from tests.e2e.vtd_helpers import RAM_BASE, SID, Guest, GuestFactory
from vmm.drivers.vtd import Attached, cc_device, cc_global, iotlb_global, iotlb_page
from vmm.harness import Fault, Translation

DID = 5


async def test_linux_bring_up_and_dma_through_second_stage(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    probe = await g.drv.bring_up()
    assert probe.ok, probe.steps
    dev = await g.drv.attach_legacy(SID, DID)
    buf = g.ram.alloc(2 * 4096)
    await g.drv.map(dev, 0x10000, buf, 4096)
    await g.drv.map(dev, 0x11000, buf + 4096, 4096, Perm.R)
    assert await g.dma_write(0x10ff0, b"x" * 16) == b""
    assert g.ram.read(buf + 0xFF0, 16) == b"x" * 16
    g.ram.write(buf + 4096, b"hello")
    assert await g.dma_read(0x11000, 5) == b"hello"
    t = await g.client.translate(SID, 0x10123)
    assert (t.address, t.size, t.perms) == (buf + 0x123, 4096, 7)  # type: ignore[union-attr]


async def test_write_to_read_only_page_records_fr5_like_qemu_7_2(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.bring_up()
    dev = await g.drv.attach_legacy(SID, DID)
    buf = g.ram.alloc(4096)
    await g.drv.map(dev, 0x5000, buf, 4096, Perm.R)
    fault = await g.dma_write(0x5000, b"no")
    assert fault == Fault(kind=2, code=0x5, address=0x5000, stage=2)
    assert await g.frcd() == (0x5000, 0x8000_0005_0000_0018)  # 7.2 meas. but PV (next test)
    assert await g.drv.read(0x34) == 0x2  # FSTS.PPF, FRI 0


async def test_frcd_pv_is_zero_without_pasid_qemu_deviation(vtd_guest: GuestFactory) -> None:
    # QEMU 7.2 wrote PV = 0xffff for a request without PASID (reference/vtd.md §8 #7).
    g = await vtd_guest()
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, DID)
    await g.dma_read(0x7000, 4)
    _, hi = await g.frcd()
    assert (hi >> 40) & 0xFFFFF == 0 and not hi >> 31 & 1
    assert hi == 0xC000_0006_0000_0018  # read of a not-present page: FR 6, T1 = 1


async def test_pass_through_context(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, DID, tt=2)
    buf = g.ram.alloc(4096)
    assert await g.dma_write(buf, b"identity") == b""
    assert g.ram.read(buf, 8) == b"identity"
    assert buf >= RAM_BASE


# -- every legacy fault reason ---------------------------------------------------------------


def _context_slot(g: Guest, sid: int) -> int:
    return g.drv._context_table(sid >> 8, False) + (sid & 0xFF) * 16


async def _setup(g: Guest) -> Attached:
    await g.drv.bring_up()
    dev = await g.drv.attach_legacy(SID, DID)
    await g.drv.map(dev, 0x5000, g.ram.alloc(4096), 4096)
    return dev


def _write_context(g: Guest, lo: int, hi: int) -> None:
    g.ram.write(_context_slot(g, SID), struct.pack("<2Q", lo, hi))


def _patch(g: Guest, gpa: int, value: int) -> None:
    g.ram.write(gpa, struct.pack("<Q", value))


async def _invalidate_all(g: Guest) -> None:
    assert await g.drv.qi_sync(cc_global(), iotlb_global())


LEGACY_CASES = {
    "root_not_present_fr1": (0x1, 5),
    "context_not_present_fr2": (0x2, 5),
    "tt_reserved_fr3": (0x3, 5),
    "aw_not_in_sagaw_fr3": (0x3, 5),
    "device_tlb_without_dt_fr3": (0x3, 5),
    "beyond_mgaw_fr4": (0x4, 4),
    "not_present_write_fr5": (0x5, 2),
    "not_present_read_fr6": (0x6, 2),
    "table_pointer_not_ram_fr7": (0x7, 6),
    "root_table_not_ram_fr8": (0x8, 6),
    "context_table_not_ram_fr9": (0x9, 6),
    "root_reserved_fr0xa": (0xA, 5),
    "context_reserved_fr0xb": (0xB, 5),
    "paging_entry_reserved_fr0xc": (0xC, 1),
    "pasid_in_legacy_mode_fr0x31": (0x31, 5),
}


@pytest.mark.parametrize("case", sorted(LEGACY_CASES))
async def test_legacy_fault_reason(vtd_guest: GuestFactory, case: str) -> None:
    g = await vtd_guest()
    dev = await _setup(g)
    assert dev.ss is not None
    ctx = _context_slot(g, SID)
    lo, hi = struct.unpack("<2Q", g.ram.read(ctx, 16))
    iova, write, pasid = 0x5000, False, None
    if case == "root_not_present_fr1":
        _patch(g, g.drv.root + (SID >> 8) * 8 * 2, 0)
    elif case == "context_not_present_fr2":
        _write_context(g, 0, 0)
    elif case == "tt_reserved_fr3":
        _write_context(g, lo | 3 << 2, hi)
    elif case == "aw_not_in_sagaw_fr3":
        _write_context(g, lo, (hi & ~7) | 3)  # 5-level: not in SAGAW of a 48-bit unit
    elif case == "device_tlb_without_dt_fr3":
        _write_context(g, lo | 1 << 2, hi)
    elif case == "beyond_mgaw_fr4":
        iova = 1 << 48
    elif case == "not_present_write_fr5":
        iova, write = 0x9000, True
    elif case == "not_present_read_fr6":
        iova = 0x9000
    elif case == "table_pointer_not_ram_fr7":
        _patch(g, dev.ss.root, 0x10_0000_0000 | 3)
    elif case == "root_table_not_ram_fr8":
        await g.drv.write(0x20, 0x10_0000_0000, 8)
        await g.drv.write(0x18, (await g.drv.read(0x1C)) & 0x96FF_FFFF | 1 << 30)  # SRTP
    elif case == "context_table_not_ram_fr9":
        _patch(g, g.drv.root + (SID >> 8) * 16, 0x10_0000_0000 | 1)
    elif case == "root_reserved_fr0xa":
        _patch(g, g.drv.root + (SID >> 8) * 16 + 8, 1)
    elif case == "context_reserved_fr0xb":
        _write_context(g, lo, hi | 1 << 7)  # hi bit 7, as 7.2 meas.
    elif case == "paging_entry_reserved_fr0xc":
        leaf = dev.ss.leaf_gpa(0x5000)
        assert leaf is not None
        _patch(g, leaf, g.u64(leaf) | 1 << 50)  # an address bit above the 48-bit HAW
    elif case == "pasid_in_legacy_mode_fr0x31":
        pasid = 1
    await _invalidate_all(g)
    reason, kind = LEGACY_CASES[case]
    got = (await g.dma_write(iova, b"1", pasid=pasid) if write
           else await g.dma_read(iova, 1, pasid=pasid))
    assert isinstance(got, Fault)
    assert (got.code, got.kind, got.address) == (reason, kind, iova)
    # Second-stage walk faults are stage 2; context-structure faults stage 0 (protocol.md).
    assert got.stage == (2 if reason in (0x4, 0x5, 0x6, 0x7, 0xC) else 0)
    _, frcd_hi = await g.frcd()
    assert (frcd_hi >> 63, (frcd_hi >> 32) & 0xFF, frcd_hi & 0xFFFF) == (1, reason, SID)
    assert await g.drv.read(0x34) & 0x2  # PPF


async def test_fpd_suppresses_qualified_faults_only(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, DID, fpd=True)
    got = await g.dma_read(0x9000, 4)
    assert isinstance(got, Fault) and got.code == 0x6  # the reply still reports it
    assert (await g.frcd())[1] == 0 and await g.drv.read(0x34) == 0  # 7.2 meas.: not recorded
    # A root entry not present is not qualified: recorded whatever FPD says elsewhere.
    got = await g.dma_read(0x9000, 4, sid=0x0100)
    assert isinstance(got, Fault) and got.code == 0x1
    assert (await g.frcd())[1] >> 32 & 0xFF == 0x1


async def test_translate_faults_are_never_recorded(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, DID)
    got = await g.client.translate(SID, 0x9000, flags=1)
    assert got == Fault(kind=2, code=0x5, address=0x9000, stage=2)
    assert await g.drv.read(0x34) == 0


async def test_stale_iotlb_until_page_selective_invalidation(vtd_guest: GuestFactory) -> None:
    # 7.2 meas.: after a PTE change without invalidation the stale translation is used.
    g = await vtd_guest()
    dev = await _setup(g)
    assert dev.ss is not None
    old, new = g.ram.alloc(4096), g.ram.alloc(4096)
    g.ram.write(old, b"old!")
    g.ram.write(new, b"new!")
    leaf = dev.ss.leaf_gpa(0x5000)
    assert leaf is not None
    _patch(g, leaf, old | 3)
    await g.drv.flush(dev, 0x5000, 4096)
    assert await g.dma_read(0x5000, 4) == b"old!"
    _patch(g, leaf, new | 3)
    assert await g.dma_read(0x5000, 4) == b"old!"
    assert await g.drv.qi_sync(iotlb_page(DID, 0x5000))
    assert await g.dma_read(0x5000, 4) == b"new!"


async def test_stale_context_until_context_cache_invalidation(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await _setup(g)
    assert isinstance(await g.dma_read(0x5000, 4), bytes)
    _write_context(g, 0, 0)
    assert isinstance(await g.dma_read(0x5000, 4), bytes)  # the context cache still holds it
    assert await g.drv.qi_sync(cc_device(DID, SID))
    got = await g.dma_read(0x5000, 4)
    assert isinstance(got, Fault) and got.code == 0x2


@pytest.mark.parametrize("fm", [0, 1, 2, 3])
async def test_context_cache_function_mask(vtd_guest: GuestFactory, fm: int) -> None:
    g = await vtd_guest()
    await _setup(g)
    assert isinstance(await g.dma_read(0x5000, 4), bytes)
    _write_context(g, 0, 0)
    # SID 0x18 is devfn 3.0; invalidating 3.4 masks function bit 2 from FM = 1 on.
    assert await g.drv.qi_sync(cc_device(DID, 0x1C, fm))
    got = await g.dma_read(0x5000, 4)
    assert isinstance(got, Fault) == (fm >= 1)


async def test_register_based_invalidation_before_qi(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    drv = g.drv
    await drv.read(0x8, 8)
    base = g.ram.alloc(1 << 20)
    drv.alloc = TableAllocator(drv.port, base, 1 << 20)
    drv.root = drv.alloc.alloc(4096)
    drv.cap = await drv.read(0x8, 8)
    ss = drv.second_stage()
    buf = g.ram.alloc(4096)
    ss.map(0x5000, buf, 4096)
    table = drv._context_table(0, False)
    g.ram.write(table + SID * 16, struct.pack("<2Q", ss.root | 1, DID << 8 | 2))
    await drv.write(0x20, drv.root, 8)
    await drv.write(0x18, 1 << 30)
    await drv.write(0x28, 1 << 63 | 1 << 61, 8)  # CCMD global
    assert await drv.read(0x28, 8) == 0x2800_0000_0000_0000  # 7.2 meas.
    await drv.write(0xF8, 1 << 63 | 1 << 60, 8)  # IOTLB global
    assert await drv.read(0xF8, 8) == 0x1200_0000_0000_0000  # 7.2 meas.
    await drv.write(0x18, 1 << 31)
    g.ram.write(buf, b"regs")
    assert await g.dma_read(0x5000, 4) == b"regs"
    leaf = ss.leaf_gpa(0x5000)
    assert leaf is not None
    _patch(g, leaf, 0)
    await drv.write(0xF0, 0x5000, 8)
    await drv.write(0xF8, 1 << 63 | 3 << 60 | DID << 32, 8)  # PSI
    assert await drv.read(0xF8, 8) == 0x3600_0005_0000_0000  # 7.2 meas.
    assert isinstance(await g.dma_read(0x5000, 4), Fault)


async def test_caching_mode_shadows_on_invalidation(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("caching-mode=on")
    dev = await _setup(g)
    assert await g.drv.read(0x8, 8) & 1 << 7  # CAP.CM
    buf = g.ram.alloc(2 << 20, 2 << 20)
    g.ram.write(buf + 0x1234, b"2M")
    await g.drv.map(dev, 0x20_0000, buf, 2 << 20)
    assert await g.dma_read(0x20_1234, 2) == b"2M"
    t = await g.client.translate(SID, 0x20_1234)
    assert isinstance(t, Translation) and t.address == buf + 0x1234
    await g.drv.unmap(dev, 0x20_0000, 2 << 20)
    got = await g.dma_read(0x20_1234, 2)
    assert isinstance(got, Fault) and got.code == 0x6
