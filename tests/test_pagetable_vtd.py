"""VT-d first stage (x86-64 paging) and second stage rules beyond the reference map:
canonical addresses, SRE/WPE/SMEP/NXE, reserved bits, A/D updates, present = R|W,
super-page support, AGAW (VT-d §3.6-3.7, chapter 9; vtd.md §3c, §3d)."""

from __future__ import annotations

import pytest

from devices.model import FaultKind, Perm
from devices.pagetable import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    Fault,
    Reason,
    Translation,
    VtdSecondStage,
    X86FirstStage,
    vtdss,
    x86,
)
from devices.pagetable.builders import TableAllocator, VtdSsBuilder, X86Builder
from vmm.memory import GuestMemory, anonymous_memory

RAM = 0x1000_0000
IOVA = 0x7F12_3440_0000  # 2 MiB aligned


def fault(r: Translation | Fault) -> Fault:
    assert isinstance(r, Fault), r
    return r


def ok(r: Translation | Fault) -> Translation:
    assert isinstance(r, Translation), r
    return r


def fs(levels: int = 4) -> tuple[GuestMemory, X86Builder]:
    mem = anonymous_memory([(RAM, 0x100_0000)])
    return mem, X86Builder(mem, TableAllocator(mem, RAM, 0x100_0000), levels)


def path(mem: GuestMemory, root: int, ia: int, levels: int) -> list[int]:
    """Entry addresses from the top level down to the leaf (4 KiB pages)."""
    out, table = [], root
    for h in range(levels - 1, -1, -1):
        gpa = table + ((ia >> (12 + 9 * h)) & 511) * 8
        out.append(gpa)
        pte = mem.read_u64(gpa)
        assert pte is not None
        table = pte & 0xF_FFFF_FFFF_F000
    return out


def test_canonical_and_upper_half() -> None:
    mem, b = fs()
    cfg = b.config()
    f = fault(cfg.walk(mem, 1 << 47, 0))
    assert (f.reason, f.level, f.pte_addr) == (Reason.NON_CANONICAL, None, None)
    # PML4[256] maps the upper canonical half (written by hand: the builder maps the lower).
    page = b.alloc.alloc(0x1000)
    mem.write_u64(b.root + 256 * 8, page | x86.P | x86.RW | x86.US)
    mem.write_u64(page, 0x4000_0000 | x86.P | x86.PS | x86.US)
    t = ok(cfg.walk(mem, 0xFFFF_8000_0000_1234, ACCESS_R))
    assert (t.oa, t.size, t.level) == (0x4000_1234, 1 << 30, 3)
    assert fault(X86FirstStage(b.root, 5).walk(mem, 1 << 56, 0)).reason == Reason.NON_CANONICAL


def test_supervisor_rules() -> None:
    mem, b = fs()
    b.map(IOVA, 0x8000_0000, 0x1000, Perm.R | Perm.X, user=True)
    assert fault(b.config(sre=False).walk(mem, IOVA, ACCESS_R | ACCESS_PRIV)).reason == \
        Reason.SUPERVISOR
    assert ok(b.config(sre=False).walk(mem, IOVA, ACCESS_R))
    assert ok(b.config().walk(mem, IOVA, ACCESS_W | ACCESS_PRIV))  # WPE=0
    f = fault(b.config(wpe=True).walk(mem, IOVA, ACCESS_W | ACCESS_PRIV))
    assert (f.kind, f.level) == (FaultKind.PERMISSION, 1)
    assert fault(b.config(smep=True).walk(mem, IOVA, ACCESS_X | ACCESS_PRIV)).kind == \
        FaultKind.PERMISSION
    assert ok(b.config(smep=True).walk(mem, IOVA, ACCESS_X))


def test_table_levels_restrict() -> None:
    mem, b = fs()
    b.map(IOVA, 0x8000_0000, 0x1000, Perm.R | Perm.W | Perm.X)
    pml4e = path(mem, b.root, IOVA, 4)[0]
    pte = mem.read_u64(pml4e)
    assert pte is not None
    mem.write_u64(pml4e, (pte & ~(x86.US | x86.RW)) | x86.XD)
    t = ok(b.config(wpe=True).walk(mem, IOVA, 0))
    assert (t.priv_perm, t.user_perm) == (ACCESS_R, 0)


def test_reserved_bits() -> None:
    mem, b = fs()
    b.map(IOVA, 0x4000_0000, 0x20_0000)
    pml4e = b.root + ((IOVA >> 39) & 511) * 8
    for gpa, bit, level in ((pml4e, x86.PS, 4), (pml4e, 1 << 50, 4)):
        pte = mem.read_u64(gpa)
        assert pte is not None
        mem.write_u64(gpa, pte | bit)
        f = fault(b.config().walk(mem, IOVA, 0))
        assert (f.kind, f.reason, f.level) == (FaultKind.TRANSLATION, Reason.RESERVED, level)
        mem.write_u64(gpa, pte)
    leaf = b.leaf_gpa(IOVA)
    assert leaf is not None
    pte = mem.read_u64(leaf)
    assert pte is not None
    mem.write_u64(leaf, pte | 1 << 13)  # below a 2 MiB page's address
    assert fault(b.config().walk(mem, IOVA, 0)).reason == Reason.RESERVED
    mem.write_u64(leaf, pte | x86.PAT_LARGE)
    assert ok(b.config().walk(mem, IOVA, 0))
    mem.write_u64(leaf, pte)
    assert fault(b.config(nxe=False).walk(mem, IOVA, 0)).reason == Reason.RESERVED  # XD set
    mem.write_u64(leaf, pte | 1 << 35)  # an output address bit above a 32-bit HAW
    assert ok(b.config(haw=48).walk(mem, IOVA, 0)).oa == 0x8_4000_0000
    assert fault(b.config(haw=32).walk(mem, IOVA, 0)).reason == Reason.RESERVED
    mem.write_u64(leaf, pte)
    b.map(0x4000_0000, 0x4000_0000, 1 << 30)
    assert fault(b.config(page_1g=False).walk(mem, 0x4000_0000, 0)).reason == Reason.RESERVED


