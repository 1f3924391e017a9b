"""The C walker against the pure-Python walker (DESIGN.md "tests": C fast path vs pure Python).

Identical means: the same ``Translation`` or ``Fault`` (field by field, field types
included), the same hardware updates written to guest memory (A/D/AF, DBM), in the same
order, for single walks and batches.  Run over every format × configuration of
``reference.format_cases`` with control variants and corrupted entries, hypothesis random
tables, garbage memory, nesting, and with the fallback forced (``use_c=False`` in process,
``VIOMMU_NO_C=1`` in a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import sysconfig
from array import array
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.model import FaultKind, MemoryPort, Perm
from devices.pagetable import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    ArmS1Config,
    ArmS1Table,
    ArmS2Config,
    Fault,
    Nested,
    Translation,
    VtdSecondStage,
    Walker,
    X86FirstStage,
    fast,
)
from devices.pagetable.builders import (
    ArmS1Builder,
    ArmS2Builder,
    TableAllocator,
    TableBuilder,
    VtdSsBuilder,
    X86Builder,
)
from devices.pagetable.fast import FastWalker, WalkResults
from devices.pagetable.reference import FormatCase, format_cases
from vmm.memory import GuestMemory, anonymous_memory

requires_c = pytest.mark.skipif(not fast.BUILT, reason="the C walker is not built")

TABLES_GPA = 0x1000_0000
TABLES_SIZE = 0x80_0000
U64 = (1 << 64) - 1
CASES = format_cases()
ACCESSES = (0, ACCESS_R, ACCESS_W, ACCESS_X, ACCESS_R | ACCESS_PRIV, ACCESS_W | ACCESS_PRIV,
            ACCESS_X | ACCESS_PRIV, ACCESS_R | ACCESS_W, 16, 15)
# Bits worth flipping in entries: types/present, permissions, A/D/AF, DBM, XN, table
# attributes, PS, reserved and address bits.
FLIPS = (1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11,
         1 << 12, 1 << 13, 1 << 20, 1 << 40, 1 << 47, 1 << 50, 1 << 51, 1 << 52, 1 << 53,
         1 << 54, 1 << 59, 1 << 60, 1 << 61, 1 << 62, 1 << 63)


# -- comparing -----------------------------------------------------------------------------

def same(py: Translation | Fault, c: Translation | Fault) -> bool:
    """Equal, and of the same types field by field (FaultKind, Reason, bool, None...)."""
    return (type(py) is type(c) and py == c
            and [type(x) for x in py] == [type(y) for y in c])


class Snapshot:
    """Guest bytes of some ``(gpa, size)`` ranges, to restore between the runs compared."""

    def __init__(self, mem: GuestMemory, *ranges: tuple[int, int]) -> None:
        self.mem = mem
        self.ranges = ranges
        self.data = self.now()

    def now(self) -> list[bytes]:
        out = []
        for gpa, size in self.ranges:
            data = self.mem.read(gpa, size)
            assert data is not None
            out.append(data)
        return out

    def restore(self) -> None:
        for (gpa, _), data in zip(self.ranges, self.data, strict=True):
            assert self.mem.write(gpa, data)


def assert_same_walks(mem: GuestMemory, snap: Snapshot, walker: Walker, ias: Iterable[int],
                      accesses: Iterable[int] = ACCESSES) -> None:
    """Python walks, C walks one by one, C batches, Python batches and mixed-access batches
    all give the same results and leave the same memory, from the same starting memory."""
    ias = list(ias)
    accesses = list(accesses)
    fw = FastWalker(walker, use_c=True)
    slow = FastWalker(walker, use_c=False)
    assert fw.uses_c and not slow.uses_c
    order = [(ia, a) for a in accesses for ia in ias]

    snap.restore()
    expected = [walker.walk(mem, ia, a) for ia, a in order]
    memory_after = snap.now()

    snap.restore()
    for (ia, a), want in zip(order, expected, strict=True):
        got = fw.walk(mem, ia, a)
        assert same(want, got), (hex(ia), a, want, got)
    assert snap.now() == memory_after

    n = len(ias)
    ia_array = array("Q", ias)
    for runner in (fw, slow):
        snap.restore()
        out = WalkResults(n)
        for k, a in enumerate(accesses):
            ok = runner.walk_batch(mem, ia_array, out, a)
            chunk = expected[k * n:(k + 1) * n]
            assert ok == sum(isinstance(r, Translation) for r in chunk)
            for i, want in enumerate(chunk):
                assert same(want, out.result(i)), (runner.uses_c, hex(ias[i]), a)
                assert fast.pack(want) == tuple(column[i] for column in out.columns)
        assert snap.now() == memory_after

    # One batch with an access per address, in the same order as ``expected``.
    mixed = array("B", [a for _, a in order])
    all_ias = array("Q", [ia for ia, _ in order])
    c_out, py_out = WalkResults(len(order)), WalkResults(len(order))
    snap.restore()
    fw.walk_batch(mem, all_ias, c_out, accesses=mixed)
    assert snap.now() == memory_after
    snap.restore()
    slow.walk_batch(mem, all_ias, py_out, accesses=mixed)
    assert snap.now() == memory_after
    assert c_out.columns == py_out.columns
    assert all(same(want, c_out.result(i)) for i, want in enumerate(expected))


# -- tables from the reference cases -------------------------------------------------------

def setup_case(case: FormatCase) -> tuple[GuestMemory, TableAllocator, TableBuilder, Walker]:
    mem = anonymous_memory([(TABLES_GPA, TABLES_SIZE)])
    alloc = TableAllocator(mem, TABLES_GPA, TABLES_SIZE)
    builder, walker = case.make(mem, alloc)
    return mem, alloc, builder, walker


def populate(case: FormatCase, builder: TableBuilder, rng: random.Random) -> list[int]:
    """Map pages of every size (random output, permissions, user bit) in slots of an eighth
    of the input space, plus the largest page at the top; the probe addresses."""
    span = builder.ia_hi - builder.ia_lo
    stride = span // 8
    probes = {builder.ia_lo, builder.ia_hi - 1, builder.ia_lo - 1, builder.ia_hi, 0, U64,
              1 << 63, 0xFFFF_8000_0000_0000, 1 << 55, rng.randrange(1 << 64)}
    slot = 0
    for size in builder.page_sizes:
        if size > stride:
            continue
        for _ in range(2):
            ia = builder.ia_lo + slot * stride
            slot += 1
            oa = rng.randrange(0, 1 << case.oas, size)
            builder.map(ia, oa, size, Perm(rng.choice(case.perm_choices)),
                        user=rng.random() < 0.7)
            probes |= {ia, ia + size - 1, ia + size // 2 + 8, ia + size, ia - 1}
    size = max(builder.page_sizes)
    top = builder.ia_hi - size
    builder.map(top, (1 << case.oas) - size, size, Perm(case.perm_choices[-1]))
    probes |= {top, top + 42}
    return sorted(ia & U64 for ia in probes if ia >= 0)


def corrupt(mem: GuestMemory, alloc: TableAllocator, rng: random.Random, count: int) -> None:
    """Flip interesting bits in entries of the table memory in use (tables and leaves)."""
    words = (alloc.next - alloc.base) // 8
    for _ in range(count):
        gpa = alloc.base + 8 * rng.randrange(words)
        value = mem.read_u64(gpa)
        assert value is not None
        mem.write_u64(gpa, value ^ rng.choice(FLIPS))


def attribute_noise(mem: GuestMemory, alloc: TableAllocator, rng: random.Random) -> None:
    """Flip the bits that tables contribute to permissions (Arm APTable/PXNTable/UXNTable,
    x86 XD, U/S and R/W, VT-d R/W/X) in half the entries in use, tables included."""
    words = (alloc.next - alloc.base) // 8
    for k in range(words):
        gpa = alloc.base + 8 * k
        value = mem.read_u64(gpa)
        assert value is not None
        if value and rng.random() < 0.5:
            mem.write_u64(gpa, value ^ rng.choice(
                (1 << 59, 1 << 60, 1 << 61, 1 << 62, 1 << 63, 1 << 1, 1 << 2, 0b110)))


def leaf_gpas(builder: TableBuilder, ias: list[int]) -> list[int]:
    """Where the leaves of these input addresses are (while the tables are sound)."""
    leaves = {builder.leaf_gpa(ia) for ia in ias if builder.ia_lo <= ia < builder.ia_hi}
    return sorted(gpa for gpa in leaves if gpa is not None)


def leaves_corrupt(mem: GuestMemory, leaves: list[int], rng: random.Random) -> None:
    """Flip bits in the leaves themselves (AF, DBM, AP, XN, PS...)."""
    for gpa in leaves:
        if rng.random() < 0.7:
            value = mem.read_u64(gpa)
            assert value is not None
            mem.write_u64(gpa, value ^ rng.choice(FLIPS) ^ rng.choice(FLIPS))


def variants(walker: Walker, rng: random.Random) -> list[Walker]:
    """The case's walker and copies over the same root with other controls."""
    out = [walker]
    flags = [rng.random() < 0.5 for _ in range(5)]
    if isinstance(walker, ArmS1Config):
        t0, t1 = walker.halves
        t = t0 if t0 is not None else t1
        assert t is not None
        other = ArmS1Table(t.root, t.granule, 64 - t.ia_bits, t.oas, had=flags[0], ha=flags[1],
                           hd=flags[2])
        halves = (other, None) if t0 is not None else (None, other)
        out.append(ArmS1Config(*halves, tbi0=flags[3], tbi1=flags[4]))
        out.append(ArmS1Config(*halves[::-1]) if t.ia_bits >= 25 else walker)
        out.append(ArmS1Config(ArmS1Table(t.root, t.granule, 64 - t.ia_bits, t.oas, ha=True,
                                          hd=True), None, tbi0=True))
    elif isinstance(walker, ArmS2Config):
        for affd, ha, hd, xnx in ((flags[0], flags[1], flags[2], flags[3]),
                                  (False, True, True, True), (True, False, False, False)):
            out.append(ArmS2Config(walker.root, walker.granule, 64 - walker.ia_bits,
                                   walker.start_level, walker.oas, affd=affd, ha=ha, hd=hd,
                                   xnx=xnx))
    elif isinstance(walker, X86FirstStage):
        for sre, wpe, smep, ad, page_1g, nxe in (
                (False, flags[0], flags[1], flags[2], flags[3], flags[4]),
                (True, True, True, False, False, False), (True, False, False, True, True, True)):
            out.append(X86FirstStage(walker.root, walker.levels, walker.haw, page_1g=page_1g,
                                     nxe=nxe, sre=sre, wpe=wpe, smep=smep, ad=ad))
    elif isinstance(walker, VtdSecondStage):
        for sp_2m, sp_1g, ssee, ad, snp, bits in (
                (flags[0], flags[1], flags[2], flags[3], flags[4], None),
                (True, True, True, True, False, 40), (False, False, False, True, True, 33)):
            out.append(VtdSecondStage(walker.root, walker.levels, walker.haw, sp_2m=sp_2m,
                                      sp_1g=sp_1g, ssee=ssee, ad=ad, snp=snp,
                                      input_bits=bits))
    return out


