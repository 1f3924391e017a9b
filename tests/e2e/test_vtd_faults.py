"""Fault recording and fault events end to end (VT-d §7.2-§7.3): eight fault recording
registers filled in turn, FSTS.PPF/FRI/PFO, the fault event as an MSI on the back-end channel,
masking through FECTL.IM/IP, and records that stay consistent when software services them.
"""

from __future__ import annotations

from tests.e2e.vtd_helpers import MSI_ADDR, SID, VECTOR_FAULT, Guest, GuestFactory
from vmm.drivers import vtd as d

FRCD_F = 1 << 63


async def _guest(vtd_guest: GuestFactory) -> Guest:
    g = await vtd_guest()
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, 1)
    await g.drv.write(d.FEDATA, 0x55)
    await g.drv.write(d.FEADDR, MSI_ADDR)
    return g


async def test_faults_of_one_source_fill_records_in_turn_no_collapse_qemu_deviation(
        vtd_guest: GuestFactory) -> None:
    # QEMU keeps one FRCD and drops a fault whose source-id already has one pending
    # (vtd_try_collapse_fault); here every fault gets a record until they run out.
    g = await _guest(vtd_guest)
    cap = await g.drv.read(d.CAP, 8)
    records = ((cap >> 40) & 0xFF) + 1
    assert records == 8 and (cap >> 24) & 0x3FF == 0x22
    for i in range(records):
        await g.dma_read(0x1000 * (i + 1), 4)
    for i in range(records):
        lo, hi = await g.frcd(i)
        assert (lo, hi & FRCD_F, (hi >> 32) & 0xFF) == (0x1000 * (i + 1), FRCD_F, 0x6)
    assert await g.drv.read(d.FSTS) == 0x2  # PPF, FRI 0
    await g.dma_read(0x9_0000, 4)  # the next register still holds a record: overflow
    assert await g.drv.read(d.FSTS) == 0x3  # PFO | PPF
    lo, _ = await g.frcd(0)
    assert lo == 0x1000  # not overwritten
    # While PFO is set nothing is recorded, even once a register is free.
    await g.drv.write(0x228, FRCD_F, 8)
    await g.dma_read(0xA_0000, 4)
    lo, hi = await g.frcd(0)
    assert (lo, hi & FRCD_F) == (0x1000, 0)  # F cleared, the old record left as it was
    await g.drv.write(d.FSTS, 1)  # clear PFO
    await g.dma_read(0xB_0000, 4)
    assert (await g.frcd(0))[0] == 0xB_0000


async def test_fri_points_at_the_first_pending_record(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await g.dma_read(0x1000, 4)
    await g.dma_read(0x2000, 4)
    await g.drv.write(0x228, FRCD_F, 8)
    await g.drv.write(0x238, FRCD_F, 8)
    assert await g.drv.read(d.FSTS) == 0  # clearing every F clears PPF
    await g.dma_read(0x3000, 4)
    assert await g.drv.read(d.FSTS) == 0x2 | 2 << 8  # FRI 2: the third register
    assert (await g.frcd(2))[0] == 0x3000


async def test_fault_event_msi_once_per_new_condition(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await g.drv.write(d.FECTL, 0)
    await g.dma_read(0x1000, 4)
    await g.dma_read(0x2000, 4)  # PPF already set: no second event
    irqs = await g.irqs(VECTOR_FAULT)
    assert [(i["msi_address"], i["msi_data"]) for i in irqs] == [(MSI_ADDR, 0x55)]
    await g.drv.write(0x228, FRCD_F, 8)
    await g.drv.write(0x238, FRCD_F, 8)
    await g.dma_read(0x3000, 4)
    assert len(await g.irqs(VECTOR_FAULT)) == 1


async def test_masked_fault_event_pends_in_ip(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await g.dma_read(0x1000, 4)
    assert await g.drv.read(d.FECTL) == 0xC000_0000  # 7.2 meas.
    assert await g.irqs(VECTOR_FAULT) == []
    await g.drv.write(d.FECTL, 0)
    assert len(await g.irqs(VECTOR_FAULT)) == 1
    assert await g.drv.read(d.FECTL) == 0


async def test_servicing_every_record_withdraws_a_pending_event(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await g.dma_read(0x1000, 4)
    await g.drv.write(0x228, FRCD_F, 8)
    assert await g.drv.read(d.FECTL) == 0x8000_0000
    await g.drv.write(d.FECTL, 0)
    assert await g.irqs(VECTOR_FAULT) == []


async def test_fault_event_msi_to_guest_ram_is_a_memory_write(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    mailbox = g.ram.alloc(8)
    await g.drv.write(d.FEADDR, mailbox)
    await g.drv.write(d.FECTL, 0)
    await g.dma_read(0x1000, 4)
    assert g.ram.read_u32(mailbox) == 0x55
    assert await g.irqs(VECTOR_FAULT) == []


async def test_write_fault_record_fields(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await g.dma_write(0x4321, b"z")
    lo, hi = await g.frcd()
    assert lo == 0x4000  # FI: the page
    assert hi == FRCD_F | 0x5 << 32 | SID  # T1 = 0 (write), no PASID, FR 5
