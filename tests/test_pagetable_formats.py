"""Every format × configuration against the brute-force reference (reference.py): the Linux
io-pgtable selftest shapes (smmuv3.md §9.3) and random tables from hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.model import FaultKind, Perm
from devices.pagetable import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    Fault,
    Reason,
    Translation,
    Walker,
)
from devices.pagetable.builders import MapConflict, TableAllocator, TableBuilder
from devices.pagetable.reference import FormatCase, ReferenceMap, format_cases
from vmm.memory import GuestMemory, anonymous_memory

TABLES_GPA = 0x1000_0000  # below every output size, so table addresses are legal
TABLES_SIZE = 0x400_0000
GIB = 1 << 30
CASES = format_cases()
FAMILIES = sorted({c.family for c in CASES})
ACCESSES = [a | p for a in (ACCESS_R, ACCESS_W, ACCESS_X) for p in (0, ACCESS_PRIV)]


def setup(case: FormatCase) -> tuple[GuestMemory, TableBuilder, Walker]:
    mem = anonymous_memory([(TABLES_GPA, TABLES_SIZE)])
    builder, walker = case.make(mem, TableAllocator(mem, TABLES_GPA, TABLES_SIZE))
    return mem, builder, walker


def check(case: FormatCase, mem: GuestMemory, walker: Walker, ref: ReferenceMap,
          ia: int) -> None:
    """The walker and the reference agree about ``ia``, for a lookup and every access."""
    m = ref.lookup(ia)
    t = walker.walk(mem, ia, 0)
    if m is None:
        assert isinstance(t, Fault), (hex(ia), t)
        assert (t.kind, t.reason) == (FaultKind.TRANSLATION, Reason.NOT_PRESENT), t
        return
    assert isinstance(t, Translation), (hex(ia), t)
    assert (t.oa, t.size) == (m.oa + ia - m.ia, m.size), (hex(ia), t, m)
    assert (t.priv_perm, t.user_perm) == (m.priv_perm, m.user_perm), (hex(ia), t, m)
    for access in ACCESSES:
        granted = m.priv_perm if access & ACCESS_PRIV else m.user_perm
        r = walker.walk(mem, ia, access)
        if access & 7 & ~granted:
            assert isinstance(r, Fault) and r.kind == FaultKind.PERMISSION, (hex(ia), access, r)
        else:
            assert isinstance(r, Translation) and r.oa == t.oa, (hex(ia), access, r)


def probes(builder: TableBuilder, ref: ReferenceMap) -> set[int]:
    out = set()
    for m in ref.mappings.values():
        out |= {m.ia, m.ia + m.size - 1, m.ia + m.size // 2 + 42, m.ia - 1, m.ia + m.size}
    return {ia for ia in out if builder.ia_lo <= ia < builder.ia_hi}


@pytest.mark.parametrize("case", [c for c in CASES if c.ia_bits >= 32], ids=str)
def test_io_pgtable_shapes(case: FormatCase) -> None:
    mem, builder, walker = setup(case)
    ref = ReferenceMap()
    base = builder.ia_lo
    for off in (42, GIB + 42, 2 * GIB + 42):
        check(case, mem, walker, ref, base + off)
    # Identity-style maps of every page size, one per GiB; overlaps refused.
    iova = base
    for size in builder.page_sizes:
        oa = iova - base
        builder.map(iova, oa, size, Perm.R | Perm.W)
        assert ref.map(iova, size, oa, case.perms(int(Perm.R | Perm.W), True))
        with pytest.raises(MapConflict):
            builder.map(iova, oa + size, size, Perm.R)
        check(case, mem, walker, ref, iova + 42)
        iova += GIB
    # Unmap returns the size and the lookup fails; remap write-only.
    iova = base
    for size in builder.page_sizes:
        oa = iova - base
        assert builder.unmap(iova, size) == size == ref.unmap(iova, size)
        check(case, mem, walker, ref, iova + 42)
        builder.map(iova, oa, size, Perm.W)
        ref.map(iova, size, oa, case.perms(int(Perm.W), True))
        check(case, mem, walker, ref, iova + 42)
        iova += GIB
    # The largest page at the very top of the input space (the concatenated-PGD corner),
    # output at the very top of the output space.
    size = max(builder.page_sizes)
    top = builder.ia_hi - size
    oa = (1 << case.oas) - size
    builder.map(top, oa, size, Perm.R)
    ref.map(top, size, oa, case.perms(int(Perm.R), True))
    for ia in probes(builder, ref):
        check(case, mem, walker, ref, ia)
    assert builder.unmap(top, size) == size == ref.unmap(top, size)
    check(case, mem, walker, ref, top + 42)


@st.composite
def workloads(draw: st.DrawFn, family: str) -> tuple[FormatCase, list[tuple[object, ...]]]:
    case = draw(st.sampled_from([c for c in CASES if c.family == family]))
    # Page sizes that fit eight times in the input space, anchors aligned to the largest.
    span = 1 << case.ia_bits
    shifts = {4096: (12, 21, 30), 16384: (14, 25), 65536: (16, 29)}[case.granule]
    sizes = [1 << s for s in shifts if (1 << s) * 8 <= span]
    big = max(sizes)
    anchors = sorted({0, big * 3, span // 2, span - 8 * big})
    op = st.tuples(
        st.sampled_from(["map", "map", "map", "unmap"]), st.sampled_from(sizes),
        st.sampled_from(anchors), st.integers(0, 7), st.sampled_from(case.perm_choices),
        st.booleans(), st.integers(0, (1 << 40) - 1), st.integers(1, 3),
    )
    return case, draw(st.lists(op, max_size=14))


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_tables(family: str, data: st.DataObject) -> None:
    case, ops = data.draw(workloads(family))
    mem, builder, walker = setup(case)
    ref = ReferenceMap()
    for kind, size, anchor, slot, perm, user, oa_seed, count in ops:
        assert isinstance(size, int) and isinstance(anchor, int) and isinstance(slot, int)
        assert isinstance(perm, int) and isinstance(oa_seed, int) and isinstance(count, int)
        # The strategy knows granules, not start levels: a tree that starts low lacks blocks.
        size = max(s for s in builder.page_sizes if s <= size)
        ia = builder.ia_lo + (anchor + slot * size) % (1 << case.ia_bits)
        if kind == "map":
            oa = (oa_seed * size) % (1 << case.oas)
            expect = ref.map(ia, size, oa, case.perms(perm, bool(user)))
            try:
                builder.map(ia, oa, size, Perm(perm), user=bool(user))
                assert expect, f"builder mapped {ia:#x} over an existing mapping"
            except MapConflict:
                assert not expect, f"builder refused {ia:#x}"
        else:
            assert builder.unmap(ia, size * count) == ref.unmap(ia, size * count)
    extra = data.draw(st.lists(st.integers(builder.ia_lo, builder.ia_hi - 1), max_size=8))
    for ia in probes(builder, ref) | set(extra):
        check(case, mem, walker, ref, ia)
