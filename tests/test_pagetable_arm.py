"""Arm VMSAv8-64 rules beyond what the reference map checks: hierarchical attributes,
Access flag and dirty state, TBI and TTB selection, address sizes, descriptor types,
stage-2 controls and configuration decode (Arm ARM D8; smmuv3.md §6)."""

from __future__ import annotations

import pytest

from devices.model import FaultKind, Perm
from devices.pagetable import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    ArmS1Config,
    ArmS1Table,
    ArmS2Config,
    Attr,
    BadConfig,
    Fault,
    Reason,
    Translation,
    arm,
)
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder, TableAllocator
from vmm.memory import GuestMemory, anonymous_memory

RAM = 0x1000_0000
IOVA = 0x12_3456_7000


def s1(granule: int = 4096, tsz: int = 16) -> tuple[GuestMemory, ArmS1Builder]:
    mem = anonymous_memory([(RAM, 0x100_0000)])
    return mem, ArmS1Builder(mem, TableAllocator(mem, RAM, 0x100_0000), granule, tsz)


def fault(r: Translation | Fault) -> Fault:
    assert isinstance(r, Fault), r
    return r


def ok(r: Translation | Fault) -> Translation:
    assert isinstance(r, Translation), r
    return r


def table_entries(mem: GuestMemory, b: ArmS1Builder, ia: int) -> list[int]:
    """Addresses of the table descriptors on the path to ``ia`` (top first)."""
    out, table, h = [], b.root, b.top
    while h > 0:
        gpa = b.entry_gpa(table, ia, h)
        pte = mem.read_u64(gpa)
        assert pte is not None and pte & 3 == 3
        out.append(gpa)
        table, h = b.table_addr(pte), h - 1
    return out


@pytest.mark.parametrize("had", [False, True])
def test_aptable_and_xntable(had: bool) -> None:
    mem, b = s1()
    b.map(IOVA, 0x8000_0000, 0x1000, Perm.R | Perm.W | Perm.X, user=True)
    cfg = ArmS1Config(b.table(had=had))
    t = ok(cfg.walk(mem, IOVA, 0))
    # Writable at EL0, so never executable at EL1.
    assert (t.priv_perm, t.user_perm) == (ACCESS_R | ACCESS_W, ACCESS_R | ACCESS_W | ACCESS_X)
    top = table_entries(mem, b, IOVA)[0]
    pte = mem.read_u64(top)
    assert pte is not None
    mem.write_u64(top, pte | arm.AP_TABLE_RO | arm.AP_TABLE_NO_EL0 | arm.UXN_TABLE)
    t = ok(cfg.walk(mem, IOVA, 0))
    if had:
        assert t.user_perm == ACCESS_R | ACCESS_W | ACCESS_X
    else:
        # No writes anywhere, no EL0 access, no EL0 execute; EL1 may now execute.
        assert (t.priv_perm, t.user_perm) == (ACCESS_R | ACCESS_X, 0)
        f = fault(cfg.walk(mem, IOVA, ACCESS_W | ACCESS_PRIV))
        assert (f.kind, f.level, f.pte_addr) == (FaultKind.PERMISSION, 3, b.leaf_gpa(IOVA))
    mem.write_u64(top, pte | arm.PXN_TABLE)
    t = ok(cfg.walk(mem, IOVA, 0))
    assert not t.priv_perm & ACCESS_X or had


def test_access_flag_and_hardware_update() -> None:
    mem, b = s1()
    b.map(IOVA, 0x8000_0000, 0x1000)
    leaf = b.leaf_gpa(IOVA)
    assert leaf is not None
    pte = mem.read_u64(leaf)
    assert pte is not None
    mem.write_u64(leaf, pte & ~arm.AF)
    f = fault(ArmS1Config(b.table()).walk(mem, IOVA, ACCESS_R))
    assert (f.kind, f.reason, f.level, f.pte_addr) == (FaultKind.ACCESS_FLAG,
                                                        Reason.ACCESS_FLAG, 3, leaf)
    # Access flag fault comes before permission (Arm ARM prioritisation).
    mem.write_u64(leaf, (pte & ~arm.AF) | arm.AP_2)
    assert fault(ArmS1Config(b.table()).walk(mem, IOVA, ACCESS_W)).kind == FaultKind.ACCESS_FLAG
    mem.write_u64(leaf, pte & ~arm.AF)
    ha = ArmS1Config(b.table(ha=True))
    t = ok(ha.walk(mem, IOVA, 0))  # a lookup does not update
    assert not t.attrs & Attr.ACCESSED and mem.read_u64(leaf) == pte & ~arm.AF
    t = ok(ha.walk(mem, IOVA, ACCESS_R))
    assert t.attrs & Attr.ACCESSED and mem.read_u64(leaf) == pte


