"""Translation through the host (IHI 0070 §3.3-§3.4, §5.5, §7.3.12-7.3.16): stage 1, stage
2 and nested walks in both s1-modes, every walk fault as its event with S2/CLASS/IPA,
recording gated by CD.R and STE.S2R, TLB invalidation commands becoming host
invalidations, ATC invalidation, and the QEMU qtest vector (smmuv3.md §9.1)."""

from __future__ import annotations

from typing import Any

import pytest

from devices.model import DmaFault, DmaTarget, FaultKind, Perm
from devices.pagetable.arm import AF, NG
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder
from devices.smmuv3 import commands as c
from devices.smmuv3 import regs as r
from devices.smmuv3.commands import Op
from devices.smmuv3.events import CLASS_IN, CLASS_TT, EventType
from devices.smmuv3.ste import Config
from devices.smmuv3.testing import RAM_BASE, SmmuRig, cd_fields, make_rig, s2_fields

PAGE = 4096
MODES = ("nested", "shadow")
RW = Perm.R | Perm.W


def page(rig: SmmuRig, n: int) -> int:
    return rig.data + n * PAGE


def target(got: DmaTarget | DmaFault) -> DmaTarget:
    assert isinstance(got, DmaTarget), got
    return got


def fault(got: DmaTarget | DmaFault) -> DmaFault:
    assert isinstance(got, DmaFault), got
    return got


class Stream:
    """One stream with stage-1 tables (and optionally stage 2) the test can change."""

    def __init__(self, rig: SmmuRig, sid: int = 1, *, stage2: bool = False,
                 s2_identity: bool = True, cd: dict[str, Any] | None = None,
                 s1_granule: int = 4096, s2: dict[str, int] | None = None,
                 s1: bool = True) -> None:
        self.rig = rig
        self.sid = sid
        self.s1 = ArmS1Builder(rig.mem, rig.alloc, granule=s1_granule)
        self.s2 = ArmS2Builder(rig.mem, rig.alloc, tsz=20) if stage2 else None
        self.cd_addr = rig.cd_table(0)
        if self.s2 is not None and s2_identity:
            # Identity-map everything the tests use: table memory and data.
            for gpa in range(RAM_BASE, RAM_BASE + (8 << 20), 2 << 20):
                self.s2.map(gpa, gpa, 2 << 20, RW)
        fields = {**cd_fields(self.s1, ASID=sid), **(cd or {})}
        rig.cd(self.cd_addr, **fields)
        config = {(True, False): Config.S1, (True, True): Config.NESTED,
                  (False, True): Config.S2}[(s1, stage2)]
        ste: dict[str, Any] = {"Config": config, "S1ContextPtr": self.cd_addr >> 6}
        if self.s2 is not None:
            ste.update(s2_fields(self.s2, S2VMID=7, **(s2 or {})))
        rig.ste(sid, **ste)

    def dma(self, iova: int, **kw: Any) -> DmaTarget | DmaFault:
        return self.rig.dma(self.sid, iova, **kw)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def rig_for(mode: str, **options: Any) -> SmmuRig:
    rig, _ = make_rig({"s1-mode": mode, **options})
    return rig


# -- stage 1 --------------------------------------------------------------------------------

@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_stage1_granules_and_blocks(mode: str, granule: int) -> None:
    rig = rig_for(mode)
    st = Stream(rig, s1_granule=granule)
    st.s1.map(0x40_0000, page(rig, 0) & ~(granule - 1), granule, RW)
    t = target(st.dma(0x40_0000 + 0x10))
    assert (t.gpa, t.size) == ((page(rig, 0) & ~(granule - 1)) + 0x10, granule)
    block = st.s1.page_sizes[1]
    base = RAM_BASE & ~(block - 1)
    st.s1.map(block * 4, base, block, Perm.R)
    t = target(st.dma(block * 4 + 0x2345))
    # A block larger than the RAM around it is reported as the largest block of RAM that
    # holds it (both modes: the host translates one RAM region as one piece).
    assert (t.gpa, t.size, t.perms) == (base + 0x2345, min(block, 8 << 20), Perm.R)


