"""Register handshakes end to end: GCMD one command per write (including a write that omits an
enabled bit), the virtual command interface's PASID allocation backed by the host's allocator
(seed 004), and reset.
"""

from __future__ import annotations

from tests.e2e.vtd_helpers import SID, GuestFactory
from vmm.drivers import vtd as d
from vmm.harness import Fault

VCMD_OPTS = ("scalable-mode=on", "pasid-bits=20", "vcmd=on")


async def test_gcmd_write_omitting_enabled_qie_disables_queued_invalidation(
        vtd_guest: GuestFactory) -> None:
    # 7.2 meas.: GCMD = TE after QIE dropped QIES (GSTS 0xc4000000 → 0xc0000000).  The spec
    # gives every persistent bit of a GCMD write its meaning, so this model does the same.
    g = await vtd_guest()
    await g.drv.bring_up()
    assert await g.drv.read(d.GSTS) == 0xC400_0000
    await g.drv.write(d.GCMD, d.GCMD_TE)
    assert await g.drv.read(d.GSTS) == 0xC000_0000


async def test_gcmd_write_omitting_te_disables_translation(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, 1)
    assert isinstance(await g.dma_read(0x1000, 4), Fault)
    await g.drv.write(d.GCMD, d.GCMD_QIE)  # TE omitted
    assert await g.drv.read(d.GSTS) == 0x4400_0000
    buf = g.ram.alloc(4096)
    g.ram.write(buf, b"bypass")
    assert await g.dma_read(buf, 6) == b"bypass"  # remapping off: untranslated


async def test_gcmd_recipe_changes_one_bit_per_write(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    await g.drv.bring_up()
    gsts = await g.drv.read(d.GSTS)
    await g.drv.write(d.GCMD, gsts & d.GSTS_PERSISTENT & ~d.GCMD_TE)
    assert await g.drv.read(d.GSTS) == gsts & ~d.GSTS_TES
    await g.drv.write(d.GCMD, gsts & d.GSTS_PERSISTENT)
    assert await g.drv.read(d.GSTS) == gsts


async def test_vcmd_allocates_and_frees_host_pasids(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest(*VCMD_OPTS)
    ecap = await g.drv.read(d.ECAP, 8)
    assert ecap & d.ECAP_VCS and await g.drv.read(d.VCCAP, 8) & 0b10  # PAS (rev 5.10 bit 1)
    first = await g.drv.alloc_pasid()
    second = await g.drv.alloc_pasid()
    assert first is not None and second is not None and first != second and first >= 1
    assert await g.drv.read(d.VCRSP, 8) & 1 == 0  # completed: IP clear
    assert await g.drv.free_pasid(first)
    assert not await g.drv.free_pasid(first)  # not allocated any more: SC 16
    sc, _ = await g.drv.vcmd(2, first)
    assert sc == 16
    assert await g.drv.alloc_pasid() == first  # the host hands it out again


async def test_vcmd_undefined_command(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest(*VCMD_OPTS)
    assert await g.drv.vcmd(0x33) == (1, 0)
    assert await g.drv.vcmd(0) == (0, 0)


async def test_vcmd_allocation_bounded_by_pasid_bits(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("scalable-mode=on", "pasid-bits=2", "vcmd=on")
    got = [await g.drv.alloc_pasid() for _ in range(4)]
    assert got == [1, 2, 3, None]  # PASID 0 is RID_PASID's; 2 bits leave 1..3


async def test_reset_returns_to_power_on_state(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest()
    before = [await g.drv.read(off, 4) for off in range(0, 0x300, 4)]
    await g.drv.bring_up()
    await g.drv.attach_legacy(SID, 1)
    await g.dma_read(0x1000, 4)
    await g.client.reset(0)
    assert [await g.drv.read(off, 4) for off in range(0, 0x300, 4)] == before