def test_dirty_state() -> None:
    mem, b = s1()
    b.map(IOVA, 0x8000_0000, 0x1000, Perm.R, extra=arm.DBM)
    leaf = b.leaf_gpa(IOVA)
    assert leaf is not None
    before = mem.read_u64(leaf)
    assert before is not None
    assert fault(ArmS1Config(b.table()).walk(mem, IOVA, ACCESS_W)).kind == FaultKind.PERMISSION
    hd = ArmS1Config(b.table(hd=True))
    t = ok(hd.walk(mem, IOVA, ACCESS_R))
    assert t.user_perm & ACCESS_W and not t.attrs & Attr.DIRTY
    t = ok(hd.walk(mem, IOVA, ACCESS_W))
    assert t.attrs & Attr.DIRTY and mem.read_u64(leaf) == before & ~arm.AP_2


def test_ttb_selection_tbi_and_epd() -> None:
    mem, b0 = s1(tsz=25)
    alloc = TableAllocator(mem, RAM + 0x80_0000, 0x10_0000)
    b1 = ArmS1Builder(mem, alloc, 4096, 25, upper=True)
    b0.map(0x1000, 0xA000, 0x1000)
    b1.map(0xFFFF_FFFF_FFFF_F000, 0xB000, 0x1000)
    cfg = ArmS1Config(b0.table(), b1.table())
    assert ok(cfg.walk(mem, 0x1234, 0)).oa == 0xA234
    assert ok(cfg.walk(mem, 0xFFFF_FFFF_FFFF_F234, 0)).oa == 0xB234
    for ia in (1 << 39, 0x8000_0000_0000_0000, 0xFFFF_FF7F_FFFF_F000, 0x0100_0000_0000_1000):
        assert fault(cfg.walk(mem, ia, 0)).reason == Reason.INPUT_RANGE
    tagged = ArmS1Config(b0.table(), b1.table(), tbi0=True, tbi1=True)
    assert ok(tagged.walk(mem, 0x5A00_0000_0000_1234, 0)).oa == 0xA234
    # Bit 55 chooses the half even under a tag.
    assert ok(tagged.walk(mem, 0x5AFF_FFFF_FFFF_F234, 0)).oa == 0xB234
    assert ok(ArmS1Config(b0.table(), tbi0=True).walk(mem, 0xFF00_0000_0000_1000, 0))
    off = ArmS1Config(b0.table(), None)
    assert fault(off.walk(mem, 0xFFFF_FFFF_FFFF_F234, 0)).reason == Reason.TTB_DISABLED


def test_address_size_checks() -> None:
    mem, b = s1()
    b.map(IOVA, 0x100_0000_0000, 0x1000)  # a 41-bit output address
    assert ok(ArmS1Config(b.table(oas=44)).walk(mem, IOVA, 0)).oa == 0x100_0000_0000
    f = fault(ArmS1Config(b.table(oas=40)).walk(mem, IOVA, 0))
    assert (f.kind, f.reason, f.level) == (FaultKind.ADDRESS_SIZE, Reason.OUTPUT_SIZE, 3)
    # A table address beyond the output size; and the TTB itself.
    top = table_entries(mem, b, IOVA)[0]
    pte = mem.read_u64(top)
    assert pte is not None
    mem.write_u64(top, pte | 1 << 40)
    f = fault(ArmS1Config(b.table(oas=40)).walk(mem, IOVA, 0))
    assert (f.kind, f.level, f.pte_addr) == (FaultKind.ADDRESS_SIZE, 0, top)
    high_root = ArmS1Config(ArmS1Table(1 << 36, 4096, 16, 32))
    assert fault(high_root.walk(mem, IOVA, 0)).kind == FaultKind.ADDRESS_SIZE


@pytest.mark.parametrize(("granule", "level", "legal"), [
    (4096, 0, False), (4096, 1, True), (4096, 2, True),
    (16384, 1, False), (16384, 2, True), (65536, 1, False), (65536, 2, True),
])
def test_block_levels(granule: int, level: int, legal: bool) -> None:
    mem, b = s1(granule, 16)
    cfg = ArmS1Config(b.table())
    b.map(0, 0, granule)  # build the path, then rewrite the entry at ``level``
    gpa = table_entries(mem, b, 0)[level - (3 - b.top)]
    mem.write_u64(gpa, arm.DESC_TYPE_BLOCK | arm.AF | arm.AP_1)
    r = cfg.walk(mem, 0x42, 0)
    if legal:
        assert ok(r).size == 1 << arm.level_shift(granule, level)
    else:
        f = fault(r)
        assert (f.kind, f.reason, f.level, f.pte_addr) == (
            FaultKind.TRANSLATION, Reason.BAD_TYPE, level, gpa)