def test_permissions_and_privilege(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig)
    st.s1.map(0x1000, page(rig, 1), PAGE, Perm.R, user=False)  # EL1 read-only
    assert target(st.dma(0x1000, privileged=True)).perms == Perm.R
    f = fault(st.dma(0x1000))  # unprivileged: no access
    assert (f.kind, f.code, f.stage) == (FaultKind.PERMISSION, EventType.F_PERMISSION, 1)
    f = fault(st.dma(0x1000, write=True, privileged=True))
    assert f.code == EventType.F_PERMISSION
    (e1, e2) = rig.events()
    assert (e1["PnU"], e1["RnW"], e1["S2"], e1["CLASS"]) == (0, 1, 0, CLASS_IN)
    assert (e2["PnU"], e2["RnW"]) == (1, 0)


def test_execute_needs_the_execute_permission(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig)
    st.s1.map(0x1000, page(rig, 1), PAGE, RW)            # XN
    st.s1.map(0x2000, page(rig, 2), PAGE, Perm.R | Perm.X)
    f = fault(st.dma(0x1000, execute=True, privileged=True))
    assert f.code == EventType.F_PERMISSION
    assert rig.events()[0]["InD"] == 1
    assert isinstance(st.dma(0x2000, execute=True, privileged=True), DmaTarget)


def test_pan_and_wxn(mode: str) -> None:
    rig = rig_for(mode)
    pan = Stream(rig, 1, cd={"PAN": 1})
    pan.s1.map(0x1000, page(rig, 1), PAGE, RW, user=True)
    assert fault(pan.dma(0x1000, privileged=True)).code == EventType.F_PERMISSION
    assert isinstance(pan.dma(0x1000), DmaTarget)
    wxn = Stream(rig, 2, cd={"WXN": 1})
    wxn.s1.map(0x1000, page(rig, 1), PAGE, RW | Perm.X, user=False)
    assert fault(wxn.dma(0x1000, execute=True, privileged=True)).code == \
        EventType.F_PERMISSION
    assert isinstance(wxn.dma(0x1000, write=True, privileged=True), DmaTarget)


def test_access_flag_and_affd(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, 1)
    st.s1.map(0x1000, page(rig, 1), PAGE, RW)
    leaf = st.s1.leaf_gpa(0x1000)
    assert leaf is not None
    rig.mem.write_u64(leaf, (rig.mem.read_u64(leaf) or 0) & ~AF)
    f = fault(st.dma(0x1000))
    assert (f.kind, f.code) == (FaultKind.ACCESS_FLAG, EventType.F_ACCESS)
    affd = Stream(rig, 2, cd={"AFFD": 1})
    affd.s1.map(0x1000, page(rig, 1), PAGE, RW)
    leaf = affd.s1.leaf_gpa(0x1000)
    assert leaf is not None
    rig.mem.write_u64(leaf, (rig.mem.read_u64(leaf) or 0) & ~AF)
    assert isinstance(affd.dma(0x1000), DmaTarget)


def test_output_size_before_access_flag_not_qemu_order(mode: str) -> None:
    """smmuv3.md §6/§10: QEMU checks AF, then permission, then output size; the Arm ARM
    puts the address-size check on the walk, before the Access flag."""
    rig = rig_for(mode)
    st = Stream(rig, cd={"IPS": 0})  # 32-bit IPS
    st.s1.map(0x1000, 1 << 33, PAGE, RW)
    leaf = st.s1.leaf_gpa(0x1000)
    assert leaf is not None
    rig.mem.write_u64(leaf, (rig.mem.read_u64(leaf) or 0) & ~AF)
    f = fault(st.dma(0x1000))
    assert (f.kind, f.code) == (FaultKind.ADDRESS_SIZE, EventType.F_ADDR_SIZE)


def test_block_at_4k_level0_is_a_translation_fault_not_qemu_block(mode: str) -> None:
    """smmuv3.md §8 item 12: QEMU accepts a block descriptor at 4 KB level 0."""
    rig = rig_for(mode)
    st = Stream(rig)
    rig.mem.write_u64(st.s1.root + 8 * 1, (1 << 39) | 0x1 | AF)  # a "512 GiB block"
    f = fault(st.dma((1 << 39) + 0x1000))
    assert (f.kind, f.code) == (FaultKind.TRANSLATION, EventType.F_TRANSLATION)


