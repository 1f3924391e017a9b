"""Queued invalidation end to end: every descriptor type, every IQE case with its IQERCD
code, the wait descriptor's status write / interrupt / fence, the queue at its limits, and the
guest-triggerable aborts of QEMU's intel_iommu (reference/vtd.md §8 #1-#3), which here give
the architectural result instead.
"""

from __future__ import annotations

import struct

import pytest

from protocols import messages as m
from tests.e2e.vtd_helpers import MSI_ADDR, SID, VECTOR_INVALIDATION, Guest, GuestFactory
from vmm.drivers import vtd as d
from vmm.harness import Fault

DID = 7
FSTS_IQE = 1 << 4


async def _legacy(vtd_guest: GuestFactory, *options: str) -> Guest:
    g = await vtd_guest(*options)
    assert (await g.drv.bring_up(scalable=False)).ok
    return g


async def _iqe(g: Guest) -> tuple[int, int, int]:
    """(FSTS.IQE, IQERCD.IQEI, IQH) after the last submission."""
    fsts = await g.drv.read(d.FSTS)
    return (fsts >> 4) & 1, (await g.drv.read(d.IQERCD, 8)) & 0xF, await g.drv.read(d.IQH, 8)


# -- every descriptor type executes --------------------------------------------------------


async def test_context_cache_descriptors_all_granularities(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    start = g.drv.tail
    for desc in (d.cc_global(), d.qi_desc(d.QI_CC_TYPE | d.QI_GRAN_DOMAIN | DID << 16, 0),
                 d.cc_device(DID, SID, 3)):
        assert await g.drv.qi_sync(desc)
    assert await _iqe(g) == (0, 0, start + 3 * 2 * 16)


async def test_iotlb_descriptors_all_granularities(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    dev = await g.drv.attach_legacy(SID, DID)
    buf = g.ram.alloc(4096)
    await g.drv.map(dev, 0x3000, buf, 4096)
    for desc in (d.iotlb_global(), d.iotlb_domain(DID), d.iotlb_page(DID, 0x3000, 0, ih=1),
                 d.iotlb_page(DID, 0, 18)):
        assert await g.drv.qi_sync(desc)
    assert isinstance(await g.dma_read(0x3000, 8), bytes)


async def test_device_tlb_invalidation_reaches_the_device(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest, "device-iotlb=on")
    assert await g.drv.qi_sync(d.dev_iotlb(SID, 0x4000), d.dev_iotlb(SID, 0x7000, 1))
    atc = [e.fields for e in await g.events() if e.code == m.BackendMessage.ATC_INVALIDATE]
    assert [(a["requester"], a["pasid"], a["address"], a["size"]) for a in atc] == [
        (SID, m.NO_PASID, 0x4000, 0x1000),
        (SID, m.NO_PASID, 0x0, 0x10000),  # S=1 with ADDR bits 14:12 set: 2^(3+1) pages
    ]


async def test_interrupt_entry_cache_descriptor_with_intremap(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest, "intremap=on")
    start = g.drv.tail
    assert await g.drv.qi_sync(d.iec(), d.iec(index=5, mask=3, glob=False))
    assert await _iqe(g) == (0, 0, start + 3 * 16)


async def test_pasid_descriptors_in_scalable_mode(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("scalable-mode=on", "pasid-bits=20", "device-iotlb=on")
    assert (await g.drv.bring_up()).ok
    descs = [
        d.pasid_iotlb(DID, 5), d.pasid_iotlb(DID, 5, 0x4000, 2),
        d.pasid_cache(d.QI_PC_ALL_PASIDS, DID), d.pasid_cache(d.QI_PC_PASID_SEL, DID, 5),
        d.pasid_cache(d.QI_PC_GLOBAL), d.pasid_dev_iotlb(SID, 5, 0x8000),
        d.pasid_dev_iotlb(SID, 5, 0, glob=1),
    ]
    assert await g.drv.qi_sync(*descs)
    atc = [e.fields for e in await g.events() if e.code == m.BackendMessage.ATC_INVALIDATE]
    assert [(a["pasid"], a["address"], a["size"]) for a in atc] == [
        (5, 0x8000, 0x1000), (m.NO_PASID, 0, 0x1000)]


# -- the wait descriptor --------------------------------------------------------------------


async def test_wait_status_write_only(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    status = g.ram.alloc(8)
    await g.drv.qi_submit(d.wait_desc(status=status, data=0xCAFE, sw=True))
    assert g.ram.read_u32(status) == 0xCAFE
    assert await g.drv.read(d.ICS) == 0  # 7.2 meas.


async def test_wait_interrupt_flag_masked_pends_then_fires(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    await g.drv.write(d.IEDATA, 0x41)
    await g.drv.write(d.IEADDR, MSI_ADDR)
    await g.drv.qi_submit(d.wait_desc(iflag=True))
    assert await g.drv.read(d.ICS) == 1
    assert await g.drv.read(d.IECTL) == 0xC000_0000  # masked: IP set (7.2 meas.)
    assert await g.irqs(VECTOR_INVALIDATION) == []
    await g.drv.write(d.IECTL, 0)
    irqs = await g.irqs(VECTOR_INVALIDATION)
    assert [(i["msi_address"], i["msi_data"]) for i in irqs] == [(MSI_ADDR, 0x41)]
    assert await g.drv.read(d.IECTL) == 0


async def test_wait_interrupt_only_on_iwc_transition(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    await g.drv.write(d.IEADDR, MSI_ADDR)
    await g.drv.write(d.IECTL, 0)
    await g.drv.qi_submit(d.wait_desc(iflag=True), d.wait_desc(iflag=True))
    assert len(await g.irqs(VECTOR_INVALIDATION)) == 1
    await g.drv.write(d.ICS, 1)  # software clears IWC
    await g.drv.qi_submit(d.wait_desc(iflag=True))
    assert len(await g.irqs(VECTOR_INVALIDATION)) == 1


async def test_wait_with_status_write_and_interrupt_qemu_abort_3028(
        vtd_guest: GuestFactory) -> None:
    # reference/vtd.md §8 #1: QEMU asserted on SW and IF together (FreeBSD's wait).
    g = await _legacy(vtd_guest)
    status = g.ram.alloc(8)
    await g.drv.write(d.IEADDR, MSI_ADDR)
    await g.drv.write(d.IECTL, 0)
    start = g.drv.tail
    await g.drv.qi_submit(d.wait_desc(status=status, data=7, sw=True, iflag=True))
    assert g.ram.read_u32(status) == 7
    assert await g.drv.read(d.ICS) == 1
    assert len(await g.irqs(VECTOR_INVALIDATION)) == 1
    assert await _iqe(g) == (0, 0, start + 16)


async def test_wait_fence_only_is_valid_qemu_deviation(vtd_guest: GuestFactory) -> None:
    # reference/vtd.md §8 #2: QEMU 7.2 raised IQE for FN with neither SW nor IF.
    g = await _legacy(vtd_guest)
    start = g.drv.tail
    assert await g.drv.qi_sync(d.wait_desc(fence=True))
    assert await _iqe(g) == (0, 0, start + 32)


async def test_wait_status_to_non_ram_is_dropped_not_an_error(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    assert await g.drv.qi_sync(d.wait_desc(status=0x10_0000_0000, data=1, sw=True))


# -- every invalid-descriptor (IQE) case ----------------------------------------------------


IQE_DESCRIPTORS = {
    "type_0": (d.qi_desc(0, 0), 3),
    "type_0xf": (d.qi_desc(0xF, 0), 3),
    "type_0x10": (d.qi_desc(1 << 9, 0), 3),
    "device_tlb_without_dt": (d.dev_iotlb(SID, 0), 3),
    "iec_without_ir": (d.iec(), 3),
    "pasid_type_in_128_bit_queue_qemu_deviation": (d.qi_desc(d.QI_PC_TYPE | 3 << 4, 0), 3),
    "page_response_without_prs": (d.qi_desc(d.QI_PGRP_RESP_TYPE, 0), 3),
    "cc_bit8_reserved": (d.qi_desc(d.QI_CC_TYPE | d.QI_GRAN_GLOBAL | 1 << 8, 0), 4),
    "cc_granularity_0": (d.qi_desc(d.QI_CC_TYPE, 0), 4),
    "cc_high_word": (d.qi_desc(d.QI_CC_TYPE | d.QI_GRAN_GLOBAL, 1), 4),
    "iotlb_hi_bit7": (d.qi_desc(d.QI_IOTLB_TYPE | d.QI_GRAN_DEVICE_OR_PAGE, 1 << 7), 4),
    "iotlb_granularity_0": (d.qi_desc(d.QI_IOTLB_TYPE, 0), 4),
    "iotlb_am_19_beyond_mamv": (d.iotlb_page(DID, 0, 19), 4),
    "wait_drain_without_pds": (d.wait_desc(drain=True), 4),
    "wait_status_address_bits_1_0": (d.qi_desc(d.QI_IWD_TYPE | d.QI_IWD_STATUS_WRITE, 2), 4),
}


@pytest.mark.parametrize("case", sorted(IQE_DESCRIPTORS))
async def test_invalid_descriptor_sets_iqe_and_iqercd(vtd_guest: GuestFactory,
                                                      case: str) -> None:
    g = await _legacy(vtd_guest)
    desc, iqei = IQE_DESCRIPTORS[case]
    await g.drv.write(d.FEADDR, MSI_ADDR)
    await g.drv.write(d.FECTL, 0)
    start = g.drv.tail
    ok = await g.drv.qi_sync(d.iotlb_global(), desc)
    assert not ok
    # IQH stays at the bad descriptor, after the good one (7.2 meas.: FSTS = 0x10).
    assert await _iqe(g) == (1, iqei, start + 16)
    assert await g.drv.read(d.FSTS) == FSTS_IQE
    assert len(await g.irqs(0)) == 1  # one fault event
    # Software replaces the descriptor with a wait (Linux's qi_check_fault), clears IQE:
    # fetching resumes from IQH.
    head = await g.drv.read(d.IQH, 8)
    status = g.ram.alloc(8)
    g.ram.write(g.drv.queue + head, d.wait_desc(status=status, data=9, sw=True))
    await g.drv.write(d.FSTS, FSTS_IQE)
    assert g.ram.read_u32(status) == 9
    assert await g.drv.read(d.IQH, 8) == g.drv.tail
    assert await g.drv.read(d.FSTS) == 0


async def test_iqe_device_tlb_with_pfsid_without_dit(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest, "device-iotlb=on")
    assert not await g.drv.qi_sync(d.qi_desc(d.QI_DIOTLB_TYPE | SID << 32 | 1 << 12, 0))
    assert (await _iqe(g))[:2] == (1, 4)  # 7.2 meas.


async def test_iqe_invalid_tail_beyond_queue(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    start = g.drv.tail
    await g.drv.write(d.IQT, 0x1000, 8)  # QS = 0: 256 slots of 16 bytes (7.2 meas.)
    assert await _iqe(g) == (1, 1, start)


async def test_iqe_descriptor_fetch_error(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    drv = g.drv
    await drv.write(d.IQA, 0x10_0000_0000, 8)  # not guest RAM
    await drv.write(d.GCMD, d.GCMD_QIE)
    await drv.write(d.IQT, 0x10, 8)
    assert await _iqe(g) == (1, 2, 0)


async def test_iqe_256_bit_queue_on_a_legacy_unit_qemu_deviation(
        vtd_guest: GuestFactory) -> None:
    # QEMU's IQA wmask drops DW without SMTS, running the queue as 128-bit; the spec reports
    # the width as invalid (IQEI 5).
    g = await vtd_guest()
    queue = g.ram.alloc(4096)
    await g.drv.write(d.IQA, queue | d.IQA_DW, 8)
    await g.drv.write(d.GCMD, d.GCMD_QIE)
    await g.drv.write(d.IQT, 0x20, 8)
    assert await _iqe(g) == (1, 5, 0)


async def test_iqe_128_bit_queue_in_scalable_mode(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("scalable-mode=on")
    root, queue = g.ram.alloc(4096), g.ram.alloc(4096)
    await g.drv.write(d.RTADDR, root | d.RTADDR_TTM_SCALABLE, 8)
    await g.drv.write(d.GCMD, d.GCMD_SRTP)
    await g.drv.write(d.IQA, queue, 8)
    await g.drv.write(d.GCMD, d.GCMD_QIE)
    g.ram.write(queue, d.iotlb_global())
    await g.drv.write(d.IQT, 0x10, 8)
    assert await _iqe(g) == (1, 5, 0)


async def test_iqe_tail_not_256_bit_aligned(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("scalable-mode=on")
    assert (await g.drv.bring_up()).ok
    await g.drv.write(d.IQT, g.drv.tail + 0x10, 8)
    iqe, iqei, _ = await _iqe(g)
    assert (iqe, iqei) == (1, 6)


async def test_iqe_reserved_ttm(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    await g.drv.write(d.RTADDR, g.drv.root | 2 << 10, 8)  # TTM = 10: reserved
    status = (await g.drv.read(d.GSTS)) & d.GSTS_PERSISTENT
    await g.drv.write(d.GCMD, status | d.GCMD_SRTP)
    assert not await g.drv.qi_sync(d.iotlb_global())
    assert (await _iqe(g))[:2] == (1, 7)
    got = await g.dma_read(0x1000, 4)
    assert isinstance(got, Fault) and got.code == 0x30


async def test_errors_raise_one_fault_event_while_status_pending(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    await g.drv.write(d.FEADDR, MSI_ADDR)
    await g.drv.write(d.FECTL, 0)
    await g.dma_read(0x1000, 4)  # a primary fault: PPF, one event
    assert not await g.drv.qi_sync(d.qi_desc(0, 0))  # IQE while PPF pends: no new event
    assert len(await g.irqs(0)) == 1


# -- queue sizes at the limits --------------------------------------------------------------


@pytest.mark.parametrize("wide", [False, True])
async def test_largest_queue_wraps(vtd_guest: GuestFactory, wide: bool) -> None:
    options = ("scalable-mode=on",) if wide else ()
    g = await vtd_guest(*options)
    drv = g.drv
    assert (await drv.bring_up(qs=7, table_bytes=2 << 20)).ok  # 2^7 pages
    step = 32 if wide else 16
    slots = drv.queue_size // step  # 32768 narrow or 16384 wide descriptors
    filler = d.iotlb_global() if not wide else d.pasid_cache(d.QI_PC_GLOBAL)
    await drv.qi_put(*[filler] * (slots - drv.tail // step - 1))
    assert drv.tail == drv.queue_size - step
    await drv.write(d.IQT, drv.tail, 8)
    for _ in range(64):  # the budget spreads the work over register accesses
        if await drv.read(d.IQH, 8) == drv.tail:
            break
    assert await drv.read(d.IQH, 8) == drv.queue_size - step
    assert await drv.qi_sync(d.iotlb_global())  # written in the last slot and slot 0
    assert await drv.read(d.IQH, 8) == drv.tail == step
    assert (await _iqe(g))[0] == 0


async def test_full_queue_runs_within_a_bounded_budget(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    drv = g.drv
    # 255 descriptors in a 256-slot queue: all run, over more than one register access.
    await drv.qi_put(*[d.iotlb_global()] * 254)
    status = g.ram.alloc(8)
    await drv.qi_submit(d.wait_desc(status=status, data=3, sw=True))
    await drv.read(d.FSTS)
    assert g.ram.read_u32(status) == 3
    assert await drv.read(d.IQH, 8) == drv.tail


async def test_qi_disable_waits_for_an_idle_queue(vtd_guest: GuestFactory) -> None:
    g = await _legacy(vtd_guest)
    assert not await g.drv.qi_sync(d.qi_desc(0, 0))
    status = (await g.drv.read(d.GSTS)) & d.GSTS_PERSISTENT
    await g.drv.write(d.GCMD, status & ~d.GCMD_QIE)
    assert await g.drv.read(d.GSTS) & d.GSTS_QIES  # IQH != IQT: refused


# -- hostile register programming -------------------------------------------------------------


async def test_8_byte_writes_to_every_offset_qemu_abort(vtd_guest: GuestFactory) -> None:
    # reference/vtd.md §8 #3: QEMU asserted on 8-byte writes to 32-bit registers.
    for options in ((), ("scalable-mode=on", "pasid-bits=20", "pri=on", "device-iotlb=on",
                         "vcmd=on", "intremap=on")):
        g = await vtd_guest(*options)
        for offset in range(0, 0x1000, 8):
            await g.drv.write(offset, 0xFFFF_FFFF_FFFF_FFFF, 8)
            await g.drv.read(offset, 8)
        assert await g.drv.read(0x0) == 0x10  # still serving


async def test_oversized_access_to_32_bit_register_reads_zero(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.write(d.FECTL, 0, 8)
    assert await g.drv.read(d.FECTL, 8) == 0
    assert await g.drv.read(d.FECTL) == 0x8000_0000  # the write was ignored


async def test_all_ones_everywhere_then_dma(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("scalable-mode=on", "pasid-bits=20")
    for offset in range(0, 0x300, 4):
        await g.drv.write(offset, 0xFFFF_FFFF)
    for sid, pasid in ((SID, None), (SID, 3), (0xFFFF, 0xFFFFF)):
        got = await g.dma_read(0x1000, 64, sid=sid, pasid=pasid)
        assert isinstance(got, (bytes, Fault))
    assert struct.unpack("<I", struct.pack("<I", await g.drv.read(0)))[0] == 0x10
