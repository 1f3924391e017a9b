"""vSMMUv3 end to end, when the world does not take what the SMMU sends (protocol.md §1,
"ATC_INVALIDATE" and "Interrupts"): an ATC invalidation no back-end channel took fails the
next CMD_SYNC with CERROR_ATC_INV_SYNC (IHI 0070 §4.7.3, §7.1), recovered as Linux does; an
MSI that is neither guest RAM nor taken by a route activates GERROR.MSI_*_ABT_ERR (§7.5)."""

from __future__ import annotations

from pathlib import Path

import trio

from protocols import messages as m
from vmm.drivers import smmuv3 as d

from .smmuv3_helpers import MSI_DOORBELL, SmmuGuest, smmu_guest

MSI_CMDQ_ABT_ERR, MSI_EVENTQ_ABT_ERR = 1 << 4, 1 << 5
MSI_GERROR_ABT_ERR = 1 << 7


async def active_gerrors(g: SmmuGuest) -> int:
    return await g.drv.read(d.GERROR) ^ await g.drv.read(d.GERRORN)


async def cons_index(g: SmmuGuest) -> int:
    return await g.drv.read(d.CMDQ_CONS) & ((2 << g.drv.cmdq_log2) - 1)


async def test_atc_inv_with_a_channel_syncs(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        assert await g.drv.submit(d.cmd_atc_inv(5, 0x7000, 0))
        assert await active_gerrors(g) == 0
        assert [e.code for e in await g.messages()] == [m.BackendMessage.ATC_INVALIDATE]


async def test_atc_inv_nobody_takes_is_cerror_atc_inv_sync_at_the_sync(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        g.channel.close()  # the device side went away: the daemon's send fails
        drv = g.drv
        assert not await drv.submit(d.cmd_tlbi_nsnh_all(), d.cmd_atc_inv(5, 0x7000, 0))
        assert await drv.cmdq_error() == d.CERROR_ATC_INV_SYNC
        assert await cons_index(g) == (drv.prod - 1) & ((2 << drv.cmdq_log2) - 1)  # the SYNC
        # Linux: leave the CMD_SYNC where it is and acknowledge; it runs again and completes
        # (the lost invalidation is no longer outstanding).
        await drv.recover_cmdq()
        assert await drv.cmdq_error() == 0
        assert await cons_index(g) == drv.prod
        assert await drv.submit(d.cmd_tlbi_nsnh_all())


async def test_atc_inv_each_lost_batch_fails_one_sync(tmp_path: Path,
                                                      nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        g.channel.close()
        drv = g.drv
        for _ in range(2):
            assert not await drv.submit(d.cmd_atc_inv(1, 0, 52), d.cmd_atc_inv(2, 0, 52))
            assert await drv.cmdq_error() == d.CERROR_ATC_INV_SYNC
            await drv.recover_cmdq()
            assert await drv.cmdq_error() == 0


async def test_sync_msi_nobody_takes_is_msi_cmdq_abt_err_and_completes(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        g.channel.close()  # MSI_DOORBELL is not RAM; no eventfd, no channel
        await g.drv.put(d.cmd_sync(d.SYNC_CS_IRQ, MSI_DOORBELL, 0x4321))
        assert await cons_index(g) == g.drv.prod  # the CMD_SYNC completed all the same
        assert await active_gerrors(g) == MSI_CMDQ_ABT_ERR
        await g.drv.write(d.GERRORN, await g.drv.read(d.GERROR))
        assert await active_gerrors(g) == 0


async def test_sync_msi_to_ram_or_through_the_channel_is_delivered(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=True) as g:
        assert await g.drv.submit(d.cmd_tlbi_nsnh_all())  # MSIPOLL into RAM
        await g.drv.put(d.cmd_sync(d.SYNC_CS_IRQ, MSI_DOORBELL, 1))  # IRQ message
        assert await active_gerrors(g) == 0


async def test_evtq_and_gerror_msis_nobody_takes(tmp_path: Path,
                                                 nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        drv = g.drv
        await drv.write(d.IRQ_CTRL, 0)
        await drv.write(d.EVTQ_IRQ_CFG0, MSI_DOORBELL, 8)
        await drv.write(d.GERROR_IRQ_CFG0, MSI_DOORBELL + 4, 8)
        await drv.write(d.IRQ_CTRL, d.IRQ_CTRL_GERROR | d.IRQ_CTRL_EVTQ)
        g.channel.close()
        fault = await g.dma_read(0x33, 0x1000, 8)  # no STE: C_BAD_STE is recorded
        assert not isinstance(fault, bytes)
        # The EVTQ MSI aborted (MSI_EVENTQ_ABT_ERR), whose GERROR MSI aborted too
        # (MSI_GERROR_ABT_ERR, which raises no further GERROR interrupt, §7.5.1).
        assert await active_gerrors(g) == MSI_EVENTQ_ABT_ERR | MSI_GERROR_ABT_ERR
        assert await drv.read(d.EVTQ_PROD) & 0xFFFFF == 1  # the record itself is written
