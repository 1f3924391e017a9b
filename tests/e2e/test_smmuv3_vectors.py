"""Published vSMMUv3 vectors through the socket: QEMU's qtest ``iommu-smmuv3-test``
(smmuv3.md §9.1: IOVA 0x8080604567 → 0x4ECBA567, stage 1, stage 2 and nested) programmed
register by register as the qtest does, and the Linux kunit STE/CD encodings (§9.2) with
the hitless update sequences the kunit checks."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio

from devices.model import Perm
from vmm.drivers import smmuv3 as d
from vmm.harness import Fault

from .smmuv3_helpers import SmmuGuest, smmu_guest

QTEST_SID = 0x10  # the test device's devfn (00:02.0)
IOVA = 0x80_8060_4567
PA = 0x4ECB_A567
LEAF_RW = 0x0400_0000_0000_0763  # RW at stage 1, S2AP read-only
LEAF_RO = 0x0400_0000_0000_07E3  # read-only at stage 1, S2AP read-write
TABLE = 0x8000_0000_0000_0003


def qwords(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


async def qtest_setup(g: SmmuGuest, ste: bytes, leaf: int) -> None:
    """smmuv3.md §9.1, in the qtest's order."""
    w = g.drv.write
    ram = g.ram
    ram.write(0x4E4D_0000 + 8 * 1, qwords(0x4E4D_1000 | TABLE))
    ram.write(0x4E4D_1000 + 8 * 2, qwords(0x4E4D_2000 | TABLE))
    ram.write(0x4E4D_2000 + 8 * 3, qwords(0x4E4D_3000 | TABLE))
    ram.write(0x4E4D_3000 + 8 * 4, qwords(0x4ECB_A000 | leaf))
    ram.write(0x4E17_8FC0, qwords(0x1E20_6204_C000_0010, 0x4E4D_0001, 0x1, 0, 0, 0, 0, 0))
    ram.write(0x4E17_9000 + 64 * QTEST_SID, ste)
    await w(d.GBPA, 0x8000_0000)
    await w(d.CR0, 0)
    await w(d.CR1, 0x0D75)
    await w(d.CMDQ_BASE, 0x4E16_B00A, 8)
    await w(d.CMDQ_CONS, 0)
    await w(d.CMDQ_PROD, 0)
    await w(d.EVTQ_BASE, 0x4E17_000A, 8)
    await w(d.EVTQ_PROD, 0)
    await w(d.EVTQ_CONS, 0)
    await w(d.STRTAB_BASE_CFG, 0x5)
    await w(d.STRTAB_BASE, 0x4E17_9000, 8)
    await w(d.CR0, 0xD)
    assert await g.drv.read(d.CR0ACK) == 0xD


@pytest.mark.parametrize("s1_mode", ["nested", "shadow"])
@pytest.mark.parametrize(("config", "dw0", "leaf"), [
    ("ns-s1-only", 0x4E17_8FCB, LEAF_RW), ("ns-s2-only", 0x4E17_8FCD, LEAF_RO)])
async def test_qemu_qtest_translation(tmp_path: Path, nursery: trio.Nursery, s1_mode: str,
                                      config: str, dw0: int, leaf: int) -> None:
    async with smmu_guest(tmp_path, nursery, f"s1-mode={s1_mode}", probe=False) as g:
        ste = qwords(dw0, 0, 0x000D_0094_0000_0000, 0x4E4D_0000, 0, 0, 0, 0)
        await qtest_setup(g, ste, leaf)
        assert await g.dma_write(QTEST_SID, IOVA, struct.pack("<I", 0x1234_5678)) == b""
        assert g.ram.read_u32(PA) == 0x1234_5678
        assert await g.drv.read(d.EVTQ_PROD) == 0


