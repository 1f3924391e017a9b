"""vSMMUv3 end to end, the translation side: every event type the model records, each
through a real DMA or TRANSLATE on the socket and read back from the guest's event queue;
the EVTQ and GERROR interrupts wired and by MSI; overflow; page requests through the PRI
queue and CMD_PRI_RESP back to the device."""

from __future__ import annotations

from pathlib import Path

import trio

from devices.model import Perm
from protocols import messages as m
from vmm.drivers import smmuv3 as d
from vmm.harness import Fault, Translation

from .smmuv3_helpers import (
    MSI_DOORBELL,
    VEC_EVTQ,
    VEC_GERROR,
    VEC_PRIQ,
    SmmuGuest,
    smmu_guest,
)

PAGE = 4096
F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION = 0x10, 0x11, 0x12, 0x13
C_BAD_STREAMID, F_STE_FETCH, C_BAD_STE, F_STREAM_DISABLED = 0x02, 0x03, 0x04, 0x06
C_BAD_SUBSTREAMID, F_CD_FETCH, C_BAD_CD, F_WALK_EABT = 0x08, 0x09, 0x0A, 0x0B


async def one_event(g: SmmuGuest) -> d.EventRecord:
    events = await g.drv.events()
    assert len(events) == 1, events
    return events[0]


async def test_every_event_type(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, "ssidsize=8", "sids=0-4095",
                          two_level=True) as g:
        drv = g.drv
        buf = g.ram.alloc(4 * PAGE)
        # C_BAD_STREAMID (CR2.RECINVSID is set by the driver): an L1STD with Span 0.
        assert isinstance(f := await g.dma_read(0x900, 0x1000, 4), Fault)
        assert (f.kind, f.code) == (5, C_BAD_STREAMID)
        assert (await one_event(g)).sid == 0x900
        # C_BAD_STE: a valid L1STD, an STE with V = 0.
        drv.ste_address(0x101)
        f = await g.dma_read(0x101, 0x1000, 4)
        assert isinstance(f, Fault) and f.code == C_BAD_STE
        assert (await one_event(g)).type == C_BAD_STE
        # F_STE_FETCH: an L1STD whose L2 array is not guest RAM.
        g.ram.write(drv.strtab + 8 * 0x3, (0x9_0000_0000 | 9).to_bytes(8, "little"))
        await drv.submit(d.cmd_cfgi_all())
        f = await g.dma_read(0x305, 0x1000, 4)
        assert isinstance(f, Fault) and (f.kind, f.code, f.stage) == (6, F_STE_FETCH, 0)
        ev = await one_event(g)
        assert ev.fetch_addr == 0x9_0000_0000 + 64 * 5
        # Stage 1 with substreams: a 2-level CD table (S1CDMax 8 → linear; use 2^8 CDs).
        dom = drv.s1_domain()
        await drv.attach_s1(0x10, dom, ssid_bits=8, s1dss=d.S1DSS_TERMINATE)
        await dom.map(0x4000, buf, PAGE, Perm.R)
        # F_STREAM_DISABLED: traffic without a SubstreamID, S1DSS = terminate.
        f = await g.dma_read(0x10, 0x4000, 4)
        assert isinstance(f, Fault) and (f.kind, f.code) == (7, F_STREAM_DISABLED)
        assert (await one_event(g)).type == F_STREAM_DISABLED
        # C_BAD_SUBSTREAMID: beyond S1CDMax.
        f = await g.dma_read(0x10, 0x4000, 4, pasid=0x100)
        assert isinstance(f, Fault) and f.code == C_BAD_SUBSTREAMID
        assert (await one_event(g)).ssid == 0x100
        # C_BAD_CD: SubstreamID 3's CD was never written (V = 0).
        f = await g.dma_read(0x10, 0x4000, 4, pasid=3)
        assert isinstance(f, Fault) and f.code == C_BAD_CD
        assert (await one_event(g)).ssid == 3
        # F_TRANSLATION / F_PERMISSION through CD 0 (SubstreamID 0: S1DSS = terminate
        # leaves SubstreamID 0 to the CD).
        f = await g.dma_read(0x10, 0x8000, 4, pasid=0)
        assert isinstance(f, Fault) and (f.kind, f.code, f.stage) == (1, F_TRANSLATION, 1)
        ev = await one_event(g)
        assert (ev.type, ev.input_addr, ev.s2, ev.cls, ev.ssid) == (F_TRANSLATION, 0x8000, 0,
                                                                    2, 0)
        f = await g.dma_write(0x10, 0x4000, b"x", pasid=0)
        assert isinstance(f, Fault) and (f.kind, f.code) == (2, F_PERMISSION)
        assert (await one_event(g)).rnw == 0
        # F_ACCESS: AF cleared in the leaf.
        assert dom.s1 is not None
        await dom.map(0x5000, buf, PAGE)
        leaf = dom.s1.leaf_gpa(0x5000)
        assert leaf is not None
        g.ram.write_u64(leaf, g.u64(leaf) & ~(1 << 10))
        f = await g.dma_read(0x10, 0x5000, 4, pasid=0)
        assert isinstance(f, Fault) and (f.kind, f.code) == (3, F_ACCESS)
        assert (await one_event(g)).type == F_ACCESS
        # F_ADDR_SIZE: a leaf beyond the effective IPS (the 44-bit OAS caps IPS 48).
        await dom.map(0x6000, 1 << 45, PAGE)
        f = await g.dma_read(0x10, 0x6000, 4, pasid=0)
        assert isinstance(f, Fault) and (f.kind, f.code) == (4, F_ADDR_SIZE)
        assert (await one_event(g)).type == F_ADDR_SIZE
        # F_WALK_EABT: a table descriptor pointing outside guest RAM.
        g.ram.write_u64(dom.s1.root + 8, 0x9_0000_0000 | 3)
        f = await g.dma_read(0x10, 1 << 39, 4, pasid=0)
        assert isinstance(f, Fault) and (f.kind, f.code, f.stage) == (6, F_WALK_EABT, 1)
        ev = await one_event(g)
        assert (ev.cls, ev.fetch_addr) == (1, 0x9_0000_0000)
        # F_CD_FETCH: a stream whose CD table is not guest RAM.
        g.ram.write(drv.ste_address(0x11), d.ste_words(
            config=d.STE_CFG_S1, cdtab=0x9_0000_0000, s1cdmax=2))
        await drv.submit(d.cmd_cfgi_ste(0x11))
        f = await g.dma_read(0x11, 0, 4, pasid=1)
        assert isinstance(f, Fault) and (f.kind, f.code, f.stage) == (6, F_CD_FETCH, 0)
        assert (await one_event(g)).fetch_addr == 0x9_0000_0000 + 64
        # TRANSLATE answers the same faults and records nothing.
        t = await g.client.translate(0x10, 0x8000, pasid=0)
        assert isinstance(t, Fault) and t.code == F_TRANSLATION
        assert await drv.events() == []


