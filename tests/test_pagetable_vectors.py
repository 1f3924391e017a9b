"""Known vectors: the QEMU qtest iommu-smmuv3-test tables (smmuv3.md §9.1) walked by the
stage-1, stage-2 and nested walkers, and the shape of nested faults."""

from __future__ import annotations

from devices.model import FaultKind, Perm
from devices.pagetable import (
    ACCESS_R,
    ACCESS_W,
    ArmS1Config,
    ArmS1Table,
    ArmS2Config,
    Fault,
    Nested,
    Reason,
    Translation,
)
from devices.pagetable.arm import ArmS1Table as _S1
from devices.pagetable.builders import ArmS2Builder, TableAllocator
from vmm.memory import GuestMemory, anonymous_memory

RAM = 0x4000_0000
IOVA = 0x80_8060_4567
EXPECTED = 0x4ECB_A567
TTB = 0x4E4D_0000
NON_LEAF = 0x8000_0000_0000_0003  # NSTable | table | valid
LEAF_RW = 0x0400_0000_0000_0763   # page, AP=01 (S1 RW), S2AP=01 (S2 read-only), AF
LEAF_RO = 0x0400_0000_0000_07E3   # page, AP=11 (S1 RO), S2AP=11 (S2 RW), AF


def qtest_memory(leaf: int) -> GuestMemory:
    mem = anonymous_memory([(RAM, 0x1000_0000)])
    # Pre-offset addresses of the test plus the 0x4000_0000 RAM base.
    tables = [0x0E4D_0000 + RAM, 0x0E4D_1000 + RAM, 0x0E4D_2000 + RAM, 0x0E4D_3000 + RAM]
    for level, index in enumerate((1, 2, 3, 4)):
        if level < 3:
            value = (tables[level + 1]) | NON_LEAF
        else:
            value = (0x0ECB_A000 + RAM) | leaf
        assert mem.write_u64(tables[level] + 8 * index, value)
    return mem


def test_stage1_only() -> None:
    # CD: T0SZ=16, TG0=4K, IPS=4 (44 bits), EPD1=1.
    s1 = ArmS1Table.decode(TTB, tg=0, tsz=16, ips=4)
    assert isinstance(s1, _S1)
    cfg = ArmS1Config(s1, None)
    mem = qtest_memory(LEAF_RW)
    t = cfg.walk(mem, IOVA, ACCESS_W)
    assert isinstance(t, Translation)
    assert (t.oa, t.size, t.level) == (EXPECTED, 0x1000, 3)
    assert t.pte_addr == 0x4E4D_3020
    # EPD1: the upper half is disabled.
    f = cfg.walk(mem, 0xFFFF_0000_0000_0000, ACCESS_R)
    assert isinstance(f, Fault) and f.reason == Reason.TTB_DISABLED


def test_stage2_only() -> None:
    # STE: S2T0SZ=0x14, S2SL0=2, S2TG=0, S2PS=5.
    s2 = ArmS2Config.decode(TTB, s2t0sz=0x14, s2sl0=2, s2tg=0, s2ps=5)
    assert isinstance(s2, ArmS2Config)
    t = s2.walk(qtest_memory(LEAF_RO), IOVA, ACCESS_W)
    assert isinstance(t, Translation) and t.oa == EXPECTED
    # The "RW" leaf is read-only at stage 2 (S2AP=01).
    mem = qtest_memory(LEAF_RW)
    f = s2.walk(mem, IOVA, ACCESS_W)
    assert isinstance(f, Fault)
    assert (f.kind, f.stage, f.level, f.pte_addr) == (FaultKind.PERMISSION, 2, 3, 0x4E4D_3020)
    assert isinstance(s2.walk(mem, IOVA, ACCESS_R), Translation)


