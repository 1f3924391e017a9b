"""The stream table and STEs (IHI 0070 §3.3, §5.1, §5.2, §7.3.3-7.3.5): linear and 2-level
lookups, every C_BAD_STREAMID and C_BAD_STE condition, F_STE_FETCH, Config abort/bypass,
and the configuration cache (a rewritten STE is not used before its CMD_CFGI_STE)."""

from __future__ import annotations

from typing import Any

import pytest

from devices.model import DmaFault, DmaTarget, FaultKind
from devices.pagetable.builders import ArmS2Builder
from devices.smmuv3 import regs as r
from devices.smmuv3.commands import Op
from devices.smmuv3.events import EventType
from devices.smmuv3.ste import Config
from devices.smmuv3.testing import SmmuRig, make_rig, s2_fields

BAD_STE = DmaFault(FaultKind.BAD_CONFIG, EventType.C_BAD_STE, 0x1000, 0)
BAD_SID = DmaFault(FaultKind.BAD_CONFIG, EventType.C_BAD_STREAMID, 0x1000, 0)
RECINVSID = r.CR2.RECINVSID.mask


def only_event(rig: SmmuRig) -> dict[str, int]:
    events = rig.events()
    assert len(events) == 1, events
    return events[0].fields


def test_linear_bypass_ste_translates_identity() -> None:
    rig, _ = make_rig()
    rig.ste(9, Config=Config.BYPASS)
    got = rig.dma(9, 0x4000_1234)
    assert isinstance(got, DmaTarget)
    assert (got.gpa, got.size, int(got.perms)) == (0x4000_1234, 4096, 7)
    assert rig.events() == []


def test_ste_abort_is_silent() -> None:
    rig, _ = make_rig()
    rig.ste(2, Config=Config.ABORT)
    assert rig.dma(2, 0x1000) == DmaFault(FaultKind.BLOCKED, 0, 0x1000, 0)
    assert rig.events() == []


@pytest.mark.parametrize("config", [0b001, 0b010, 0b011])
def test_reserved_config_values_behave_as_abort(config: int) -> None:
    rig, _ = make_rig()
    rig.ste(2, Config=config)
    assert rig.dma(2, 0x1000) == DmaFault(FaultKind.BLOCKED, 0, 0x1000, 0)
    assert rig.events() == []


def test_invalid_ste_is_c_bad_ste_with_the_substream() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    assert rig.dma(7, 0x1000, pasid=3) == BAD_STE
    ev = only_event(rig)
    assert (ev["Type"], ev["StreamID"], ev["SSV"], ev["SubstreamID"]) == (4, 7, 1, 3)


def test_streamid_beyond_log2size_is_recorded_only_with_recinvsid() -> None:
    rig, _ = make_rig(sid_bits=4)
    assert rig.dma(16, 0x1000) == BAD_SID
    assert rig.events() == []
    rig.write(r.CR2, RECINVSID)
    assert rig.dma(16, 0x1000) == BAD_SID
    assert only_event(rig)["Type"] == EventType.C_BAD_STREAMID


def test_unreadable_ste_is_f_ste_fetch_with_its_address() -> None:
    rig, _ = make_rig()
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask)
    rig.write(r.STRTAB_BASE, 0x10_0000_0000)
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask | r.CR0.SMMUEN.mask)
    assert rig.dma(3, 0x1000) == DmaFault(FaultKind.EXTERNAL_ABORT, EventType.F_STE_FETCH,
                                          0x1000, 0)
    ev = only_event(rig)
    assert ev["FetchAddr"] << 3 == 0x10_0000_0000 + 3 * 64


def test_linear_base_is_aligned_to_the_table_size() -> None:
    rig, _ = make_rig(sid_bits=4)  # 16 STEs: 1 KiB table
    rig.ste(1, Config=Config.BYPASS)
    rig.write(r.CR0, r.CR0.CMDQEN.mask)
    rig.write(r.STRTAB_BASE, rig.strtab | 0x3C0)  # low bits inside the table: ignored
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.SMMUEN.mask)
    assert isinstance(rig.dma(1, 0x1000), DmaTarget)