def test_tbi1_follows_cd_tbi1_not_qemu_tbi0(mode: str) -> None:
    """smmuv3.md §8 item 3: QEMU's TBI1() macro reads TBI0's bit."""
    rig = rig_for(mode)
    top = ArmS1Builder(rig.mem, rig.alloc, upper=True)
    top.map((1 << 64) - 0x10000, page(rig, 3), PAGE, RW)
    s1 = ArmS1Builder(rig.mem, rig.alloc)
    table = rig.cd_table(0)
    rig.cd(table, **cd_fields(s1, upper=top, TBI0=0, TBI1=1))
    rig.ste(1, Config=Config.S1, S1ContextPtr=table >> 6)
    tagged = (0xAB << 56) | ((1 << 56) - 0x10000)
    assert target(rig.dma(1, tagged + 0x20)).gpa == page(rig, 3) + 0x20


def test_unmapped_and_outside_both_halves_are_translation_faults(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig)
    for iova in (0x5000, 1 << 60):
        f = fault(st.dma(iova))
        assert (f.kind, f.code, f.stage) == (FaultKind.TRANSLATION, EventType.F_TRANSLATION, 1)


def test_cd_r_0_suppresses_the_record_but_not_the_fault(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, cd={"R": 0})
    assert fault(st.dma(0x5000)).code == EventType.F_TRANSLATION
    assert rig.events() == []


def test_stage1_walk_abort_is_recorded_even_without_r(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, cd={"R": 0})
    rig.mem.write_u64(st.s1.root, 0x80_0000_0000 | 3)  # next table outside RAM
    f = fault(st.dma(0x1000))
    assert (f.kind, f.code, f.stage) == (FaultKind.EXTERNAL_ABORT, EventType.F_WALK_EABT, 1)
    (ev,) = rig.events()
    assert (ev["S2"], ev["CLASS"]) == (0, CLASS_TT)
    assert ev["FetchAddr"] << 3 == 0x80_0000_0000 + 8 * ((0x1000 >> 30) & 511)


def test_translate_requests_are_never_recorded(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig)
    assert fault(st.dma(0x5000, record=False)).code == EventType.F_TRANSLATION
    assert rig.events() == []
    assert rig.dma(40, 0x1000, record=False).code == EventType.C_BAD_STE  # type: ignore[union-attr]
    assert rig.events() == []


def test_translate_reports_the_write_permission_after_a_read(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig)
    st.s1.map(0x1000, page(rig, 1), PAGE, RW)
    assert target(st.dma(0x1000)).perms == RW
    assert target(st.dma(0x1000, record=False)).perms == RW  # an IOTLB hit


# -- stage 2 and nested ----------------------------------------------------------------------

def test_stage2_only(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True, s1=False, s2_identity=False)
    assert st.s2 is not None
    st.s2.map(0x1_0000_0000, page(rig, 4), PAGE, Perm.R)
    t = target(st.dma(0x1_0000_0123))
    assert (t.gpa, t.perms) == (page(rig, 4) + 0x123, Perm.R)
    f = fault(st.dma(0x1_0000_0123, write=True))
    assert (f.kind, f.code, f.stage) == (FaultKind.PERMISSION, EventType.F_PERMISSION, 2)
    f = fault(st.dma(0x2_0000_0000))
    assert (f.code, f.stage) == (EventType.F_TRANSLATION, 2)
    e1, e2 = rig.events()
    assert (e1["S2"], e1["CLASS"], e1["IPA"] << 12) == (1, CLASS_IN, 0x1_0000_0000)
    assert e2["IPA"] << 12 == 0x2_0000_0000


def test_bypassed_stage1_input_beyond_ias_is_a_stage1_address_size_fault(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True, s1=False)
    f = fault(st.dma(1 << 44))
    assert (f.kind, f.code, f.stage) == (FaultKind.ADDRESS_SIZE, EventType.F_ADDR_SIZE, 1)
    (ev,) = rig.events()
    assert (ev["S2"], ev["CLASS"]) == (0, CLASS_IN)
    rig.ste(2, Config=Config.BYPASS)
    assert fault(rig.dma(2, 1 << 44)).code == EventType.F_ADDR_SIZE


def test_nested(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True)
    st.s1.map(0x7000, 0x4010_0000, PAGE, RW)
    assert target(st.dma(0x7008)).gpa == 0x4010_0008
    st.s1.map(0x8000, 0x5000_0000, PAGE, RW)  # IPA with no stage-2 mapping
    f = fault(st.dma(0x8000))
    assert (f.code, f.stage) == (EventType.F_TRANSLATION, 2)
    (ev,) = rig.events()
    assert (ev["S2"], ev["CLASS"], ev["IPA"] << 12) == (1, CLASS_IN, 0x5000_0000)


