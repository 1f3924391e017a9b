"""VT-d Invalidation Time-out Error end to end (VT-d §6.5.2.10; protocol.md §1
"ATC_INVALIDATE"): a device-TLB invalidation no back-end channel took never completes, so the
next invalidation wait descriptor is aborted — no status write, no interrupt — IQH moves past
it, FSTS.ITE and IQERCD.ITESID are set, a fault event is raised, and nothing more is fetched
until software clears ITE (Linux's qi_check_fault then resubmits)."""

from __future__ import annotations

from protocols import messages as m
from tests.e2e.vtd_helpers import MSI_ADDR, SID, Guest, GuestFactory
from vmm.drivers import vtd as d

FSTS_ITE = 1 << 6


async def _guest(vtd_guest: GuestFactory) -> Guest:
    g = await vtd_guest("device-iotlb=on")
    assert (await g.drv.bring_up(scalable=False)).ok
    await g.drv.write(d.FEADDR, MSI_ADDR)
    await g.drv.write(d.FEDATA, 0x21)
    await g.drv.write(d.FECTL, 0)
    return g


async def test_delivered_device_tlb_invalidation_completes(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    assert await g.drv.qi_sync(d.dev_iotlb(SID, 0x4000))
    assert await g.drv.read(d.FSTS) & FSTS_ITE == 0
    assert [e.code for e in await g.events()] == [m.BackendMessage.ATC_INVALIDATE]


async def test_lost_device_tlb_invalidation_is_ite_at_the_wait(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    drv = g.drv
    assert await drv.qi_sync(d.iotlb_global())
    g.channel.close()  # the device side went away: the daemon's send fails
    start = drv.tail
    assert not await drv.qi_sync(d.dev_iotlb(SID, 0x4000))
    assert await drv.read(d.FSTS) & FSTS_ITE
    assert (await drv.read(d.IQERCD, 8) >> 32) & 0xFFFF == SID  # ITESID
    assert await drv.read(d.IQH, 8) == start + 2 * 16  # past the aborted wait
    # Fetching stops while ITE is set: the next submission does not complete...
    assert not await drv.qi_sync(d.iotlb_global())
    assert await drv.read(d.IQH, 8) == start + 2 * 16
    # ...until software clears ITE: the queue resumes from IQH.
    await drv.write(d.FSTS, FSTS_ITE)
    assert await drv.read(d.FSTS) & FSTS_ITE == 0
    assert drv.ram.read_u32(drv.status) == drv.seq
    assert await drv.read(d.IQH, 8) == drv.tail


async def test_ite_raises_the_fault_event(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await g.drv.write(d.FECTL, 1 << 31)  # masked: the event pends in FECTL.IP
    g.channel.close()
    assert not await g.drv.qi_sync(d.dev_iotlb(SID, 0x4000))
    assert await g.drv.read(d.FSTS) & FSTS_ITE
    assert await g.drv.read(d.FECTL) == 0xC000_0000  # IM | IP
    await g.drv.write(d.FSTS, FSTS_ITE)  # servicing the only status bit withdraws it
    assert await g.drv.read(d.FECTL) == 0x8000_0000