async def test_stage2_and_nested_events(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, "ssidsize=4") as g:
        drv = g.drv
        s2 = drv.s2_domain(identity=True)
        s1 = drv.s1_domain()
        await drv.attach_s1(3, s1, nested=s2)
        buf = g.ram.alloc(PAGE)
        await s1.map(0x1000, buf, PAGE)
        await s1.map(0x2000, 0x3_0000_0000, PAGE)  # an IPA stage 2 does not map
        assert await g.dma_write(3, 0x1000, b"nested") == b""
        assert g.ram.read(buf, 6) == b"nested"
        f = await g.dma_read(3, 0x2000, 4)
        assert isinstance(f, Fault) and (f.code, f.stage) == (F_TRANSLATION, 2)
        ev = await one_event(g)
        assert (ev.s2, ev.cls, ev.ipa) == (1, 2, 0x3_0000_0000)
        # A stage-1 table at an IPA stage 2 does not map: CLASS = TT, IPA = the table.
        assert s1.s1 is not None
        g.ram.write_u64(s1.s1.root + 8, 0x3_0000_0000 | 3)
        f = await g.dma_read(3, 1 << 39, 4)
        assert isinstance(f, Fault) and (f.code, f.stage) == (F_TRANSLATION, 2)
        ev = await one_event(g)
        assert (ev.s2, ev.cls, ev.ipa) == (1, 1, 0x3_0000_0000)
        # Stage 2 only: a read-only IPA.
        s2b = drv.s2_domain()
        await drv.attach_s2(4, s2b)
        await s2b.map(0x8000_0000, buf, PAGE, Perm.R)
        assert await g.dma_read(4, 0x8000_0000, 6) == b"nested"
        f = await g.dma_write(4, 0x8000_0000, b"no")
        assert isinstance(f, Fault) and (f.kind, f.code, f.stage) == (2, F_PERMISSION, 2)
        ev = await one_event(g)
        assert (ev.s2, ev.cls, ev.ipa) == (1, 2, 0x8000_0000)