def test_nested_stage2_fault_on_a_stage1_table_is_class_tt(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True)
    rig.mem.write_u64(st.s1.root, 0x6000_0000 | 3)  # next table at an unmapped IPA
    f = fault(st.dma(0x1000))
    assert (f.kind, f.code, f.stage) == (FaultKind.TRANSLATION, EventType.F_TRANSLATION, 2)
    (ev,) = rig.events()
    assert (ev["S2"], ev["CLASS"], ev["IPA"] << 12, ev["TTRnW"]) == (1, CLASS_TT,
                                                                    0x6000_0000, 1)


def test_s2r_0_suppresses_stage2_records(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True, s2={"S2R": 0})
    st.s1.map(0x8000, 0x5000_0000, PAGE, RW)
    assert fault(st.dma(0x8000)).stage == 2
    assert rig.events() == []


def test_stage2_access_flag_and_s2affd(mode: str) -> None:
    rig = rig_for(mode)
    for sid, affd in ((1, 0), (2, 1)):
        st = Stream(rig, sid, stage2=True, s1=False, s2_identity=False, s2={"S2AFFD": affd})
        assert st.s2 is not None
        st.s2.map(0x1000, page(rig, 1), PAGE, RW)
        leaf = st.s2.leaf_gpa(0x1000)
        assert leaf is not None
        rig.mem.write_u64(leaf, (rig.mem.read_u64(leaf) or 0) & ~AF)
        got = st.dma(0x1000)
        if affd:
            assert isinstance(got, DmaTarget)
        else:
            assert fault(got).code == EventType.F_ACCESS


# -- TLB invalidation -------------------------------------------------------------------------

def remap(st: Stream, iova: int, gpa: int, *, extra: int = NG) -> None:
    st.s1.unmap(iova, PAGE)
    st.s1.map(iova, gpa, PAGE, RW, extra=extra)


def test_tlbi_nh_va_single_and_range(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig)
    for i in range(8):
        st.s1.map(0x10000 + i * PAGE, page(rig, i), PAGE, RW)
        st.dma(0x10000 + i * PAGE)
    for i in range(8):
        remap(st, 0x10000 + i * PAGE, page(rig, 20 + i))
    assert target(st.dma(0x10000)).gpa == page(rig, 0)  # stale until invalidated
    rig.command(Op.TLBI_NH_VA, ASID=1, Address=0x10000 >> 12, Leaf=1)
    rig.sync()
    assert target(st.dma(0x10000)).gpa == page(rig, 20)
    assert target(st.dma(0x11000)).gpa == page(rig, 1)
    # Range: (NUM+1) * 2^SCALE 4 KB granules = 4 pages from 0x12000.
    rig.command(Op.TLBI_NH_VA, ASID=1, Address=0x12000 >> 12, TG=c.TG_4K, NUM=1, SCALE=1,
                TTL=3)
    rig.sync()
    assert [target(st.dma(0x10000 + i * PAGE)).gpa for i in range(1, 8)] == \
        [page(rig, 1)] + [page(rig, 20 + i) for i in range(2, 6)] + \
        [page(rig, 6), page(rig, 7)]


def test_tlbi_nh_asid_vaa_all(mode: str) -> None:
    rig = rig_for(mode)
    a, b = Stream(rig, 1), Stream(rig, 2)
    for st in (a, b):
        st.s1.map(0x1000, page(rig, st.sid), PAGE, RW, extra=NG)
        st.dma(0x1000)
        remap(st, 0x1000, page(rig, 10 + st.sid))
    rig.command(Op.TLBI_NH_ASID, ASID=2)  # b's ASID
    assert target(a.dma(0x1000)).gpa == page(rig, 1)
    assert target(b.dma(0x1000)).gpa == page(rig, 12)
    rig.command(Op.TLBI_NH_VAA, Address=1)
    assert target(a.dma(0x1000)).gpa == page(rig, 11)
    remap(a, 0x1000, page(rig, 30))
    rig.command(Op.TLBI_NH_ALL)
    assert target(a.dma(0x1000)).gpa == page(rig, 30)