# -- 2-level stream tables (§5.1) ----------------------------------------------------------

@pytest.mark.parametrize("split", [6, 8, 10])
def test_two_level_lookup(split: int) -> None:
    rig, _ = make_rig(sid_bits=16, two_level=True, split=split)
    for sid in (0, (1 << split) - 1, 1 << split, 0xFFFF):
        rig.ste(sid, Config=Config.BYPASS)
        assert isinstance(rig.dma(sid, 0x1000), DmaTarget), sid
    assert rig.events() == []


def test_l1std_span_0_is_c_bad_streamid() -> None:
    rig, _ = make_rig(sid_bits=12, two_level=True, split=6, cr2=RECINVSID)
    rig.l1std(0x80, span=0)
    assert rig.dma(0x80, 0x1000) == BAD_SID
    assert only_event(rig)["StreamID"] == 0x80


def test_l1std_span_holds_2_pow_span_minus_1_stes_not_qemu_2_pow_span() -> None:
    """smmuv3.md §8 item 4 / §10: QEMU (and Xen's copy) let an L1STD of Span s reach 2^s
    STEs, reading past the L2 array; the spec (§5.1) says 2^(s-1)."""
    rig, _ = make_rig(sid_bits=12, two_level=True, split=6, cr2=RECINVSID)
    l2 = rig.l1std(0x40, span=3)  # 4 STEs: SIDs 0x40..0x43
    for i in range(4):
        rig.mem.write(l2 + 64 * i, (0x9).to_bytes(8, "little") + bytes(56))
    rig.mem.write(l2 + 64 * 4, (0x9).to_bytes(8, "little") + bytes(56))  # past the array
    rig.command(Op.CFGI_STE_RANGE, Range=31)
    assert isinstance(rig.dma(0x43, 0x1000), DmaTarget)
    assert rig.dma(0x44, 0x1000) == BAD_SID
    assert only_event(rig)["StreamID"] == 0x44


@pytest.mark.parametrize("span", [8, 12, 31])
def test_l1std_span_above_split_plus_1_or_reserved_is_c_bad_streamid(span: int) -> None:
    rig, _ = make_rig(sid_bits=12, two_level=True, split=6)
    rig.l1std(0x40, span=span, l2ptr=rig.alloc.alloc(4096))
    assert rig.dma(0x40, 0x1000) == BAD_SID


def test_unreadable_l1std_is_f_ste_fetch() -> None:
    rig, _ = make_rig(sid_bits=16, two_level=True, split=6)
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask)
    rig.write(r.STRTAB_BASE, 0x20_0000_0000)
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask | r.CR0.SMMUEN.mask)
    assert rig.dma(0x81, 0x1000).code == EventType.F_STE_FETCH  # type: ignore[union-attr]
    assert only_event(rig)["FetchAddr"] << 3 == 0x20_0000_0000 + 8 * (0x81 >> 6)


def test_unreadable_l2_ste_is_f_ste_fetch() -> None:
    rig, _ = make_rig(sid_bits=12, two_level=True, split=6)
    rig.l1std(0x40, span=7, l2ptr=0x30_0000_0000)
    got = rig.dma(0x41, 0x1000)
    assert isinstance(got, DmaFault) and got.code == EventType.F_STE_FETCH
    assert only_event(rig)["FetchAddr"] << 3 == 0x30_0000_0000 + 64


def test_fmt_written_back_to_linear_is_linear_again_not_qemu_sticky() -> None:
    """smmuv3.md §8 item 6: QEMU keeps the 2-level flag once set."""
    rig, _ = make_rig(sid_bits=6, two_level=True, split=6)
    rig.write(r.CR0, r.CR0.CMDQEN.mask)
    table = rig.alloc.alloc(64 << 6)
    rig.mem.write(table + 64 * 5, (0x9).to_bytes(8, "little") + bytes(56))
    rig.write(r.STRTAB_BASE, table)
    rig.write(r.STRTAB_BASE_CFG, 6)  # FMT = linear
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.SMMUEN.mask)
    assert isinstance(rig.dma(5, 0x1000), DmaTarget)