@requires_c
@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_format_case(case: FormatCase) -> None:
    rng = random.Random(case.name)
    mem, alloc, builder, walker = setup_case(case)
    probes = populate(case, builder, rng)
    leaves = leaf_gpas(builder, probes)
    snap = Snapshot(mem, (TABLES_GPA, alloc.next - TABLES_GPA))
    for w in variants(walker, rng):
        assert_same_walks(mem, snap, w, probes)
    attribute_noise(mem, alloc, rng)
    snap = Snapshot(mem, (TABLES_GPA, alloc.next - TABLES_GPA))
    for w in variants(walker, rng):
        assert_same_walks(mem, snap, w, probes)
    leaves_corrupt(mem, leaves, rng)
    corrupt(mem, alloc, rng, 8)
    snap = Snapshot(mem, (TABLES_GPA, alloc.next - TABLES_GPA))
    for w in variants(walker, rng):
        assert_same_walks(mem, snap, w, probes)


# -- nested --------------------------------------------------------------------------------

S2_TABLES = 0x2000_0000
S2_TABLES_SIZE = 0x40_0000


def nested_setups() -> list[tuple[str, Callable[[GuestMemory, TableAllocator], TableBuilder],
                                  Callable[[GuestMemory, TableAllocator],
                                           tuple[TableBuilder, Walker]]]]:
    """(name, stage-1 builder, stage-2 builder + config) pairs."""
    def s1_arm(granule: int) -> Callable[[GuestMemory, TableAllocator], TableBuilder]:
        return lambda mem, alloc: ArmS1Builder(mem, alloc, granule, 16)

    def s1_x86(levels: int) -> Callable[[GuestMemory, TableAllocator], TableBuilder]:
        return lambda mem, alloc: X86Builder(mem, alloc, levels)

    def s2_arm(granule: int, ha: bool) -> Callable[[GuestMemory, TableAllocator],
                                                    tuple[TableBuilder, Walker]]:
        def make(mem: GuestMemory, alloc: TableAllocator) -> tuple[TableBuilder, Walker]:
            b = ArmS2Builder(mem, alloc, granule, 24)
            return b, b.config(48, ha=ha, hd=ha)
        return make

    def s2_vtd(levels: int, ad: bool) -> Callable[[GuestMemory, TableAllocator],
                                                   tuple[TableBuilder, Walker]]:
        def make(mem: GuestMemory, alloc: TableAllocator) -> tuple[TableBuilder, Walker]:
            b = VtdSsBuilder(mem, alloc, levels)
            return b, b.config(48, ad=ad)
        return make

    return [
        ("arm4k-arm4k", s1_arm(4096), s2_arm(4096, False)),
        ("arm16k-arm64k-ha", s1_arm(16384), s2_arm(65536, True)),
        ("arm64k-arm4k-ha", s1_arm(65536), s2_arm(4096, True)),
        ("x86-4l-vtd-4l", s1_x86(4), s2_vtd(4, False)),
        ("x86-5l-vtd-3l-ad", s1_x86(5), s2_vtd(3, True)),
        ("arm4k-vtd-4l", s1_arm(4096), s2_vtd(4, True)),
        ("x86-4l-arm4k", s1_x86(4), s2_arm(4096, True)),
    ]


