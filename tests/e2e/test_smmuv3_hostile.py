"""Hostile vSMMUv3 configurations through the socket: each gives its architectural error
(C_BAD_STE, C_BAD_CD, fetch aborts, CERROR_*, *_ABT_ERR), never an exception, a hang or a
dead connection — and random structures and commands leave the daemon serving."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import trio

from vmm.drivers import smmuv3 as d
from vmm.harness import Fault

from .smmuv3_helpers import SmmuGuest, smmu_guest

NOT_RAM = 0x9_0000_0000


def qwords(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words) + bytes(64 - 8 * len(words))


async def code_of(g: SmmuGuest, sid: int, iova: int = 0x1000, **kw: int) -> int | None:
    got = await g.dma_read(sid, iova, 8, **kw)
    return got.code if isinstance(got, Fault) else None


async def test_hostile_stes_and_cds(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, "ssidsize=20") as g:
        drv = g.drv
        s2_base = 0x0004_0000_0000_0000 | 20 << 32 | 2 << 38 | 5 << 48  # T0SZ 20, SL0 2
        # S2AA64 = 0 (QEMU asserts on it).
        await drv.write_ste(1, qwords(0xD, 0, s2_base, 0x4800_0000))
        assert await code_of(g, 1) == 0x04
        # Reserved Config values behave as abort: no event.
        for sid, cfg in ((2, 1), (3, 2), (4, 3)):
            await drv.write_ste(sid, qwords(1 | cfg << 1))
            assert await code_of(g, sid) == 0
        # S2TTB far beyond the PA size; S2T0SZ 0; every reserved S2TG.
        for sid, dw2, dw3 in ((5, s2_base | 1 << 51, 1 << 50), (6, 1 << 51 | 5 << 48, 0x4800_0000),
                              (7, s2_base | 1 << 51 | 3 << 46, 0x4800_0000)):
            await drv.write_ste(sid, qwords(0xD, 0, dw2, dw3))
            assert await code_of(g, sid) == 0x04
        # 2^20 SubstreamIDs in a 2-level CD table with 64 KB leaves; IPS 6 and 7.
        dom = drv.s1_domain()
        await drv.attach_s1(8, dom, ssid_bits=20)
        buf = g.ram.alloc(4096)
        g.ram.write(buf, b"ssid-max")
        await dom.map(0x2000, buf)
        assert dom.s1 is not None
        for ssid, ips in (((1 << 20) - 1, 6), (0x8_1234, 7)):
            g.ram.write(drv.cd_address(8, ssid), d.cd_words(ttb0=dom.s1.root, ips=ips, asid=9))
            await drv.submit(d.cmd_cfgi_cd(8, ssid))
            assert await g.dma_read(8, 0x2000, 8, pasid=ssid) == b"ssid-max"
        assert await code_of(g, 8, pasid=1 << 20) == 0x08
        # A CD table, and an L2 CD table, outside guest RAM.
        await drv.write_ste(9, d.ste_words(config=d.STE_CFG_S1, cdtab=NOT_RAM, s1cdmax=4))
        assert await code_of(g, 9, pasid=3) == 0x09
        l1 = drv.cd_tables[8][0]
        g.ram.write(l1 + 8 * 5, struct.pack("<Q", NOT_RAM | 1))
        await drv.submit(d.cmd_cfgi_cd_all(8))
        assert await code_of(g, 8, pasid=5 << 10) == 0x09
        # A stage-1 table that points at itself: the walk still reads at most four entries
        # and ends in a translation-related fault (whatever the loop's entries look like).
        g.ram.write(drv.cd_address(8, 7), d.cd_words(ttb0=dom.s1.root, asid=11))
        await drv.submit(d.cmd_cfgi_cd(8, 7))
        g.ram.write(dom.s1.root + 8 * 2, struct.pack("<Q", dom.s1.root | 3))
        assert await code_of(g, 8, iova=2 << 39, pasid=7) in (0x10, 0x11, 0x12, 0x13)


async def test_hostile_registers(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery) as g:
        drv = g.drv
        cr0 = await drv.read(d.CR0)
        await drv.write(d.CR0, 0)
        # Giant LOG2SIZEs are capped at IDR1's 19; queues outside guest RAM abort.
        await drv.write(d.CMDQ_BASE, NOT_RAM | 31, 8)
        assert await drv.read(d.CMDQ_BASE, 8) & 0x1F == 19
        await drv.write(d.EVTQ_BASE, NOT_RAM | 31, 8)
        await drv.write(d.PRIQ_BASE, NOT_RAM | 31, 8)
        await drv.write(d.STRTAB_BASE_CFG, 63)  # LOG2SIZE 63: a table far beyond RAM
        await drv.write(d.CR0, cr0)
        await drv.write(d.CMDQ_PROD, 0x7FFFF)  # an inconsistent PROD: bounded, then an abort
        assert await drv.cmdq_error() == 2
        got = await g.dma_read(0x2222, 0, 8)
        assert isinstance(got, Fault) and got.code == 0x03  # F_STE_FETCH...
        gerror = await drv.read(d.GERROR)
        assert gerror & (1 << 2)  # ...and its record could not be written: EVENTQ_ABT_ERR
        assert await g.page_request(3, 0x1000, 1, flags=0x11) == 0
        assert await drv.read(d.GERROR) & (1 << 3)  # PRIQ_ABT_ERR


@pytest.mark.parametrize("seed", range(3))
async def test_random_structures_and_commands_never_break_the_daemon(
        tmp_path: Path, nursery: trio.Nursery, seed: int) -> None:
    rng = random.Random(seed)
    mode = ("nested", "shadow")[seed % 2]
    async with smmu_guest(tmp_path, nursery, "ssidsize=8", f"s1-mode={mode}") as g:
        drv = g.drv
        cd_table = g.ram.alloc(64 * 16, 4096)
        for _ in range(60):
            sid = rng.randrange(0, 16)
            raw = bytearray(rng.randbytes(64))
            if rng.random() < 0.7:  # mostly valid-looking: V = 1, a plausible pointer
                raw[0] = (raw[0] & 0x0E) | 1
                raw[0:8] = ((int.from_bytes(raw[0:8], "little") & 0xF80000000000003F)
                            | cd_table).to_bytes(8, "little")
            g.ram.write(drv.ste_address(sid), bytes(raw))
            g.ram.write(cd_table + 64 * rng.randrange(16), rng.randbytes(64))
            cmd = rng.randbytes(16)
            if rng.random() < 0.5:
                cmd = bytes([rng.choice((0x03, 0x04, 0x05, 0x06, 0x11, 0x12, 0x28, 0x2A))]) \
                    + cmd[1:]
            await drv.put(cmd, d.cmd_cfgi_all())
            if await drv.cmdq_error():
                await drv.recover_cmdq()
            pasid = rng.choice((None, 0, 1, 255, 300))
            await g.dma_read(sid, rng.getrandbits(64) & ~7, 8, pasid=pasid)
            await g.client.translate(sid, rng.getrandbits(48), pasid=0xFFFF_FFFF
                                     if pasid is None else pasid)
            await drv.events()
        # Still serving, and still translating correctly.
        dom = drv.s1_domain()
        await drv.attach_s1(20, dom)
        buf = g.ram.alloc(4096)
        g.ram.write(buf, b"survived")
        await dom.map(0x3000, buf)
        assert await g.dma_read(20, 0x3000, 8) == b"survived"
