"""vSMMUv3 end to end, the command side: Linux's probe sequence (linear and 2-level stream
tables, MSI and wired interrupts), every command through the socket with its effect
observed, every CERROR path and its recovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from devices.model import Perm
from protocols import messages as m
from vmm.drivers import smmuv3 as d
from vmm.harness import Fault

from .smmuv3_helpers import MSI_DOORBELL, VEC_CMD_SYNC, VEC_GERROR, smmu_guest

PAGE = 4096


@pytest.mark.parametrize("two_level", [False, True])
@pytest.mark.parametrize("use_msi", [False, True])
async def test_linux_probe_and_a_stage1_dma(tmp_path: Path, nursery: trio.Nursery,
                                            two_level: bool, use_msi: bool) -> None:
    async with smmu_guest(tmp_path, nursery, two_level=two_level, use_msi=use_msi) as g:
        drv = g.drv
        assert drv.two_level == two_level
        sid = 0x1234 if two_level else 0x12
        checks = await drv.dma_checks(sid)
        assert all(ok for _, ok, _ in checks), checks
        if use_msi:
            # MSIPOLL: the CMD_SYNC's MSI wrote 0 into the sync entry itself; the wired
            # "cmdq-sync" line is asserted too (§4.7.3: regardless of the MSI address).
            assert VEC_CMD_SYNC in await g.irqs()


async def test_every_command_is_consumed(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, "ssidsize=8") as g:
        cmds = [
            d.cmd_prefetch_cfg(1), d.command(d.OP_PREFETCH_ADDR, 1 << 32, 0x5000 | 3),
            d.cmd_cfgi_ste(1), d.command(d.OP_CFGI_ALL, 0x40 << 32, 3),  # CFGI_STE_RANGE
            d.cmd_cfgi_all(), d.cmd_cfgi_cd(1, 2), d.cmd_cfgi_cd_all(1),
            d.cmd_tlbi_nh_all(), d.cmd_tlbi_nh_asid(3), d.cmd_tlbi_nh_va(3, 0x1000),
            d.cmd_tlbi_nh_va(0, 0x1000, all_asids=True, tg=1, num=3, ttl=3),
            d.cmd_tlbi_s12_vmall(2), d.cmd_tlbi_s2_ipa(2, 0x8000, tg=1, scale=2, ttl=3),
            d.cmd_tlbi_nsnh_all(), d.cmd_atc_inv(5, 0x7000, 0, ssid=4),
            d.cmd_pri_resp(5, 17, 2, ssid=4),
        ]
        assert await g.drv.submit(*cmds)
        assert await g.drv.cmdq_error() == 0
        msgs = await g.messages()
        atc = [e.fields for e in msgs if e.code == m.BackendMessage.ATC_INVALIDATE]
        assert [(f["requester"], f["pasid"], f["address"], f["size"]) for f in atc] == \
            [(5, 4, 0x7000, 4096)]
        resp = [e.fields for e in msgs if e.code == m.BackendMessage.PAGE_RESPONSE]
        assert [(f["requester"], f["pasid"], f["group"], f["code"]) for f in resp] == \
            [(5, 4, 17, 2)]


@pytest.mark.parametrize("bad", [
    d.command(0x00), d.command(0x07), d.command(0x18), d.command(0x20), d.command(0x44),
    d.command(0x45), d.command(0x60), d.command(0x80),
    d.command(d.OP_CFGI_STE, 1 << 10),                 # SSec = 1
    d.cmd_sync(3),                                      # CS reserved
    d.cmd_pri_resp(1, 1, 3),                            # Resp reserved
    d.cmd_atc_inv(1, 0, 53),                            # Size above 52
    d.cmd_tlbi_nh_va(1, 0x1000, tg=1),                  # TG without range or TTL
    d.command(d.OP_TLBI_NSNH_ALL, 1 << 40),             # a RES0 bit
], ids=["op00", "op07-cfgi-all-qemu", "tlbi-el3", "tlbi-el2", "resume", "stall-term",
        "tlbi-snh-all", "impdef", "ssec", "cs3", "resp3", "atc-size", "tg-alone", "res0"])
async def test_cerror_ill_stops_at_the_command_and_recovers(
        tmp_path: Path, nursery: trio.Nursery, bad: bytes) -> None:
    async with smmu_guest(tmp_path, nursery) as g:
        drv = g.drv
        assert not await drv.submit(bad)
        assert await drv.cmdq_error() == 1  # CERROR_ILL
        cons = await drv.read(d.CMDQ_CONS)
        assert cons & 0xFFFFF == (drv.prod - 2) & ((2 << drv.cmdq_log2) - 1)
        assert VEC_GERROR in await g.irqs()
        await drv.recover_cmdq()
        assert await drv.cmdq_error() == 0
        assert (await drv.read(d.CMDQ_CONS)) & 0xFFFFF == drv.prod
        assert await drv.submit(d.cmd_tlbi_nsnh_all())


async def test_cerror_abt_when_the_queue_is_not_ram(tmp_path: Path,
                                                    nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery) as g:
        drv = g.drv
        cr0 = await drv.read(d.CR0)
        await drv.write(d.CR0, cr0 & ~d.CR0_CMDQEN)
        await drv.write(d.CMDQ_BASE, 0x7_0000_0000 | 4, 8)  # outside guest RAM
        await drv.write(d.CMDQ_PROD, 0)
        await drv.write(d.CMDQ_CONS, 0)
        await drv.write(d.CR0, cr0)
        await drv.write(d.CMDQ_PROD, 1)
        assert await drv.cmdq_error() == 2  # CERROR_ABT
        assert (await drv.read(d.CMDQ_CONS)) & 0xFFFFF == 0
        # Put the queue back in RAM and retry: the acknowledgement resumes consumption.
        await drv.write(d.CR0, cr0 & ~d.CR0_CMDQEN)
        await drv.write(d.CMDQ_BASE, drv.cmdq | drv.cmdq_log2, 8)
        g.ram.write(drv.cmdq, d.cmd_sync())
        await drv.write(d.CR0, cr0)
        await drv.write(d.GERRORN, await drv.read(d.GERROR))
        assert await drv.cmdq_error() == 0
        assert (await drv.read(d.CMDQ_CONS)) & 0xFFFFF == 1


async def test_sync_msi_to_a_doorbell_is_an_irq_message(tmp_path: Path,
                                                         nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        await g.drv.put(d.cmd_sync(d.SYNC_CS_IRQ, MSI_DOORBELL, 0x4321))
        irqs = [e.fields for e in await g.messages() if e.code == m.BackendMessage.IRQ]
        assert {"vector": VEC_CMD_SYNC, "msi_address": MSI_DOORBELL, "msi_data": 0x4321} in \
            [{k: f[k] for k in ("vector", "msi_address", "msi_data")} for f in irqs]


async def test_sync_sig_none_sends_nothing(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, use_msi=False) as g:
        await g.drv.put(d.cmd_sync(d.SYNC_CS_NONE), d.cmd_sync(d.SYNC_CS_SEV))
        assert await g.irqs() == []


async def test_cfgi_and_tlbi_effects(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A stale STE and a stale TLB entry are used until their invalidation (a real SMMU
    may cache them, and a driver bug that forgets the command shows)."""
    async with smmu_guest(tmp_path, nursery) as g:
        drv = g.drv
        dom = drv.s1_domain()
        await drv.attach_s1(5, dom)
        buf = g.ram.alloc(2 * PAGE)
        await dom.map(0x10000, buf, PAGE)
        await g.dma_write(5, 0x10000, b"first")
        # Remap without invalidating: the old translation is still used...
        assert dom.s1 is not None
        dom.s1.unmap(0x10000, PAGE)
        dom.s1.map(0x10000, buf + PAGE, PAGE, Perm.R | Perm.W)
        await g.dma_write(5, 0x10000, b"stale")
        assert g.ram.read(buf, 5) == b"stale"
        # ...until CMD_TLBI_NH_VA + CMD_SYNC.
        assert await drv.submit(d.cmd_tlbi_nh_va(dom.asid, 0x10000))
        await g.dma_write(5, 0x10000, b"fresh")
        assert g.ram.read(buf + PAGE, 5) == b"fresh"
        # The STE is cached too: rewriting it to abort does nothing before CMD_CFGI_STE.
        g.ram.write(drv.ste_address(5), d.ste_abort())
        assert await g.dma_read(5, 0x10000, 5) == b"fresh"
        assert await drv.submit(d.cmd_cfgi_ste(5))
        assert isinstance(await g.dma_read(5, 0x10000, 5), Fault)