NESTED = nested_setups()


@requires_c
@pytest.mark.parametrize(("name", "make_s1", "make_s2"), NESTED, ids=[n[0] for n in NESTED])
def test_nested(name: str, make_s1: Callable[[GuestMemory, TableAllocator], TableBuilder],
                make_s2: Callable[[GuestMemory, TableAllocator], tuple[TableBuilder, Walker]],
                ) -> None:
    rng = random.Random(name)
    mem = anonymous_memory([(TABLES_GPA, TABLES_SIZE), (S2_TABLES, S2_TABLES_SIZE)])
    s1_alloc = TableAllocator(mem, TABLES_GPA, TABLES_SIZE)
    s1b = make_s1(mem, s1_alloc)
    s2b, s2 = make_s2(mem, TableAllocator(mem, S2_TABLES, S2_TABLES_SIZE))
    page = s1b.page_sizes[0]
    s2_page = s2b.page_sizes[0]
    step = max(page, s2_page)
    outputs = [0x3000_0000 + k * step for k in range(8)]
    ias = []
    for k, ipa in enumerate(outputs):
        ia = 0x100_0000 * (k + 1)
        s1b.map(ia, ipa, page, Perm(rng.choice((1, 3, 5, 7))), user=k % 2 == 0)
        ias += [ia, ia + 0x18, ia + page]
        if k % 4 != 3:
            s2b.map(ipa, 0x4000_0000 + k * 0x100_0000, s2_page, Perm(rng.choice((1, 3, 5, 7))))
    # Stage 2 maps the stage-1 tables at IPA = GPA, page by page: the page of the first
    # leaf read-only (hardware updates of that leaf are refused), in half the setups one
    # page in three read-only as well, and not the page of the last table made (a stage-2
    # fault on a stage-1 table walk).
    leaf = s1b.leaf_gpa(ias[0])
    assert leaf is not None
    read_only = {leaf & ~(s2_page - 1)}
    pattern = rng.randrange(3) if rng.random() < 0.5 else -1
    missing = (s1_alloc.next - 1) & ~(s2_page - 1)
    for k, ipa in enumerate(range(TABLES_GPA, s1_alloc.next, s2_page)):
        if ipa != missing or ipa in read_only:
            perm = Perm.R if ipa in read_only or k % 3 == pattern else Perm.R | Perm.W
            s2b.map(ipa, ipa, s2_page, perm | Perm.X)
    # Arm: clear AF in the first leaf, so that HA updates it.
    if isinstance(s1b, ArmS1Builder):
        value = mem.read_u64(leaf)
        assert value is not None
        mem.write_u64(leaf, value & ~(1 << 10))
    ias += [0, U64, 1 << 47, 0x1000_0000_0000]
    s1: Walker
    if isinstance(s1b, ArmS1Builder):
        s1 = ArmS1Config(s1b.table(48, ha=True, hd=True), None)
    else:
        assert isinstance(s1b, X86Builder)
        s1 = s1b.config(48)
    assert isinstance(s1, ArmS1Config | X86FirstStage)
    nested = Nested(s1, s2)
    snap = Snapshot(mem, (TABLES_GPA, TABLES_SIZE), (S2_TABLES, S2_TABLES_SIZE))
    assert_same_walks(mem, snap, nested, ias)
    corrupt(mem, s1_alloc, rng, 16)
    snap = Snapshot(mem, (TABLES_GPA, TABLES_SIZE), (S2_TABLES, S2_TABLES_SIZE))
    assert_same_walks(mem, snap, nested, ias)


