"""vmm.iotlb: exactness against a brute-force reference, bounds, tags, range decoders."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.model import Perm
from vmm.iotlb import (
    ALL_STAGES,
    ANY,
    S1_STAGES,
    GlobalRule,
    Iotlb,
    Stage,
    Tag,
    Wildcard,
    arm_tlbi_range,
    vtd_devtlb_range,
    vtd_iotlb_range,
)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
RW = Perm.R | Perm.W

# -- a brute-force reference model ------------------------------------------------------------


@dataclass
class Ref:
    """What the IOTLB should hold: a flat list, searched linearly."""

    key: tuple[int, int, int | None, int | None, Stage]
    base: int
    size: int
    gpa: int
    is_global: bool
    ipa: int | None

    def overlaps(self, start: int, end: int) -> bool:
        return self.base < end and start < self.base + self.size


def ref_insert(refs: list[Ref], new: Ref) -> None:
    refs[:] = [
        r for r in refs if not (r.key == new.key and r.overlaps(new.base, new.base + new.size))
    ]
    refs.append(new)


def ref_lookup(refs: list[Ref], key: tuple[object, ...], iova: int) -> Ref | None:
    hits = [r for r in refs if r.key == key and r.base <= iova < r.base + r.size]
    assert len(hits) <= 1
    return hits[0] if hits else None


def matches(value: object, want: object) -> bool:
    return want is ANY or value == want


def ref_range_hit(
    r: Ref,
    start: int,
    size: int,
    ctx: int | None,
    vmid: int | None,
    asid: int | None | Wildcard,
    pasid: int | None | Wildcard,
    stages: frozenset[Stage],
    rule: GlobalRule,
) -> bool:
    r_ctx, r_vmid, r_asid, r_pasid, r_stage = r.key
    if (ctx is not None and r_ctx != ctx) or (vmid is not None and r_vmid != vmid):
        return False
    if r_stage not in stages or not r.overlaps(start, start + size):
        return False
    asid_ok, pasid_ok = matches(r_asid, asid), matches(r_pasid, pasid)
    if asid_ok and pasid_ok:
        return True
    if not r.is_global:
        return False
    return (rule is GlobalRule.ANY_ASID and pasid_ok) or (rule is GlobalRule.ANY_PASID and asid_ok)


# -- strategies -------------------------------------------------------------------------------

SHIFTS = [12, 14, 16, 21, 25, 29, 30]
TAG_KEYS = [
    (0, 0, 1, None, Stage.S1),
    (0, 0, 2, None, Stage.S1),
    (0, 0, 1, 7, Stage.S1),
    (0, 1, 1, None, Stage.NESTED),
    (0, 1, None, None, Stage.S2),
    (1, 0, 1, None, Stage.S1),
]


@st.composite
def fills(draw: st.DrawFn) -> Ref:
    key = draw(st.sampled_from(TAG_KEYS))
    shift = draw(st.sampled_from(SHIFTS))
    # Blocks crowd into the first 4 GiB so that ranges and blocks overlap often.
    base = draw(st.integers(0, (4 * GiB >> shift) - 1)) << shift
    gpa = draw(st.integers(0, (1 << 40 >> shift) - 1)) << shift
    ipa = draw(
        st.one_of(st.none(), st.integers(0, (4 * GiB >> shift) - 1).map(lambda v: v << shift))
    )
    return Ref(
        key, base, 1 << shift, gpa, draw(st.booleans()), ipa if key[4] is Stage.NESTED else None
    )


ranges = st.one_of(
    st.tuples(st.integers(0, 4 * GiB), st.integers(1, 64 * MiB)),
    st.tuples(st.integers(0, 4 * GiB >> 12).map(lambda v: v << 12), st.just(4 * KiB)),
    st.tuples(st.just(0), st.sampled_from([1 << 64, 1 << 80])),
)


def tag_of(tlb: Iotlb, key: tuple[int, int, int | None, int | None, Stage]) -> Tag:
    ctx, vmid, asid, pasid, stage = key
    return tlb.tag(ctx=ctx, vmid=vmid, asid=asid, pasid=pasid, stage=stage)


def fill(tlb: Iotlb, r: Ref) -> Tag:
    tag = tag_of(tlb, r.key)
    tlb.insert(tag, r.base, r.size, r.gpa, RW, is_global=r.is_global, ipa=r.ipa)
    return tag


def probes(r: Ref) -> list[int]:
    return [r.base, r.base + r.size // 2, r.base + r.size - 1]


def check_against(tlb: Iotlb, refs: list[Ref], extra: list[Ref]) -> None:
    """Every address of every known block translates exactly as the reference says."""
    for r in refs + extra:
        tag = tag_of(tlb, r.key)
        for iova in probes(r):
            want = ref_lookup(refs, r.key, iova)
            got = tlb.lookup(tag, iova)
            if want is None:
                assert got is None, (r, hex(iova))
            else:
                assert got is not None, (want, hex(iova))
                assert (got.iova, got.size, got.gpa, got.is_global) == (
                    want.base,
                    want.size,
                    want.gpa,
                    want.is_global,
                )
                assert got.output(iova) == want.gpa + (iova - want.base)
    assert len(tlb) == len(refs)


# -- exactness ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(fills(), min_size=1, max_size=25),
    rng=ranges,
    ctx=st.sampled_from([None, 0, 1]),
    vmid=st.sampled_from([None, 0, 1]),
    asid=st.sampled_from([ANY, 1, 2, None]),
    pasid=st.sampled_from([ANY, None, 7]),
    stages=st.sampled_from([ALL_STAGES, S1_STAGES, frozenset({Stage.S2})]),
    rule=st.sampled_from(list(GlobalRule)),
    leaf_only=st.booleans(),
)
def test_range_invalidation_is_exact(
    entries: list[Ref],
    rng: tuple[int, int],
    ctx: int | None,
    vmid: int | None,
    asid: int | None | Wildcard,
    pasid: int | None | Wildcard,
    stages: frozenset[Stage],
    rule: GlobalRule,
    leaf_only: bool,
) -> None:
    tlb = Iotlb(64)
    refs: list[Ref] = []
    for r in entries:
        fill(tlb, r)
        ref_insert(refs, r)
    check_against(tlb, refs, entries)
    start, size = rng
    kept = [
        r for r in refs if not ref_range_hit(r, start, size, ctx, vmid, asid, pasid, stages, rule)
    ]
    dropped = tlb.invalidate_range(
        start,
        size,
        ctx=ctx,
        vmid=vmid,
        asid=asid,
        pasid=pasid,
        stages=stages,
        global_rule=rule,
        leaf_only=leaf_only,
    )
    assert dropped == len(refs) - len(kept)
    check_against(tlb, kept, entries)


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(fills(), min_size=1, max_size=25),
    rng=ranges,
    vmid=st.sampled_from([0, 1]),
    combined=st.booleans(),
)
def test_ipa_invalidation_is_exact(
    entries: list[Ref], rng: tuple[int, int], vmid: int, combined: bool
) -> None:
    tlb = Iotlb(64)
    refs: list[Ref] = []
    for r in entries:
        fill(tlb, r)
        ref_insert(refs, r)
    start, size = rng

    def hit(r: Ref) -> bool:
        _, r_vmid, _, _, stage = r.key
        if r_vmid != vmid:
            return False
        if stage is Stage.S2:
            return r.overlaps(start, start + size)
        if stage is Stage.NESTED and combined:
            return r.ipa is None or (r.ipa < start + size and start < r.ipa + r.size)
        return False

    kept = [r for r in refs if not hit(r)]
    assert tlb.invalidate_ipa(start, size, vmid=vmid, combined=combined) == len(refs) - len(kept)
    check_against(tlb, kept, entries)


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(fills(), min_size=1, max_size=25),
    which=st.sampled_from(
        ["all", "ctx", "vmid", "nh_all", "asid", "asid_keep", "pasid", "pasid_keep"]
    ),
)
def test_scope_invalidation_is_exact(entries: list[Ref], which: str) -> None:
    tlb = Iotlb(64)
    refs: list[Ref] = []
    for r in entries:
        fill(tlb, r)
        ref_insert(refs, r)

    def hit(r: Ref) -> bool:
        ctx, vmid, asid, pasid, stage = r.key
        return {
            "all": True,
            "ctx": ctx == 1,
            "vmid": vmid == 1,
            "nh_all": vmid == 0 and stage in S1_STAGES,
            "asid": asid == 1 and vmid == 0,
            "asid_keep": asid == 1 and vmid == 0 and not r.is_global,
            "pasid": pasid == 7 and asid == 1,
            "pasid_keep": pasid == 7 and not r.is_global,
        }[which]

    ops = {
        "all": lambda: tlb.invalidate_all(),
        "ctx": lambda: tlb.invalidate_all(ctx=1),
        "vmid": lambda: tlb.invalidate_vmid(1),
        "nh_all": lambda: tlb.invalidate_vmid(0, stages=S1_STAGES),
        "asid": lambda: tlb.invalidate_asid(1, vmid=0, keep_global=False),
        "asid_keep": lambda: tlb.invalidate_asid(1, vmid=0, keep_global=True),
        "pasid": lambda: tlb.invalidate_pasid(7, asid=1, keep_global=False),
        "pasid_keep": lambda: tlb.invalidate_pasid(7, keep_global=True),
    }
    kept = [r for r in refs if not hit(r)]
    assert ops[which]() == len(refs) - len(kept)
    check_against(tlb, kept, entries)


def test_block_dropped_by_a_page_inside_it() -> None:
    tlb = Iotlb(8)
    tag = tlb.tag(ctx=0, stage=Stage.S1, asid=1)
    tlb.insert(tag, 0x4020_0000, 2 * MiB, 0x8000_0000, RW)
    assert tlb.lookup(tag, 0x403F_F123) is not None
    assert tlb.invalidate_range(0x4030_0000, 4 * KiB) == 1
    assert tlb.lookup(tag, 0x4020_0000) is None


def test_single_va_form_hits_the_covering_entry_only() -> None:
    tlb = Iotlb(8)
    tag = tlb.tag(ctx=0, stage=Stage.S1, asid=1)
    tlb.insert(tag, 0x10000, 64 * KiB, 0x90000, RW)
    tlb.insert(tag, 0x20000, 4 * KiB, 0xA0000, RW)
    start, size = arm_tlbi_range(0x1F000, tg=0, scale=0, num=0)
    assert tlb.invalidate_range(start, size, asid=1) == 1
    assert tlb.lookup(tag, 0x10000) is None
    assert tlb.lookup(tag, 0x20000) is not None


# -- a random sequence of operations against the reference (no eviction: capacity is large) -----


@st.composite
def op_sequences(draw: st.DrawFn) -> list[tuple[str, object]]:
    ops: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["fill", "fill", "fill", "range", "asid"]))
        if kind == "fill":
            ops.append((kind, draw(fills())))
        elif kind == "range":
            ops.append((kind, draw(ranges)))
        else:
            ops.append((kind, draw(st.sampled_from([1, 2]))))
    return ops


@settings(max_examples=80, deadline=None)
@given(ops=op_sequences())
def test_operation_sequences_match_reference(ops: list[tuple[str, object]]) -> None:
    tlb = Iotlb(1024)
    refs: list[Ref] = []
    seen: list[Ref] = []
    for kind, arg in ops:
        if kind == "fill":
            assert isinstance(arg, Ref)
            fill(tlb, arg)
            ref_insert(refs, arg)
            seen.append(arg)
        elif kind == "range":
            assert isinstance(arg, tuple)
            start, size = arg
            tlb.invalidate_range(
                start, size, stages=S1_STAGES, asid=1, global_rule=GlobalRule.ANY_ASID
            )
            refs[:] = [
                r
                for r in refs
                if not ref_range_hit(
                    r, start, size, None, None, 1, ANY, S1_STAGES, GlobalRule.ANY_ASID
                )
            ]
        else:
            assert isinstance(arg, int)
            tlb.invalidate_asid(arg, keep_global=True)
            refs[:] = [r for r in refs if not (r.key[2] == arg and not r.is_global)]
        check_against(tlb, refs, seen)


# -- capacity and replacement ---------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    capacity=st.integers(1, 16),
    entries=st.lists(fills(), min_size=1, max_size=60),
    hits=st.lists(st.integers(0, 59), max_size=30),
)
def test_capacity_is_a_strict_bound(capacity: int, entries: list[Ref], hits: list[int]) -> None:
    tlb = Iotlb(capacity)
    for i, r in enumerate(entries):
        tag = fill(tlb, r)
        assert len(tlb) <= capacity
        assert tlb.lookup(tag, r.base) is not None  # the newest entry is always there
        if i in hits:
            for e in tlb.entries():
                tlb.lookup(e.tag, e.iova)
    # Whatever survived is still exact: each cached entry answers for its own block.
    for e in tlb.entries():
        assert tlb.lookup(e.tag, e.iova + e.size - 1) is e
    stats = tlb.stats()
    assert stats.entries == len(tlb) <= capacity
    assert stats.inserts == len(entries)


def test_clock_gives_recently_hit_entries_a_second_chance() -> None:
    tlb = Iotlb(4)
    tag = tlb.tag(ctx=0, stage=Stage.S1, asid=1)
    for page in range(4):
        tlb.insert(tag, page << 12, 4 * KiB, page << 12, RW)
    assert tlb.lookup(tag, 0x0000) is not None  # page 0 is referenced
    tlb.insert(tag, 4 << 12, 4 * KiB, 4 << 12, RW)  # evicts page 1, the oldest unreferenced
    assert tlb.lookup(tag, 0x0000) is not None
    assert tlb.lookup(tag, 0x1000) is None
    assert tlb.lookup(tag, 0x4000) is not None
    assert len(tlb) == 4
    assert tlb.stats().evictions == 1


def test_eviction_when_every_entry_is_referenced() -> None:
    tlb = Iotlb(3)
    tag = tlb.tag(ctx=0, stage=Stage.S1, asid=1)
    for page in range(3):
        tlb.insert(tag, page << 12, 4 * KiB, 0, RW)
        tlb.lookup(tag, page << 12)
    tlb.insert(tag, 3 << 12, 4 * KiB, 0, RW)  # a full sweep clears all, then page 0 goes
    assert [e.iova for e in tlb.entries()] == [0x3000, 0x1000, 0x2000]


def test_invalidated_slots_are_reused_before_evicting() -> None:
    tlb = Iotlb(2)
    tag = tlb.tag(ctx=0, stage=Stage.S1, asid=1)
    tlb.insert(tag, 0x0000, 4 * KiB, 0, RW)
    tlb.insert(tag, 0x1000, 4 * KiB, 0, RW)
    tlb.invalidate_range(0x0000, 4 * KiB)
    tlb.insert(tag, 0x2000, 4 * KiB, 0, RW)
    assert tlb.lookup(tag, 0x1000) is not None
    assert tlb.stats().evictions == 0


def test_insert_replaces_overlapping_entries_of_the_same_tag() -> None:
    tlb = Iotlb(16)
    tag = tlb.tag(ctx=0, stage=Stage.S1, asid=1)
    other = tlb.tag(ctx=0, stage=Stage.S1, asid=2)
    for page in range(4):
        tlb.insert(tag, 0x20_0000 + (page << 12), 4 * KiB, 0, RW)
    tlb.insert(other, 0x20_0000, 4 * KiB, 0x5000, RW)
    tlb.insert(tag, 0x20_0000, 2 * MiB, 0x4000_0000, Perm.R)
    assert len(tlb) == 2
    hit = tlb.lookup(tag, 0x20_3456)
    assert hit is not None and hit.output(0x20_3456) == 0x4000_3456 and hit.perm == Perm.R
    tlb.insert(tag, 0x20_1000, 4 * KiB, 0x7000, RW)  # and back: the 2 MiB block goes
    assert tlb.lookup(tag, 0x20_3456) is None
    assert tlb.lookup(other, 0x20_0000) is not None


def test_insert_rejects_bad_sizes() -> None:
    tlb = Iotlb(4)
    tag = tlb.tag(ctx=0, stage=Stage.S1)
    for size in (0, 2048, 3 * 4096, -4096):
        with pytest.raises(ValueError):
            tlb.insert(tag, 0, size, 0, RW)
    with pytest.raises(ValueError):
        Iotlb(0)


def test_unusual_block_sizes_and_alignment() -> None:
    tlb = Iotlb(4)
    tag = tlb.tag(ctx=0, stage=Stage.S1)
    e = tlb.insert(tag, 0x1234_5678_9ABC, 512 * MiB, 0x8_2345_6789, RW)
    assert (e.iova, e.gpa) == (0x1234_4000_0000, 0x8_2000_0000)
    assert tlb.lookup(tag, 0x1234_5FFF_FFFF) is e
    assert e.output(0x1234_5FFF_FFFF) == 0x8_3FFF_FFFF
    big = tlb.insert(tag, 1 << 50, 1 << 48, 1 << 48, RW)  # any power of two works
    assert tlb.lookup(tag, (1 << 50) + 5) is big


# -- tags --------------------------------------------------------------------------------------------


def test_tags_are_interned_and_isolated() -> None:
    tlb = Iotlb(32)
    keys = [
        (0, 0, 1, None, Stage.S1),
        (1, 0, 1, None, Stage.S1),  # another context
        (0, 1, 1, None, Stage.S1),  # another VMID
        (0, 0, 2, None, Stage.S1),  # another ASID / DID
        (0, 0, 1, 0, Stage.S1),  # PASID 0 is not "no PASID"
        (0, 0, 1, None, Stage.NESTED),  # another stage
    ]
    tags = [tag_of(tlb, key) for key in keys]
    assert all(a is tag_of(tlb, key) for a, key in zip(tags, keys, strict=True))
    assert len({id(t) for t in tags}) == len(keys)
    for i, tag in enumerate(tags):
        tlb.insert(tag, 0x1000, 4 * KiB, i << 12, RW)
    for i, tag in enumerate(tags):
        hit = tlb.lookup(tag, 0x1000)
        assert hit is not None and hit.gpa == i << 12
    tlb.invalidate_pasid(0, keep_global=False)
    assert tlb.lookup(tags[4], 0x1000) is None
    assert all(tlb.lookup(t, 0x1000) is not None for t in tags[:4] + tags[5:])


def test_global_entries_survive_asid_invalidation_not_va_invalidation() -> None:
    tlb = Iotlb(8)
    a1 = tlb.tag(ctx=0, vmid=3, asid=1, stage=Stage.S1)
    a2 = tlb.tag(ctx=0, vmid=3, asid=2, stage=Stage.S1)
    tlb.insert(a1, 0x1000, 4 * KiB, 0x1000, RW, is_global=True)
    tlb.insert(a1, 0x2000, 4 * KiB, 0x2000, RW)
    tlb.insert(a2, 0x3000, 4 * KiB, 0x3000, RW)
    # TLBI_NH_ASID(1): the global entry stays.
    assert tlb.invalidate_asid(1, vmid=3, keep_global=True, stages=S1_STAGES) == 1
    assert tlb.lookup(a1, 0x1000) is not None and tlb.lookup(a1, 0x2000) is None
    # TLBI_NH_VA(ASID 2) of the global page: global entries of every ASID are hit.
    assert (
        tlb.invalidate_range(0x3000, 4 * KiB, vmid=3, asid=2, global_rule=GlobalRule.ANY_ASID) == 1
    )
    assert tlb.invalidate_range(0x1000, 4 * KiB, vmid=3, asid=2, global_rule=GlobalRule.EXACT) == 0
    assert (
        tlb.invalidate_range(0x1000, 4 * KiB, vmid=4, asid=2, global_rule=GlobalRule.ANY_ASID) == 0
    )
    assert (
        tlb.invalidate_range(0x1000, 4 * KiB, vmid=3, asid=2, global_rule=GlobalRule.ANY_ASID) == 1
    )
    assert len(tlb) == 0


def test_vtd_global_entries_within_a_domain() -> None:
    tlb = Iotlb(8)
    p1 = tlb.tag(ctx=0, asid=5, pasid=1, stage=Stage.S1)
    p2 = tlb.tag(ctx=0, asid=5, pasid=2, stage=Stage.S1)
    other_did = tlb.tag(ctx=0, asid=6, pasid=1, stage=Stage.S1)
    tlb.insert(p1, 0x1000, 4 * KiB, 0, RW, is_global=True)
    tlb.insert(other_did, 0x1000, 4 * KiB, 0, RW, is_global=True)
    tlb.insert(p2, 0x1000, 4 * KiB, 0, RW)
    # Non-globals within PASID 1 (G=10b) keeps the global entry.
    assert tlb.invalidate_pasid(1, asid=5, keep_global=True) == 0
    # Page-selective within PASID 2 of DID 5 reaches PASID 1's global entry, not DID 6's.
    start, size = vtd_iotlb_range(0x1000, 0)
    dropped = tlb.invalidate_range(start, size, asid=5, pasid=2, global_rule=GlobalRule.ANY_PASID)
    assert dropped == 2
    assert tlb.lookup(other_did, 0x1000) is not None
    # Domain-selective drops globals too.
    assert tlb.invalidate_asid(6, keep_global=False) == 1


def test_ipa_invalidation_conservative_for_unknown_ipa() -> None:
    tlb = Iotlb(8)
    nested = tlb.tag(ctx=0, vmid=2, asid=1, stage=Stage.NESTED)
    s2 = tlb.tag(ctx=0, vmid=2, stage=Stage.S2)
    tlb.insert(nested, 0x1000, 4 * KiB, 0x9000, RW, ipa=0x5000)
    tlb.insert(nested, 0x2000, 4 * KiB, 0xA000, RW)  # IPA unknown
    tlb.insert(s2, 0x5000, 4 * KiB, 0x9000, RW)
    assert tlb.invalidate_ipa(0x7000, 4 * KiB, vmid=2) == 1  # only the unknown one
    assert tlb.invalidate_ipa(0x5000, 4 * KiB, vmid=2, combined=False) == 1  # only the S2 one
    assert tlb.lookup(nested, 0x1000) is not None
    assert tlb.invalidate_ipa(0x5000, 4 * KiB, vmid=2) == 1
    assert len(tlb) == 0


def test_range_edges_are_exact() -> None:
    tlb = Iotlb(8)
    nested = tlb.tag(ctx=0, vmid=2, asid=1, stage=Stage.NESTED)
    for scan in (False, True):  # probe path (small range) and scan path (range ≥ entries)
        big = 1 << 40 if scan else 0
        tlb.insert(nested, 0x20_0000, 2 * MiB, 0, RW, ipa=0x80_0000)
        assert tlb.invalidate_range(0x40_0000, 1 + big) == 0  # first byte after the block
        assert tlb.invalidate_ipa(0xA0_0000, 1 + big, vmid=2) == 0
        assert tlb.invalidate_range(0, 0x20_0000) == 0  # ends right before it
        assert tlb.invalidate_ipa(0x80_0000 - 1, 1, vmid=2) == 0
        assert tlb.invalidate_ipa(0x9F_FFFF, 1 + big, vmid=2) == 1  # last IPA byte
        tlb.insert(nested, 0x20_0000, 2 * MiB, 0, RW, ipa=0x80_0000)
        assert tlb.invalidate_range(0x3F_FFFF, 1 + big) == 1  # last input byte


def test_unused_tags_do_not_accumulate() -> None:
    tlb = Iotlb(4)
    for asid in range(1000):
        tag = tlb.tag(ctx=0, asid=asid, stage=Stage.S1)
        tlb.insert(tag, 0, 4 * KiB, 0, RW)
    del tag
    assert len(tlb._live) <= 4
    assert len(tlb._tags) <= 4


# -- statistics ------------------------------------------------------------------------------------


def test_statistics() -> None:
    tlb = Iotlb(2)
    tag = tlb.tag(ctx=0, stage=Stage.S1)
    tlb.insert(tag, 0x0000, 4 * KiB, 0, RW)
    tlb.lookup(tag, 0x0000)
    tlb.lookup(tag, 0x0FFF)
    tlb.lookup(tag, 0x5000)
    tlb.insert(tag, 0x1000, 4 * KiB, 0, RW)
    tlb.insert(tag, 0x2000, 4 * KiB, 0, RW)  # evicts page 1 (page 0 was hit)
    tlb.invalidate_range(0, 1 << 64)
    s = tlb.stats()
    assert (s.hits, s.misses, s.inserts, s.evictions) == (2, 1, 3, 1)
    assert (s.invalidations, s.invalidated, s.entries, s.capacity) == (1, 2, 0, 2)


# -- work is bounded by the entries, not by the range ---------------------------------------------


def test_giant_ranges_are_fast() -> None:
    tlb = Iotlb(4096)
    tags = [tlb.tag(ctx=0, asid=a, stage=Stage.S1) for a in range(4)]
    for i in range(4096):
        tlb.insert(tags[i % 4], (i * 2654435761 % (1 << 36)) << 12, 4 * KiB, 0, RW)
    begin = time.perf_counter()
    assert tlb.invalidate_range(1 << 63, 1 << 80) == 0
    start, size = arm_tlbi_range(0, tg=2, scale=31, num=31)  # 2^50 bytes of 16 KiB pages
    tlb.invalidate_range(start, size)
    tlb.invalidate_range(*vtd_iotlb_range(0, 63))
    tlb.invalidate_range(*vtd_devtlb_range(0xFFFF_FFFF_FFFF_F000, 1))
    tlb.invalidate_ipa(0, 1 << 64, vmid=0)
    assert time.perf_counter() - begin < 1.0
    assert len(tlb) == 0


# -- range decoders against hand-computed examples ------------------------------------------------


@pytest.mark.parametrize(
    ("address", "tg", "scale", "num", "expected"),
    [
        (0x1234_5678, 0, 0, 0, (0x1234_5000, 0x1000)),  # TG=0: the page of one address
        (0x1234_5000, 0, 9, 5, (0x1234_5000, 0x1000)),  # TG=0: NUM/SCALE ignored
        (0x1234_5000, 1, 0, 0, (0x1234_5000, 0x1000)),  # one 4 KiB page
        (0x4020_0000, 1, 9, 0, (0x4020_0000, 2 * MiB)),  # Linux's encoding of 2 MiB: 1 << 9 pages
        (0x10_0000, 1, 2, 3, (0x10_0000, 16 * 4 * KiB)),  # (3+1) << 2 = 16 pages
        (0x1_2345_7000, 2, 0, 0, (0x1_2345_4000, 16 * KiB)),  # 16 KiB granule, aligned down
        (0x30_0000, 3, 1, 1, (0x30_0000, 4 * 64 * KiB)),  # 64 KiB granule, (1+1) << 1 = 4 pages
        (0, 2, 31, 31, (0, 32 << 31 << 14)),  # the largest: 2^50 bytes
    ],
)
def test_arm_tlbi_range(
    address: int, tg: int, scale: int, num: int, expected: tuple[int, int]
) -> None:
    assert arm_tlbi_range(address, tg=tg, scale=scale, num=num) == expected


@pytest.mark.parametrize(
    ("address", "am", "expected"),
    [
        (0x5000, 0, (0x5000, 0x1000)),
        (0x7000, 2, (0x4000, 0x4000)),  # aligned down to 4 pages
        (0x1234_5000, 9, (0x1220_0000, 2 * MiB)),
        (0xDEAD_B000, 18, (0xC000_0000, 1 * GiB)),
        (0x1234_5000, 52, (0, 1 << 64)),
    ],
)
def test_vtd_iotlb_range(address: int, am: int, expected: tuple[int, int]) -> None:
    assert vtd_iotlb_range(address, am) == expected


@pytest.mark.parametrize(
    ("address", "s", "expected"),
    [
        (0x5000, 0, (0x5000, 0x1000)),  # S=0: one page
        (0x0000, 1, (0x0000, 0x2000)),  # bit 12 clear: k=0, 2 pages
        (0x1000, 1, (0x0000, 0x4000)),  # k=1: 4 pages
        (0x7000, 1, (0x0000, 0x10000)),  # k=3: 16 pages = 64 KiB
        (0x1234_7000, 1, (0x1234_0000, 0x10000)),
        (0x4_000F_F000, 1, (0x4_0000_0000, 2 * MiB)),  # k=8: 512 pages
        (0x7FFF_FFFF_FFFF_F000, 1, (0, 1 << 64)),  # PCIe "all": bits 62:12 set
        (0xFFFF_FFFF_FFFF_F000, 1, (0, 1 << 64)),
    ],
)
def test_vtd_devtlb_range(address: int, s: int, expected: tuple[int, int]) -> None:
    assert vtd_devtlb_range(address, s) == expected


def test_decoders_reject_fields_wider_than_their_encoding() -> None:
    with pytest.raises(ValueError):
        arm_tlbi_range(0, tg=4, scale=0, num=0)
    with pytest.raises(ValueError):
        arm_tlbi_range(0, tg=1, scale=32, num=0)
    with pytest.raises(ValueError):
        vtd_iotlb_range(0, 64)
    with pytest.raises(ValueError):
        vtd_devtlb_range(0, 2)