@pytest.mark.parametrize("s1_mode", ["nested", "shadow"])
async def test_qemu_qtest_translation_nested(tmp_path: Path, nursery: trio.Nursery,
                                             s1_mode: str) -> None:
    """Config nested (dw0 ...FCF) with the qtest's CD and stage-1 tables; the stage 2 is an
    identity of our own (the qtest's nested stage-2 tables are not in the digest), so S2TTB
    is the one word that differs from the qtest's STE."""
    async with smmu_guest(tmp_path, nursery, f"s1-mode={s1_mode}", probe=False) as g:
        s2 = g.drv.s2_domain(tsz=20)
        assert s2.s2 is not None
        for gpa in range(0x4E00_0000, 0x4F00_0000, 2 << 20):
            s2.s2.map(gpa, gpa, 2 << 20, Perm.R | Perm.W)
        sl0 = 2 - s2.s2.start_level
        dw2 = (0x000D_0094_0000_0000 & ~(3 << 38)) | sl0 << 38
        ste = qwords(0x4E17_8FCF, 0, dw2, s2.s2.root, 0, 0, 0, 0)
        await qtest_setup(g, ste, LEAF_RW)
        assert await g.dma_write(QTEST_SID, IOVA, struct.pack("<I", 0xCAFE_F00D)) == b""
        assert g.ram.read_u32(PA) == 0xCAFE_F00D


# -- Linux kunit encodings (smmuv3.md §9.2) ------------------------------------------------

KUNIT_ABORT = qwords(0x1)
KUNIT_BYPASS = qwords(0x9, 0x0000_1000_0000_0000)
KUNIT_CDTAB = [qwords(0xF800_F0F0_F0F0_F0EB, dw1) for dw1 in
               (0x0800_00D4, 0x0000_1000_0800_00D5, 0x0800_00D6)]
KUNIT_S2 = qwords(0xD, 0x0000_1000_1000_0000, 0x0449_B6C4_0000_0000, 0x000D_BEEF_DEAD_BEE0)


def pad(raw: bytes, size: int = 64) -> bytes:
    return raw + bytes(size - len(raw))


async def probe_dma(g: SmmuGuest, sid: int, iova: int) -> tuple[object, ...]:
    got = await g.dma_read(sid, iova, 8)
    if isinstance(got, Fault):
        return ("fault", got.kind, got.code)
    return ("data", got)