async def test_evtq_and_gerror_interrupts_wired_and_msi(tmp_path: Path,
                                                         nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery) as g:
        drv = g.drv
        await g.dma_read(0x77, 0, 4)  # C_BAD_STE
        assert await g.irqs() == [VEC_EVTQ]
        await drv.events()
        await drv.write(d.EVTQ_IRQ_CFG0, MSI_DOORBELL, 8)
        await drv.write(d.EVTQ_IRQ_CFG1, 0x61)
        await g.dma_read(0x77, 0, 4)
        irq = [e.fields for e in await g.messages() if e.code == m.BackendMessage.IRQ]
        assert [(f["vector"], f["msi_address"], f["msi_data"]) for f in irq] == \
            [(VEC_EVTQ, MSI_DOORBELL, 0x61)]
        assert not await drv.submit(d.command(0))
        assert await g.irqs() == [VEC_GERROR]
        await drv.recover_cmdq()
        # An MSI into guest RAM is a memory write (and no message).
        mailbox = g.ram.alloc(64)
        await drv.write(d.GERROR_IRQ_CFG0, mailbox, 8)
        await drv.write(d.GERROR_IRQ_CFG1, 0xBEEF)
        assert not await drv.submit(d.command(0))
        assert g.ram.read_u32(mailbox) == 0xBEEF
        assert VEC_GERROR not in await g.irqs()


async def test_event_queue_overflow(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, evtq_log2=2) as g:
        for i in range(6):
            await g.dma_read(0x60 + i, 0, 4)
        prod = await g.drv.read(d.EVTQ_PROD)
        assert prod & d.Q_OVF and prod & 0x7 == 0b100
        events = await g.drv.events()
        assert [e.sid for e in events] == [0x60, 0x61, 0x62, 0x63]
        assert await g.drv.read(d.GERROR) == 0


async def test_page_requests_and_pri_responses(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, "ssidsize=8") as g:
        drv = g.drv
        assert await g.page_request(0x20, 0x1234_5000, 7, pasid=3, flags=0x3) == 0
        assert await g.page_request(0x20, 0x1235_5000, 7, pasid=3, flags=0x13) == 0  # Last
        assert VEC_PRIQ in await g.irqs()
        reqs = await drv.page_requests()
        assert [(r["sid"], r["ssid"], r["ssv"], r["last"], r["grpid"], r["addr"])
                for r in reqs] == [(0x20, 3, 1, 0, 7, 0x1234_5000),
                                   (0x20, 3, 1, 1, 7, 0x1235_5000)]
        assert await drv.submit(d.cmd_pri_resp(0x20, 7, 2, ssid=3))
        resp = [e.fields for e in await g.messages()
                if e.code == m.BackendMessage.PAGE_RESPONSE]
        assert [(f["requester"], f["pasid"], f["group"], f["code"]) for f in resp] == \
            [(0x20, 3, 7, 2)]
        # With the PRI queue disabled the SMMU answers Failure itself, without a PASID.
        cr0 = await drv.read(d.CR0)
        await drv.write(d.CR0, cr0 & ~d.CR0_PRIQEN)
        assert await g.page_request(0x20, 0x5000, 9, pasid=3, flags=0x11) == 0
        resp = [e.fields for e in await g.messages()
                if e.code == m.BackendMessage.PAGE_RESPONSE]
        assert [(f["pasid"], f["group"], f["code"]) for f in resp] == [(m.NO_PASID, 9, 0)]


async def test_translate_through_stage1(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery) as g:
        dom = g.drv.s1_domain()
        await g.drv.attach_s1(9, dom)
        buf = g.ram.alloc(2 << 20, 2 << 20)
        await dom.map(0x20_0000, buf, 2 << 20, Perm.R | Perm.W)
        t = await g.client.translate(9, 0x20_1234)
        assert isinstance(t, Translation)
        assert (t.address, t.size, t.perms) == (buf + 0x1234, 2 << 20, 3)