def test_accessed_dirty() -> None:
    mem, b = fs(5)
    b.map(IOVA, 0x8000_0000, 0x1000)
    entries = path(mem, b.root, IOVA, 5)
    before = [mem.read_u64(gpa) for gpa in entries]
    ok(b.config().walk(mem, IOVA, 0))
    assert [mem.read_u64(gpa) for gpa in entries] == before
    ok(b.config().walk(mem, IOVA, ACCESS_R))
    after = [mem.read_u64(gpa) or 0 for gpa in entries]
    assert all(pte & x86.A for pte in after) and not after[-1] & x86.D
    t = ok(b.config().walk(mem, IOVA, ACCESS_W))
    assert (mem.read_u64(entries[-1]) or 0) & x86.D and t.level == 1
    ok(b.config(ad=False).walk(mem, IOVA, ACCESS_W))


def ss(levels: int = 4, **kw: bool) -> tuple[GuestMemory, VtdSsBuilder]:
    mem = anonymous_memory([(RAM, 0x100_0000)])
    return mem, VtdSsBuilder(mem, TableAllocator(mem, RAM, 0x100_0000), levels, **kw)


@pytest.mark.parametrize("levels", [3, 4, 5])
def test_second_stage_input_range(levels: int) -> None:
    mem, b = ss(levels)
    top = (1 << vtdss.agaw_bits(levels)) - 0x1000
    b.map(top, 0x1000, 0x1000)
    assert ok(b.config().walk(mem, top, ACCESS_R)).oa == 0x1000
    f = fault(b.config().walk(mem, top + 0x1000, ACCESS_R))
    assert (f.kind, f.reason, f.stage) == (FaultKind.TRANSLATION, Reason.INPUT_RANGE, 2)
    assert fault(VtdSecondStage(b.root, levels, input_bits=32).walk(mem, 1 << 32, 0)).reason \
        == Reason.INPUT_RANGE


def test_second_stage_entries() -> None:
    mem, b = ss(ssee=True)
    b.map(IOVA, 0x4000_0000, 0x20_0000, Perm.R | Perm.W | Perm.X)
    cfg = b.config()
    t = ok(cfg.walk(mem, IOVA + 0x1234, ACCESS_X))
    assert (t.oa, t.size, t.level) == (0x4000_1234, 0x20_0000, 2)
    top = b.root + ((IOVA >> 39) & 511) * 8
    pte = mem.read_u64(top)
    assert pte is not None
    mem.write_u64(top, pte & ~vtdss.W)  # read-only above: writes refused
    assert fault(cfg.walk(mem, IOVA, ACCESS_W)).kind == FaultKind.PERMISSION
    mem.write_u64(top, (pte & ~(vtdss.R | vtdss.W)))  # X alone is not present
    f = fault(cfg.walk(mem, IOVA, ACCESS_R))
    assert (f.reason, f.level, f.pte_addr) == (Reason.NOT_PRESENT, 4, top)
    mem.write_u64(top, pte | vtdss.PS)
    assert fault(cfg.walk(mem, IOVA, ACCESS_R)).reason == Reason.RESERVED
    mem.write_u64(top, pte)
    assert fault(b.config(sp_2m=False).walk(mem, IOVA, 0)).reason == Reason.RESERVED
    leaf = b.leaf_gpa(IOVA)
    assert leaf is not None
    lpte = mem.read_u64(leaf)
    assert lpte is not None
    mem.write_u64(leaf, lpte | vtdss.SNP)
    assert ok(cfg.walk(mem, IOVA, 0))
    assert fault(b.config(snp=False).walk(mem, IOVA, 0)).reason == Reason.RESERVED
    mem.write_u64(leaf, lpte)
    assert not ok(b.config().walk(mem, IOVA, 0)).attrs
    ok(b.config(ad=True).walk(mem, IOVA, ACCESS_W))
    assert (mem.read_u64(leaf) or 0) & (vtdss.A | vtdss.D) == vtdss.A | vtdss.D
    assert (mem.read_u64(top) or 0) & vtdss.A


def test_second_stage_execute_without_ssee() -> None:
    mem, b = ss()
    b.map(IOVA, 0x4000_0000, 0x1000, Perm.W)
    assert fault(b.config().walk(mem, IOVA, ACCESS_X)).kind == FaultKind.PERMISSION
    assert fault(b.config().walk(mem, IOVA, ACCESS_R)).kind == FaultKind.PERMISSION
    assert ok(b.config().walk(mem, IOVA, ACCESS_W))