# -- hypothesis: random tables through the builders ------------------------------------------

@st.composite
def workloads(draw: st.DrawFn) -> tuple[FormatCase, list[tuple[int, int, int, int, bool]],
                                        int]:
    case = draw(st.sampled_from(CASES))
    op = st.tuples(st.integers(0, 2), st.integers(0, 15), st.integers(0, (1 << 40) - 1),
                   st.sampled_from(case.perm_choices), st.booleans())
    return case, draw(st.lists(op, max_size=12)), draw(st.integers(0, 1 << 32))


@requires_c
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(work=workloads(), extra=st.lists(st.integers(0, U64), max_size=6))
def test_random_tables(work: tuple[FormatCase, list[tuple[int, int, int, int, bool]], int],
                       extra: list[int]) -> None:
    case, ops, seed = work
    rng = random.Random(seed)
    mem, alloc, builder, walker = setup_case(case)
    span = builder.ia_hi - builder.ia_lo
    ias = set(extra)
    for size_index, slot, oa_seed, perm, user in ops:
        sizes = builder.page_sizes
        size = sizes[size_index % len(sizes)]
        ia = builder.ia_lo + (slot * size * 5) % span
        oa = (oa_seed * size) % (1 << case.oas)
        with contextlib.suppress(ValueError):  # MapConflict, or outside the input space
            builder.map(ia, oa, size, Perm(perm), user=user)
        ias |= {ia, ia + size - 8, ia + size}
    snap = Snapshot(mem, (TABLES_GPA, alloc.next - TABLES_GPA))
    w = rng.choice(variants(walker, rng))
    probes = sorted(ia & U64 for ia in ias)
    assert_same_walks(mem, snap, w, probes, rng.sample(ACCESSES, 3))
    corrupt(mem, alloc, rng, 6)
    snap = Snapshot(mem, (TABLES_GPA, alloc.next - TABLES_GPA))
    assert_same_walks(mem, snap, w, probes, rng.sample(ACCESSES, 3))