def test_two_level_base_aligned_to_the_l1_size_not_qemu_half_of_it() -> None:
    """smmuv3.md §8 item 12: QEMU aligns a 2-level base to 2^(LOG2SIZE-SPLIT+2), half the
    L1 table; the spec aligns it to the table size, 2^(LOG2SIZE-SPLIT+3)."""
    rig, _ = make_rig(sid_bits=10, two_level=True, split=6)  # 16 L1STDs: 128 bytes
    rig.ste(0x3C5, Config=Config.BYPASS)
    rig.write(r.CR0, r.CR0.CMDQEN.mask)
    rig.write(r.STRTAB_BASE, rig.strtab | 0x40)  # QEMU would start the table here
    rig.write(r.CR0, r.CR0.CMDQEN.mask | r.CR0.SMMUEN.mask)
    assert isinstance(rig.dma(0x3C5, 0x1000), DmaTarget)


# -- STE validity (§5.2, §5.5) --------------------------------------------------------------

def _valid_s2(rig: SmmuRig) -> dict[str, Any]:
    s2 = ArmS2Builder(rig.mem, rig.alloc, tsz=24)
    return s2_fields(s2)


@pytest.mark.parametrize(("options", "fields"), [
    ({"stage": "s2"}, {"Config": Config.S1}),
    ({"stage": "s2"}, {"Config": Config.NESTED}),
    ({"stage": "s1"}, {"Config": Config.S2}),
    ({}, {"Config": Config.S1, "S1STALLD": 1}),
    ({"ssidsize": 4}, {"Config": Config.S1, "S1CDMax": 5}),
])
def test_illegal_stage1_configurations_are_c_bad_ste(options: dict[str, Any],
                                                     fields: dict[str, Any]) -> None:
    rig, _ = make_rig(options)
    rig.ste(1, **fields)
    assert rig.dma(1, 0x1000) == BAD_STE
    assert only_event(rig)["Type"] == EventType.C_BAD_STE


@pytest.mark.parametrize("bad", [
    {"S2AA64": 0}, {"S2ENDI": 1}, {"S2TG": 3}, {"S2T0SZ": 15}, {"S2T0SZ": 40},
    {"S2T0SZ": 19},                # 45-bit IPA above the 44-bit IAS
    {"S2SL0": 3}, {"S2SL0": 0},    # reserved; and level 2 cannot cover a 40-bit IPA
    {"S2HA": 1}, {"S2HD": 1}, {"S2S": 1},
    {"S2TTB": 1 << 44 >> 4},       # beyond the effective S2PS (OAS 44)
    {"EATS": 2},                   # split-stage ATS: IDR0.NS1ATS = 1
])
def test_illegal_stage2_configurations_are_c_bad_ste(bad: dict[str, Any]) -> None:
    rig, _ = make_rig()
    rig.ste(1, Config=Config.S2, **{**_valid_s2(rig), **bad})
    assert rig.dma(1, 0x1000) == BAD_STE


def test_s2aa64_0_is_c_bad_ste_not_a_qemu_abort() -> None:
    """smmuv3.md §8 item 1: QEMU asserts (kills the VM) on S2AA64 = 0."""
    rig, _ = make_rig()
    rig.ste(1, Config=Config.NESTED, **{**_valid_s2(rig), "S2AA64": 0})
    assert rig.dma(1, 0x1000) == BAD_STE


def test_stage2_fields_are_ignored_when_stage2_bypasses() -> None:
    rig, _ = make_rig()
    rig.ste(1, Config=Config.BYPASS, S2AA64=0, S2TG=3, S2S=1, EATS=2)
    assert isinstance(rig.dma(1, 0x1000), DmaTarget)