def test_tlbi_nh_asid_spares_global_entries_tlbi_nh_va_hits_them_for_any_asid(
        mode: str) -> None:
    rig = rig_for(mode)
    a, b = Stream(rig, 1), Stream(rig, 2)
    a.s1.map(0x1000, page(rig, 1), PAGE, RW)             # global (nG = 0)
    a.s1.map(0x2000, page(rig, 2), PAGE, RW, extra=NG)
    b.s1.map(0x1000, page(rig, 3), PAGE, RW, extra=NG)
    for st in (a, b):
        st.dma(0x1000)
    a.dma(0x2000)
    remap(a, 0x1000, page(rig, 11), extra=0)
    remap(a, 0x2000, page(rig, 12))
    remap(b, 0x1000, page(rig, 13))
    rig.command(Op.TLBI_NH_ASID, ASID=1)
    assert target(a.dma(0x1000)).gpa == page(rig, 1)      # global: kept
    assert target(a.dma(0x2000)).gpa == page(rig, 12)
    assert target(b.dma(0x1000)).gpa == page(rig, 3)      # other ASID: kept
    rig.command(Op.TLBI_NH_VA, ASID=2, Address=1)         # b's ASID, a's global entry too
    assert target(a.dma(0x1000)).gpa == page(rig, 11)
    assert target(b.dma(0x1000)).gpa == page(rig, 13)


def test_tlbi_vmid_scoping(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True)  # VMID 7
    st.s1.map(0x1000, page(rig, 1), PAGE, RW)
    st.dma(0x1000)
    remap(st, 0x1000, page(rig, 2))
    rig.command(Op.TLBI_NH_ALL, VMID=6)
    assert target(st.dma(0x1000)).gpa == page(rig, 1)
    rig.command(Op.TLBI_NH_ALL, VMID=7)
    assert target(st.dma(0x1000)).gpa == page(rig, 2)


def test_tlbi_s2_ipa_s12_vmall_nsnh_all(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True, s1=False, s2_identity=False)
    assert st.s2 is not None
    st.s2.map(0x1000, page(rig, 1), PAGE, RW)
    st.dma(0x1000)
    st.s2.unmap(0x1000, PAGE)
    st.s2.map(0x1000, page(rig, 2), PAGE, RW)
    assert target(st.dma(0x1000)).gpa == page(rig, 1)
    rig.command(Op.TLBI_S2_IPA, VMID=7, Address=1)
    assert target(st.dma(0x1000)).gpa == page(rig, 2)
    for op in (Op.TLBI_S12_VMALL, Op.TLBI_NSNH_ALL):
        st.s2.unmap(0x1000, PAGE)
        st.s2.map(0x1000, page(rig, 3), PAGE, RW)
        rig.command(op, **({"VMID": 7} if op == Op.TLBI_S12_VMALL else {}))
        assert target(st.dma(0x1000)).gpa == page(rig, 3)
        st.s2.unmap(0x1000, PAGE)
        st.s2.map(0x1000, page(rig, 2), PAGE, RW)
        rig.command(op, **({"VMID": 7} if op == Op.TLBI_S12_VMALL else {}))


def test_nested_stage2_change_after_tlbi_s2_ipa_and_s1(mode: str) -> None:
    rig = rig_for(mode)
    st = Stream(rig, stage2=True, s2_identity=False)
    assert st.s2 is not None
    for gpa in range(RAM_BASE, RAM_BASE + (4 << 20), 2 << 20):
        st.s2.map(gpa, gpa, 2 << 20, RW)
    st.s1.map(0x1000, 0x7000_0000, PAGE, RW)
    st.s2.map(0x7000_0000, page(rig, 5), PAGE, RW)
    assert target(st.dma(0x1000)).gpa == page(rig, 5)
    st.s2.unmap(0x7000_0000, PAGE)
    st.s2.map(0x7000_0000, page(rig, 6), PAGE, RW)
    rig.command(Op.TLBI_S2_IPA, VMID=7, Address=0x7000_0000 >> 12, Leaf=1)
    rig.command(Op.TLBI_NH_ALL, VMID=7)
    rig.sync()
    assert target(st.dma(0x1000)).gpa == page(rig, 6)


# -- ATC invalidation ----------------------------------------------------------------------------

def test_atc_inv_ranges_and_substreams() -> None:
    rig, env = make_rig({"ssidsize": 8})
    rig.command(Op.ATC_INV, StreamID=3, Address=0x12345, Size=0)
    rig.command(Op.ATC_INV, StreamID=3, Address=0x12345, Size=4, SSV=1, SubstreamID=9)
    rig.command(Op.ATC_INV, StreamID=3, Size=52)
    assert env.atc_invalidations == [
        (3, 0xFFFF_FFFF, 0x12345000, 4096),
        (3, 9, 0x12340000, 0x10000),
        (3, 0xFFFF_FFFF, 0, (1 << 64) - 1),
    ]