# -- hypothesis: garbage memory ------------------------------------------------------------

RAM = 0x40_0000
RAM_SIZE = 0x4_0000
NEXT = RAM + RAM_SIZE        # an adjacent region (entries straddle nothing: 8-aligned)
FAR = 0x8000_0000
LAYOUT = [(RAM, RAM_SIZE), (NEXT, 0x1_0000), (FAR, 0x1000)]


def garbage_walkers(root: int) -> list[Walker]:
    """A spread of configurations, as tests/test_pagetable_robust.py, rooted in garbage."""
    s2 = ArmS2Config(root, 4096, 24, 1, 48, ha=True, hd=True)
    s2_64k = ArmS2Config(root, 65536, 22, 2, 48, affd=True)
    vtd = VtdSecondStage(root, 4, 48, ad=True)
    return [
        ArmS1Config(ArmS1Table(root, 4096, 16, 48), ArmS1Table(root, 4096, 25, 48),
                    tbi1=True),
        ArmS1Config(ArmS1Table(root, 16384, 16, 40, ha=True, hd=True)),
        ArmS1Config(ArmS1Table(root, 65536, 20, 48, had=True)),
        s2, s2_64k,
        ArmS2Config(root, 4096, 16, 0, 48, ha=True, hd=True, xnx=True),
        ArmS2Config(root, 16384, 28, 2, 36),
        X86FirstStage(root, 4, 46), X86FirstStage(root, 5, 52, wpe=True, smep=True),
        X86FirstStage(root, 4, 39, nxe=False, sre=False, ad=False, page_1g=False),
        VtdSecondStage(root, 3, 48), vtd, VtdSecondStage(root, 5, 39, ssee=True, snp=False),
        VtdSecondStage(root, 4, 52, sp_1g=False, sp_2m=False, input_bits=36),
        Nested(ArmS1Config(ArmS1Table(root, 4096, 16, 48, ha=True, hd=True)), s2),
        Nested(ArmS1Config(ArmS1Table(root, 65536, 22, 48)), s2_64k),
        Nested(X86FirstStage(root, 4, 48), vtd),
        Nested(X86FirstStage(root, 5, 52), s2),
    ]