async def test_kunit_stes(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with smmu_guest(tmp_path, nursery, "ssidsize=20") as g:
        drv = g.drv
        buf = g.ram.alloc(4096)
        g.ram.write(buf, b"identity")
        await drv.write_ste(1, pad(KUNIT_ABORT))
        assert await probe_dma(g, 1, buf) == ("fault", 7, 0)
        await drv.write_ste(2, pad(KUNIT_BYPASS))
        assert await probe_dma(g, 2, buf) == ("data", b"identity")
        for i, ste in enumerate(KUNIT_CDTAB):
            # S1STALLD = 1 (and S1CDMax 31 > SSIDSIZE 20) are ILLEGAL with this SMMU's
            # STALL_MODEL = 0b01: Linux sets S1STALLD only when stalls are configurable.
            await drv.write_ste(3 + i, pad(ste))
            assert await probe_dma(g, 3 + i, buf) == ("fault", 5, 0x04)
        # The S2 STE's VTCR fields (T0SZ 4, 16 KB granule with SL0 3) are not a usable
        # geometry: C_BAD_STE, not a crash.
        await drv.write_ste(6, pad(KUNIT_S2))
        assert await probe_dma(g, 6, buf) == ("fault", 5, 0x04)
        assert [e.type for e in await drv.events()] == [0x04] * 4


async def test_kunit_cds(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The kunit CD (T0SZ 4, 16 KB granule, IPS 36) is C_BAD_CD: T0SZ below 16 without
    52-bit VAs; its ASID-change transition is hitless with a usable geometry."""
    async with smmu_guest(tmp_path, nursery, "ssidsize=4") as g:
        drv = g.drv
        dom = drv.s1_domain()
        await drv.attach_s1(1, dom, ssid_bits=2)
        kunit = qwords(0x07CD_E201_C000_3684, 0x000D_BEEF_DEAD_BEE0, 0, 0x0ABC_DEF0_1234_5678)
        g.ram.write(drv.cd_address(1, 1), pad(kunit))
        await drv.submit(d.cmd_cfgi_cd(1, 1))
        got = await g.dma_read(1, 0x1000, 8, pasid=1)
        assert isinstance(got, Fault) and got.code == 0x0A
        # ASID 778 → 1997 in one CD write (dw0 only), as the kunit's hitless case.
        buf = g.ram.alloc(4096)
        g.ram.write(buf, b"asidtest")
        await dom.map(0x1000, buf)
        assert dom.s1 is not None
        cd = bytearray(d.cd_words(ttb0=dom.s1.root, asid=778))
        g.ram.write(drv.cd_address(1, 2), bytes(cd))
        await drv.submit(d.cmd_cfgi_cd(1, 2))
        assert await g.dma_read(1, 0x1000, 8, pasid=2) == b"asidtest"
        cd[6:8] = (1997).to_bytes(2, "little")  # ASID is dw0[63:48]
        g.ram.write(drv.cd_address(1, 2), bytes(cd[:8]))
        assert await g.dma_read(1, 0x1000, 8, pasid=2) == b"asidtest"  # cached, still valid
        await drv.submit(d.cmd_cfgi_cd(1, 2), d.cmd_tlbi_nh_asid(778))
        assert await g.dma_read(1, 0x1000, 8, pasid=2) == b"asidtest"


@pytest.mark.parametrize(("old", "new"), [
    ("bypass", "abort"), ("abort", "bypass"), ("s2", "abort"), ("abort", "s2"),
    ("s2", "bypass"), ("bypass", "s2")])
async def test_kunit_hitless_ste_transitions(tmp_path: Path, nursery: trio.Nursery,
                                             old: str, new: str) -> None:
    """§9.2: each step is written, then CMD_CFGI_STE + CMD_SYNC; a DMA between steps sees
    the old or the new configuration, never a half-written one.  Linux writes the qwords
    the new configuration alone uses first, then the critical qword 0, then clears the
    qwords only the old one used."""
    async with smmu_guest(tmp_path, nursery) as g:
        drv = g.drv
        buf = g.ram.alloc(2 << 20, 2 << 20)
        g.ram.write(buf, b"via-s2!!")
        dom = drv.s2_domain()
        assert dom.s2 is not None
        await dom.map(0x1_0000_0000, buf, 2 << 20)
        iova = {"bypass": buf, "abort": buf, "s2": 0x1_0000_0000}
        stes = {"abort": pad(KUNIT_ABORT), "bypass": pad(KUNIT_BYPASS),
                "s2": d.ste_words(config=d.STE_CFG_S2, s2=drv._s2_fields(dom),
                                  vmid=dom.vmid)}
        sid = 7
        await drv.write_ste(sid, stes[old])
        expect_old = await probe_dma(g, sid, iova[old])
        assert expect_old != ("fault", 5, 0x04)
        new_raw = stes[new]
        addr = drv.ste_address(sid)
        seen = []
        # 1: qwords 1..7 of the new STE (unused by the old configuration).
        current = bytearray(g.ram.read(addr, 64))
        for i in range(1, 8):
            if new_raw[8 * i:8 * i + 8] != b"\0" * 8:
                current[8 * i:8 * i + 8] = new_raw[8 * i:8 * i + 8]
        g.ram.write(addr, bytes(current))
        await drv.submit(d.cmd_cfgi_ste(sid))
        seen.append(await probe_dma(g, sid, iova[old]))
        # 2: the critical qword.
        g.ram.write(addr, new_raw[:8])
        await drv.submit(d.cmd_cfgi_ste(sid))
        seen.append(await probe_dma(g, sid, iova[new]))
        # 3: the rest of the new STE exactly (clearing what only the old one used).
        g.ram.write(addr, new_raw)
        await drv.submit(d.cmd_cfgi_ste(sid))
        expect_new = await probe_dma(g, sid, iova[new])
        assert seen == [expect_old, expect_new]
        assert await drv.events() == []