@pytest.mark.parametrize("fields", [{"S2PS": 6}, {"S2PS": 7}, {"EATS": 3}, {"EATS": 1}])
def test_values_that_behave_as_another(fields: dict[str, Any]) -> None:
    """S2PS above the OAS (reserved 0b111 included) is capped; EATS 0b11 without DPT behaves
    as 0b00."""
    rig, _ = make_rig()
    rig.ste(1, Config=Config.S2, **{**_valid_s2(rig), **fields})
    got = rig.dma(1, 0x1000)
    assert isinstance(got, DmaFault) and got.code == EventType.F_TRANSLATION  # empty tables


def test_kunit_cd_table_ste_with_s1stalld_is_c_bad_ste_here() -> None:
    """smmuv3.md §9.2: Linux sets S1STALLD only with a configurable stall model; this SMMU
    has STALL_MODEL = 0b01, which makes that STE ILLEGAL (§5.5)."""
    rig, _ = make_rig({"ssidsize": 16})
    addr = rig.ste_address(1)
    rig.mem.write(addr, (0xF800_F0F0_F0F0_F0EB).to_bytes(8, "little")
                  + (0x0800_00D4).to_bytes(8, "little") + bytes(48))
    rig.command(Op.CFGI_STE, StreamID=1)
    assert rig.dma(1, 0x1000) == BAD_STE


# -- the configuration cache ----------------------------------------------------------------

def test_rewritten_ste_is_not_used_before_cfgi_ste() -> None:
    rig, _ = make_rig()
    rig.ste(4, Config=Config.BYPASS)
    assert isinstance(rig.dma(4, 0x1000), DmaTarget)
    rig.ste(4, Config=Config.ABORT, invalidate=False)
    assert isinstance(rig.dma(4, 0x1000), DmaTarget)  # still the cached bypass STE
    rig.command(Op.CFGI_STE, StreamID=4)
    assert rig.dma(4, 0x1000) == DmaFault(FaultKind.BLOCKED, 0, 0x1000, 0)


def test_invalid_ste_is_not_cached() -> None:
    rig, _ = make_rig()
    assert rig.dma(4, 0x1000) == BAD_STE
    rig.ste(4, Config=Config.BYPASS, invalidate=False)
    assert isinstance(rig.dma(4, 0x1000), DmaTarget)


def test_prefetch_config_caches_the_ste_and_records_nothing() -> None:
    rig, _ = make_rig()
    rig.ste(4, Config=Config.BYPASS, invalidate=False)
    rig.command(Op.PREFETCH_CONFIG, StreamID=4)
    rig.ste(4, Config=Config.ABORT, invalidate=False)
    assert isinstance(rig.dma(4, 0x1000), DmaTarget)
    rig.command(Op.PREFETCH_CONFIG, StreamID=5)  # invalid STE: no event for a prefetch
    assert rig.events() == []


def test_cfgi_all_then_smmuen_toggle_drop_everything() -> None:
    rig, _ = make_rig()
    for sid in range(4):
        rig.ste(sid, Config=Config.BYPASS)
        rig.dma(sid, 0)
    rig.command(Op.CFGI_STE_RANGE, Range=31)
    assert len(rig.dev.cache) == 0
    assert [hc.sid for hc in rig.dev.pool] == [None]  # the shared identity context stays
    rig.dma(1, 0)
    rig.write(r.CR0, 0)
    assert len(rig.dev.cache) == 0 and len(rig.dev.pool) == 0


def test_the_cache_is_bounded() -> None:
    rig, _ = make_rig(sid_bits=12)
    rig.dev.cache.max_streams = 8
    for sid in range(20):
        rig.ste(sid, Config=Config.BYPASS, invalidate=False)
        rig.dma(sid, 0)
    assert len(rig.dev.cache) == 8
    assert len(rig.dev.pool) == 1  # bypass streams share one identity context