def test_reserved_page_type_and_invalid() -> None:
    mem, b = s1()
    b.map(IOVA, 0x8000_0000, 0x1000)
    leaf = b.leaf_gpa(IOVA)
    assert leaf is not None
    pte = mem.read_u64(leaf)
    assert pte is not None
    cfg = ArmS1Config(b.table())
    mem.write_u64(leaf, pte & ~2)  # 0b01 at level 3 is reserved
    assert fault(cfg.walk(mem, IOVA, 0)).reason == Reason.BAD_TYPE
    mem.write_u64(leaf, pte & ~1)
    f = fault(cfg.walk(mem, IOVA, 0))
    assert (f.kind, f.reason, f.level) == (FaultKind.TRANSLATION, Reason.NOT_PRESENT, 3)


def test_walk_abort_outside_ram() -> None:
    mem, _ = s1()
    f = fault(ArmS1Config(ArmS1Table(0x9000_0000)).walk(mem, IOVA, 0))
    assert (f.kind, f.reason, f.level, f.pte_addr) == (
        FaultKind.EXTERNAL_ABORT, Reason.WALK_ABORT, 0, 0x9000_0000 + 8 * (IOVA >> 39))


def s2() -> tuple[GuestMemory, ArmS2Builder]:
    mem = anonymous_memory([(RAM, 0x100_0000)])
    return mem, ArmS2Builder(mem, TableAllocator(mem, RAM, 0x100_0000), 4096, 24)


def test_stage2_controls() -> None:
    mem, b = s2()
    b.map(0x4000_0000, 0x8000_0000, 0x20_0000, Perm.R | Perm.W | Perm.X)
    assert b.start_level == 1 and b.top_bits == 10  # two concatenated level-1 tables
    cfg = b.config()
    t = ok(cfg.walk(mem, 0x4000_1234, ACCESS_X))
    assert (t.oa, t.size, t.level) == (0x8000_1234, 0x20_0000, 2)
    f = fault(cfg.walk(mem, 1 << 40, 0))
    assert (f.kind, f.reason, f.stage) == (FaultKind.TRANSLATION, Reason.INPUT_RANGE, 2)
    leaf = b.leaf_gpa(0x4000_0000)
    assert leaf is not None
    pte = mem.read_u64(leaf)
    assert pte is not None
    mem.write_u64(leaf, pte & ~arm.AF)
    assert fault(cfg.walk(mem, 0x4000_0000, ACCESS_R)).kind == FaultKind.ACCESS_FLAG
    assert ok(b.config(affd=True).walk(mem, 0x4000_0000, ACCESS_R))
    # FEAT_XNX: XN[1:0] = 01 forbids EL1 execution only.
    mem.write_u64(leaf, pte | 1 << arm.S2XN_SHIFT)
    t = ok(b.config(xnx=True).walk(mem, 0x4000_0000, 0))
    assert (t.priv_perm & ACCESS_X, t.user_perm & ACCESS_X) == (0, ACCESS_X)
    assert ok(cfg.walk(mem, 0x4000_0000, 0)).priv_perm & ACCESS_X


def test_config_decode() -> None:
    assert isinstance(ArmS1Table.decode(0, tg=2, tsz=16, ips=5, upper=True), ArmS1Table)
    assert ArmS1Table.decode(0, tg=0, tsz=16, ips=5, upper=True) == BadConfig("TG1 0 reserved")
    assert isinstance(ArmS1Table.decode(0, tg=0, tsz=12, ips=5), BadConfig)
    assert isinstance(ArmS1Table.decode(0, tg=0, tsz=16, ips=7), BadConfig)
    assert isinstance(ArmS2Config.decode(0, 24, 1, 0, 5), ArmS2Config)
    assert isinstance(ArmS2Config.decode(0, 24, 3, 0, 5), BadConfig)  # SL0 reserved
    assert isinstance(ArmS2Config.decode(0, 16, 0, 0, 5), BadConfig)  # > 16 tables
    assert isinstance(ArmS2Config.decode(0, 25, 2, 0, 2), BadConfig)  # L0 start, PA ≤ 42
    assert arm.s1_start_level(4096, 48) == 0 and arm.s1_start_level(4096, 39) == 1
    assert arm.s1_start_level(16384, 48) == 0 and arm.s1_start_level(16384, 47) == 1
    assert arm.s1_start_level(65536, 48) == 1 and arm.s1_start_level(65536, 42) == 2