def nested_setup() -> tuple[GuestMemory, Nested, ArmS2Builder]:
    mem = qtest_memory(LEAF_RW)
    alloc = TableAllocator(mem, 0x4800_0000, 0x10_0000)
    s2b = ArmS2Builder(mem, alloc, 4096, tsz=0x14, start_level=0)
    # Stage 2 maps the stage-1 tables and the output page, identity, read-write.
    for page in (0x4E4D_0000, 0x4E4D_1000, 0x4E4D_2000, 0x4E4D_3000, 0x4ECB_A000):
        s2b.map(page, page, 0x1000)
    s1 = ArmS1Table.decode(TTB, tg=0, tsz=16, ips=4)
    assert isinstance(s1, _S1)
    return mem, Nested(ArmS1Config(s1, None), s2b.config(48)), s2b


def test_nested() -> None:
    mem, nested, _ = nested_setup()
    t = nested.walk(mem, IOVA, ACCESS_W)
    assert isinstance(t, Translation)
    assert (t.oa, t.size, t.level) == (EXPECTED, 0x1000, 3)


def test_nested_stage2_fault_on_table_walk() -> None:
    mem, nested, s2b = nested_setup()
    assert s2b.unmap(0x4E4D_2000, 0x1000) == 0x1000  # the stage-1 level-2 table
    f = nested.walk(mem, IOVA, ACCESS_R)
    assert isinstance(f, Fault)
    assert (f.kind, f.stage, f.s1ptw, f.ipa) == (FaultKind.TRANSLATION, 2, True, 0x4E4D_2018)
    assert f.level == 3  # the stage-2 level that decided it


def test_nested_stage2_fault_on_output() -> None:
    mem, nested, s2b = nested_setup()
    s2b.unmap(0x4ECB_A000, 0x1000)
    s2b.map(0x4ECB_A000, 0x4ECB_A000, 0x1000, perm=Perm.R)
    f = nested.walk(mem, IOVA, ACCESS_W)
    assert isinstance(f, Fault)
    assert (f.kind, f.stage, f.s1ptw, f.ipa) == (FaultKind.PERMISSION, 2, False, EXPECTED)
    t = nested.walk(mem, IOVA, ACCESS_R)
    assert isinstance(t, Translation) and t.oa == EXPECTED


def test_nested_stage1_fault_keeps_stage1() -> None:
    mem, nested, _ = nested_setup()
    mem.write_u64(0x4E4D_3020, 0)
    f = nested.walk(mem, IOVA, ACCESS_R)
    assert isinstance(f, Fault)
    assert (f.kind, f.stage, f.s1ptw, f.level, f.pte_addr) == \
        (FaultKind.TRANSLATION, 1, False, 3, 0x4E4D_3020)


def test_nested_vtd_first_stage_through_second_stage() -> None:
    """VT-d nested (PGTT = 011): x86 first-stage tables in IPA space, VT-d second stage."""
    from devices.pagetable import ACCESS_PRIV, VtdSecondStage, X86FirstStage
    from devices.pagetable.builders import VtdSsBuilder, X86Builder

    mem = anonymous_memory([(0x1000_0000, 0x80_0000)])
    fs = X86Builder(mem, TableAllocator(mem, 0x1000_0000, 0x40_0000))
    ss = VtdSsBuilder(mem, TableAllocator(mem, 0x1040_0000, 0x40_0000))
    ss.map(0x1000_0000, 0x1000_0000, 0x20_0000)  # first-stage tables, identity
    ss.map(0x5000_0000, 0x9000_0000, 0x20_0000)  # the IPA the device targets
    fs.map(0x7000_1000, 0x5000_3000, 0x1000)
    nested = Nested(fs.config(), ss.config())
    t = nested.walk(mem, 0x7000_1234, ACCESS_W | ACCESS_PRIV)
    assert isinstance(t, Translation)
    assert (t.oa, t.size, t.level) == (0x9000_3234, 0x1000, 1)
    # A first-stage table outside the second stage's mappings: stage 2, on the walk.
    nested = Nested(X86FirstStage(0x2000_0000), VtdSecondStage(ss.root))
    f = nested.walk(mem, 0x7000_1234, ACCESS_R)
    assert isinstance(f, Fault)
    assert (f.stage, f.s1ptw, f.ipa, f.level) == (2, True, 0x2000_0000, 2)