entries = st.one_of(
    st.integers(0, U64),
    # Pointers into RAM, the adjacent region, the far page or just beyond them, with
    # random low bits and attributes.
    st.tuples(st.sampled_from([RAM, RAM, NEXT - 0x1000, NEXT + 0x1_0000 - 0x1000, FAR,
                               FAR + 0x1000, 0]),
              st.integers(0, RAM_SIZE - 1), st.integers(0, 0xFFF),
              st.sampled_from([0, 1 << 63, 1 << 62, 1 << 61, 1 << 54, 1 << 51, 1 << 10,
                               0xFFF0 << 48])).map(
        lambda t: ((t[0] + (t[1] if t[0] == RAM else 0)) & ~0xFFF) | t[2] | t[3]),
)


@requires_c
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=st.lists(entries, min_size=1, max_size=64),
       ias=st.lists(st.integers(0, U64) | st.integers(0, 1 << 40), max_size=6),
       accesses=st.lists(st.integers(0, 15), min_size=1, max_size=3),
       root=st.sampled_from([RAM, RAM + 0x1_0000, NEXT, FAR]))
def test_garbage_memory(contents: list[int], ias: list[int], accesses: list[int],
                        root: int) -> None:
    mem = anonymous_memory(LAYOUT)
    blob = struct.pack(f"<{len(contents)}Q", *contents)
    for gpa, size in LAYOUT:
        mem.write(gpa, (blob * (size // len(blob) + 1))[:size])
    snap = Snapshot(mem, *LAYOUT)
    for walker in garbage_walkers(root):
        assert_same_walks(mem, snap, walker, ias + [0, root, 0xFFFF_FFFF_FFFF_F000],
                          accesses)


@requires_c
def test_region_bounds() -> None:
    """Entries at the first and last bytes of regions, just past their ends, and across
    two adjacent regions: C and Python agree on every read (and never read past a
    mapping)."""
    a, far = 0x10_0000, 0x80_0000
    mem = anonymous_memory([(a, 0x2000), (a + 0x2000, 0x1000), (far, 0x1000)])
    rw = 0b11
    targets = [far + 0x1000, a + 0x3000, a + 0x1000, a + 0x2000, far, a - 0x1000,
               far - 0x1000, 0]
    for k, target in enumerate(targets):
        assert mem.write_u64(a + 8 * k, target | rw)  # the root: one entry per target
        for table in (a + 0x1000, a + 0x2000, far):  # every entry of the other tables
            if table + 8 * (511 - k) < a + 0x3000 or table == far:
                assert mem.write_u64(table + 8 * (511 - k), target | rw)
    walker = VtdSecondStage(a, 4, 48, ad=True)
    ias = [(k << 39) | (j << 30) | (i << 21) for k in range(len(targets))
           for j in (0, 511 - k, 511) for i in (0, 511 - k, 511)]
    snap = Snapshot(mem, (a, 0x3000), (far, 0x1000))
    assert_same_walks(mem, snap, walker, ias, (0, ACCESS_R, ACCESS_W))


# -- memory tables and the fallback ----------------------------------------------------------

def small_arm_setup() -> tuple[GuestMemory, Walker, list[int]]:
    mem = anonymous_memory([(TABLES_GPA, 0x10_0000)])
    b = ArmS1Builder(mem, TableAllocator(mem, TABLES_GPA, 0x10_0000), 4096, 16)
    ias = []
    for k in range(16):
        b.map(k * 0x1000, 0x5000_0000 + k * 0x3000, 0x1000, Perm.R | Perm.W)
        ias.append(k * 0x1000 + 0x10)
    return mem, ArmS1Config(b.table(48, ha=True), None), ias + [0x10_0000, 1 << 50]


def workload_results(use_c: bool | None) -> list[list[int]]:
    """The batch columns of a fixed workload (walks and a second batch after updates)."""
    mem, walker, ias = small_arm_setup()
    fw = FastWalker(walker, use_c=use_c)
    out = WalkResults(len(ias))
    fw.walk_batch(mem, array("Q", ias), out, ACCESS_W)
    singles = [fast.pack(fw.walk(mem, ia, ACCESS_R | ACCESS_PRIV)) for ia in ias]
    return [list(column) for column in out.columns] + [list(s) for s in singles]


@requires_c
def test_fallback_forced_by_environment() -> None:
    """VIOMMU_NO_C=1: HAVE_C is False, walks are Python, and the results are the same."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import test_cwalk as t; from devices.pagetable import fast;"
        "fw = fast.FastWalker(t.small_arm_setup()[1]);"
        "print(json.dumps([fast.HAVE_C, fw.uses_c, t.workload_results(None)]))"
    )
    env = dict(os.environ, VIOMMU_NO_C="1")
    done = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)],
                          env=env, capture_output=True, text=True, check=True, timeout=60)
    have_c, uses_c, results = json.loads(done.stdout)
    assert (have_c, uses_c) == (False, False)
    assert results == workload_results(True)


def test_fallback_in_process() -> None:
    """use_c=False is the Python walker, whether or not C is built."""
    assert workload_results(False) == workload_results(None)
    mem, walker, ias = small_arm_setup()
    assert not FastWalker(walker, use_c=False).uses_c


@requires_c
def test_non_region_memory_goes_through_python() -> None:
    """A memory port without regions (a recorder, a counter) sees every read: Python."""

    class Counting:
        def __init__(self, mem: GuestMemory) -> None:
            self.mem = mem
            self.reads = 0

        def read(self, gpa: int, length: int) -> bytes | None:
            return self.mem.read(gpa, length)

        def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
            return self.mem.write(gpa, data)

        def read_u32(self, gpa: int) -> int | None:
            return self.mem.read_u32(gpa)

        def read_u64(self, gpa: int) -> int | None:
            self.reads += 1
            return self.mem.read_u64(gpa)

        def write_u32(self, gpa: int, value: int) -> bool:
            return self.mem.write_u32(gpa, value)

        def write_u64(self, gpa: int, value: int) -> bool:
            return self.mem.write_u64(gpa, value)

    mem, walker, ias = small_arm_setup()
    port = Counting(mem)
    memory: MemoryPort = port
    fw = FastWalker(walker, use_c=True)
    assert same(walker.walk(mem, ias[0], ACCESS_R), fw.walk(memory, ias[0], ACCESS_R))
    assert port.reads == 4
    out = WalkResults(2)
    fw.walk_batch(memory, array("Q", ias[:2]), out, ACCESS_R)
    assert port.reads == 12


@requires_c
def test_memory_table_changes_are_seen() -> None:
    """After regions are removed or replaced, C reads the new table (and GuestMemory can
    close the old mappings: no buffer export is held)."""
    mem, walker, ias = small_arm_setup()
    fw = FastWalker(walker, use_c=True)
    out = WalkResults(len(ias))
    assert fw.walk_batch(mem, array("Q", ias), out, ACCESS_R) == 16
    assert isinstance(fw.walk(mem, ias[0], ACCESS_R), Translation)
    region = mem.regions[0]
    data = mem.read(region.gpa, region.size)
    assert data is not None
    mem.remove(region.gpa, region.size)  # closes the mapping
    r = fw.walk(mem, ias[0], ACCESS_R)
    assert same(walker.walk(mem, ias[0], ACCESS_R), r)
    assert isinstance(r, Fault) and r.kind == FaultKind.EXTERNAL_ABORT
    assert fw.walk_batch(mem, array("Q", ias), out, ACCESS_R) == 0
    fresh = anonymous_memory([(TABLES_GPA, 0x10_0000)])
    assert fresh.write(TABLES_GPA, data)
    for port in (fresh, mem, fresh):
        for ia in ias:
            assert same(walker.walk(port, ia, ACCESS_R), fw.walk(port, ia, ACCESS_R))


@requires_c
def test_out_of_range_inputs_fall_back() -> None:
    mem, walker, ias = small_arm_setup()
    fw = FastWalker(walker, use_c=True)
    for ia, access in ((1 << 64, ACCESS_R), (-1, ACCESS_R), (0x10, 1 << 40), (0x10, -1)):
        assert same(walker.walk(mem, ia, access), fw.walk(mem, ia, access))


def test_batch_misuse_is_an_error() -> None:
    mem, walker, ias = small_arm_setup()
    fw = FastWalker(walker)
    with pytest.raises(ValueError):
        fw.walk_batch(mem, array("Q", ias), WalkResults(2))
    with pytest.raises(ValueError):
        fw.walk_batch(mem, array("Q", ias), WalkResults(len(ias)), accesses=b"\x01")
    with pytest.raises(TypeError):
        fw.walk_batch(mem, bytes(12), WalkResults(len(ias)))
    with pytest.raises(ValueError):
        WalkResults(-1)


def test_results_round_trip() -> None:
    mem, walker, ias = small_arm_setup()
    for ia in ias:
        for access in ACCESSES:
            r = walker.walk(mem, ia, access)
            assert same(r, fast.unpack(*fast.pack(r)))


def test_extension_is_built_where_it_can_be() -> None:
    """With a compiler and Python headers the install builds the C walker: a missing
    extension there is a broken build, not a reason to skip the differential tests."""
    headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    compiler = shutil.which((os.environ.get("CC") or "cc").split()[0])
    if not (headers and compiler) or os.environ.get("VIOMMU_NO_C_BUILD"):
        pytest.skip("no compiler or Python headers here")
    assert fast.BUILT, "devices.pagetable._cwalk missing: run `pip install -e .` to build it"


@pytest.mark.parametrize("use_c", [pytest.param(True, marks=requires_c), False])
@pytest.mark.parametrize("fields", [("oa", "info"), ("info",), ("info", "pte_addr", "ipa")])
def test_batch_keeps_only_the_columns_asked_for(use_c: bool, fields: tuple[str, ...]) -> None:
    """A WalkResults with fewer columns gets the same values in those, C and Python alike,
    and its other columns stay empty."""
    mem, walker, ias = small_arm_setup()
    fw = FastWalker(walker, use_c=use_c)
    whole, part = WalkResults(len(ias)), WalkResults(len(ias), fields)
    assert fw.walk_batch(mem, array("Q", ias), whole, ACCESS_R) \
        == fw.walk_batch(mem, array("Q", ias), part, ACCESS_R) == 16
    for name, mine, theirs in zip(fast.FIELDS, part.columns, whole.columns, strict=True):
        assert list(mine) == (list(theirs) if name in fields else [])


def test_batch_columns_must_include_info() -> None:
    with pytest.raises(ValueError):
        WalkResults(4, ("oa",))
    with pytest.raises(ValueError):
        WalkResults(4, ("info", "perm"))


@requires_c
def test_batch_group_of_both_halves_after_a_full_group() -> None:
    """A lockstep group whose walks use both TTB halves is finished walk by walk; nothing
    of the group before it (its leaves, which of them were read) may leak into it."""
    mem = anonymous_memory([(TABLES_GPA, 0x10_0000)])
    b = ArmS1Builder(mem, TableAllocator(mem, TABLES_GPA, 0x10_0000), 4096, 16)
    lower = [k << 21 for k in range(64)]  # 2 MiB blocks: block descriptors at level 2
    for ia in lower:
        b.map(ia, 0x4000_0000 + ia, 1 << 21, Perm.R)
    # A 39-bit upper half, all zero (every walk faults), starting at level 1 where a
    # block descriptor would be a leaf.
    empty_upper = ArmS1Table(TABLES_GPA + 0xF_F000, 4096, 25, 48)
    walker = ArmS1Config(b.table(48), empty_upper)
    fw = FastWalker(walker, use_c=True)
    upper = [(1 << 64) - 0x1000 * (k + 1) for k in range(64)]
    out = WalkResults(64)
    assert fw.walk_batch(mem, array("Q", lower), out, ACCESS_R) == 64
    mixed = [lower[0]] + upper[:63]
    assert fw.walk_batch(mem, array("Q", mixed), out, ACCESS_R) == 1
    for i, ia in enumerate(mixed):
        assert same(walker.walk(mem, ia, ACCESS_R), out.result(i)), hex(ia)