def test_atc_inv_and_pri_resp_are_ignored_while_smmuen_0() -> None:
    rig, env = make_rig(enable=False)
    rig.cr0(r.CR0.CMDQEN.mask)
    rig.command(Op.ATC_INV, StreamID=3, Size=0)
    rig.command(Op.PRI_RESP, StreamID=3, PRGIndex=1, Resp=2)
    assert env.atc_invalidations == [] and env.page_responses == []


# -- the QEMU qtest vector (smmuv3.md §9.1) --------------------------------------------------

QTEST_IOVA = 0x80_8060_4567
QTEST_PA = 0x4ECB_A567
QTEST_LEAF_RW = 0x0400_0000_0000_0763
QTEST_LEAF_RO = 0x0400_0000_0000_07E3


def qtest_memory(rig: SmmuRig, leaf_attrs: int) -> None:
    """The qtest's tables: L0→L1→L2→L3 at 0x4E4D_0000.. with the leaf at 0x4ECB_A000:
    its "RW" leaf (0x763: RW at stage 1, S2AP read-only) or "RO" leaf (0x7E3: read-only at
    stage 1, S2AP read-write)."""
    m = rig.mem
    table = 0x8000_0000_0000_0003
    m.write_u64(0x4E4D_0000 + 8 * 1, 0x4E4D_1000 | table)
    m.write_u64(0x4E4D_1000 + 8 * 2, 0x4E4D_2000 | table)
    m.write_u64(0x4E4D_2000 + 8 * 3, 0x4E4D_3000 | table)
    m.write_u64(0x4E4D_3000 + 8 * 4, 0x4ECB_A000 | leaf_attrs)


@pytest.mark.parametrize("config", ["s1", "s2"])
def test_qemu_qtest_vector(mode: str, config: str) -> None:
    rig, _ = make_rig({"s1-mode": mode}, base=0x4E00_0000, ram=16 << 20, setup=False)
    qtest_memory(rig, QTEST_LEAF_RW if config == "s1" else QTEST_LEAF_RO)
    rig.mem.write(0x4E17_8FC0, b"".join(w.to_bytes(8, "little") for w in
                                        (0x1E20_6204_C000_0010, 0x4E4D_0001, 0x1)) + bytes(40))
    rig.setup(sid_bits=5)
    dw0 = {"s1": 0x4E17_8FCB, "s2": 0x4E17_8FCD}[config]
    rig.mem.write(rig.strtab + 64 * 8, b"".join(w.to_bytes(8, "little") for w in
                  (dw0, 0, 0x000D_0094_0000_0000, 0x4E4D_0000)) + bytes(32))
    rig.command(Op.CFGI_STE, StreamID=8)
    got = target(rig.dma(8, QTEST_IOVA, write=True))
    assert got.gpa == QTEST_PA
    assert rig.events() == []


def test_qemu_qtest_vector_nested(mode: str) -> None:
    """The qtest's STE (Config nested) and CD words and its stage-1 tables, reached through
    an identity stage 2 of our own (the qtest's nested stage-2 layout is not in the digest),
    so S2TTB is the one word that differs."""
    rig, _ = make_rig({"s1-mode": mode}, base=0x4E00_0000, ram=16 << 20, setup=False)
    qtest_memory(rig, QTEST_LEAF_RW)
    rig.mem.write(0x4E17_8FC0, b"".join(w.to_bytes(8, "little") for w in
                                        (0x1E20_6204_C000_0010, 0x4E4D_0001, 0x1)) + bytes(40))
    rig.setup(sid_bits=5)
    s2 = ArmS2Builder(rig.mem, rig.alloc, tsz=20, start_level=0)
    for gpa in range(0x4E00_0000, 0x4F00_0000, 2 << 20):
        s2.map(gpa, gpa, 2 << 20, RW)
    rig.mem.write(rig.strtab + 64 * 8, b"".join(w.to_bytes(8, "little") for w in
                  (0x4E17_8FCF, 0, 0x000D_0094_0000_0000, s2.root)) + bytes(32))
    rig.command(Op.CFGI_STE, StreamID=8)
    assert target(rig.dma(8, QTEST_IOVA, write=True)).gpa == QTEST_PA
    assert rig.events() == []
