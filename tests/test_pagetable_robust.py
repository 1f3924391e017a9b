"""No input makes a walker raise, and every walk is bounded: random garbage tables (entries
biased to point back into the table region, so walks go deep and loop), self-referencing
tables, nesting of garbage through garbage (DESIGN.md invariant 1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.model import FaultKind, MemoryPort
from devices.pagetable import (
    ArmS1Config,
    ArmS1Table,
    ArmS2Config,
    Fault,
    Nested,
    Translation,
    VtdSecondStage,
    Walker,
    X86FirstStage,
)
from vmm.memory import GuestMemory, anonymous_memory

RAM = 0x40_0000
RAM_SIZE = 0x4_0000  # 256 KiB: four 64 KiB tables, or 64 of 4 KiB


class CountingMemory:
    """A memory port that counts table reads and writes."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.reads = 0
        self.writes = 0

    def read(self, gpa: int, length: int) -> bytes | None:
        self.reads += 1
        return self.mem.read(gpa, length)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        self.writes += 1
        return self.mem.write(gpa, data)

    def read_u32(self, gpa: int) -> int | None:
        self.reads += 1
        return self.mem.read_u32(gpa)

    def read_u64(self, gpa: int) -> int | None:
        self.reads += 1
        return self.mem.read_u64(gpa)

    def write_u32(self, gpa: int, value: int) -> bool:
        self.writes += 1
        return self.mem.write_u32(gpa, value)

    def write_u64(self, gpa: int, value: int) -> bool:
        self.writes += 1
        return self.mem.write_u64(gpa, value)


def walkers(root: int) -> list[tuple[Walker, int]]:
    """(walker, most table reads a walk may make) for a spread of configurations."""
    s2 = ArmS2Config(root, 4096, 24, 1, 48)
    s2_64k = ArmS2Config(root, 65536, 22, 2, 48)
    vtd = VtdSecondStage(root, 4, 48, ad=True)
    out: list[tuple[Walker, int]] = [
        (ArmS1Config(ArmS1Table(root, 4096, 16, 48), ArmS1Table(root, 4096, 25, 48),
                     tbi1=True), 4),
        (ArmS1Config(ArmS1Table(root, 16384, 16, 40, ha=True, hd=True)), 4),
        (ArmS1Config(ArmS1Table(root, 65536, 20, 48)), 3),
        (s2, 3), (s2_64k, 2),
        (ArmS2Config(root, 4096, 16, 0, 48, ha=True, hd=True, xnx=True), 4),
        (X86FirstStage(root, 4, 46), 4), (X86FirstStage(root, 5, 52, wpe=True), 5),
        (VtdSecondStage(root, 3, 48), 3), (vtd, 4), (VtdSecondStage(root, 5, 39, ssee=True), 5),
        (Nested(ArmS1Config(ArmS1Table(root, 4096, 16, 48, ha=True)), s2), 4 * 4 + 3),
        (Nested(ArmS1Config(ArmS1Table(root, 65536, 22, 48)), s2_64k), 2 * 3 + 2),
        (Nested(X86FirstStage(root, 4, 48), vtd), 4 * 5 + 4),
    ]
    return out


entries = st.one_of(
    st.integers(0, (1 << 64) - 1),
    # Pointers back into the table region with random low bits and attributes.
    st.tuples(st.integers(0, RAM_SIZE - 1), st.integers(0, 0xFFF), st.sampled_from(
        [0, 1 << 63, 1 << 62, 1 << 61, 1 << 54, 1 << 51, 0xFFF0 << 48])).map(
        lambda t: ((RAM + t[0]) & ~0xFFF) | t[1] | t[2]),
)


@settings(max_examples=60, deadline=None)
@given(contents=st.lists(entries, min_size=1, max_size=64),
       ias=st.lists(st.integers(0, (1 << 64) - 1) | st.integers(0, 1 << 40), max_size=6),
       accesses=st.lists(st.integers(0, 15), min_size=1, max_size=3))
def test_garbage_never_raises(contents: list[int], ias: list[int], accesses: list[int]) -> None:
    mem = anonymous_memory([(RAM, RAM_SIZE)])
    # Tile the random entries over the whole region.
    blob = struct.pack(f"<{len(contents)}Q", *contents)
    mem.write(RAM, (blob * (RAM_SIZE // len(blob) + 1))[:RAM_SIZE])
    port = CountingMemory(mem)
    for walker, max_reads in walkers(RAM):
        for ia in ias + [0, RAM, 0xFFFF_FFFF_FFFF_F000]:
            for access in accesses:
                port.reads = 0
                r = walker.walk(port, ia, access)
                assert port.reads <= max_reads
                if isinstance(r, Translation):
                    assert r.size & (r.size - 1) == 0 and r.size >= 0x1000
                    assert r.oa & (r.size - 1) == ia & (r.size - 1)
                    assert r.allows(access)
                else:
                    assert isinstance(r, Fault) and r.kind in FaultKind and r.stage in (1, 2)


def self_referencing(mem: GuestMemory, root: int, entry: int, size: int = 0x1000) -> None:
    mem.write(root, struct.pack("<Q", root | entry) * (size // 8))


@pytest.mark.parametrize(("make", "entry", "levels"), [
    (lambda r: ArmS1Config(ArmS1Table(r)), 0b11 | 1 << 10 | 1 << 6, 4),
    (lambda r: ArmS2Config(r, 4096, 16, 0), 0b11 | 1 << 10 | 0b11 << 6, 4),
    (lambda r: X86FirstStage(r, 5), 0b111, 5),
    (lambda r: VtdSecondStage(r, 5), 0b11, 5),
])
def test_cyclic_tables_are_bounded(make: object, entry: int, levels: int) -> None:
    mem = anonymous_memory([(RAM, RAM_SIZE)])
    self_referencing(mem, RAM, entry)
    port = CountingMemory(mem)
    assert callable(make)
    walker = make(RAM)
    r = walker.walk(port, 0x1234, 1)
    # Every level reuses the root; the last level reads it as a page: the root itself.
    assert isinstance(r, Translation) and r.oa == RAM + 0x234 and r.size == 0x1000
    assert port.reads == levels


def test_cyclic_nested_is_bounded() -> None:
    mem = anonymous_memory([(RAM, RAM_SIZE)])
    self_referencing(mem, RAM, 0b11 | 1 << 10 | 0b11 << 6)
    port = CountingMemory(mem)
    nested = Nested(ArmS1Config(ArmS1Table(RAM, ha=True)), ArmS2Config(RAM, 4096, 16, 0))
    r = nested.walk(port, 0x1234, 1)
    assert isinstance(r, Translation) and r.oa == RAM + 0x234
    assert port.reads == 4 * 4 + 4 + 4  # each stage-1 read costs a stage-2 walk


def test_walk_abort_on_every_level() -> None:
    """Tables that run off the end of RAM give an external abort, never an exception."""
    mem = anonymous_memory([(RAM, 0x1000)])
    mem.write_u64(RAM, 0xFFFF_F000 | 0b11)
    port: MemoryPort = mem
    r = ArmS1Config(ArmS1Table(RAM)).walk(port, 0, 1)
    assert isinstance(r, Fault) and r.kind == FaultKind.EXTERNAL_ABORT and r.level == 1


@settings(max_examples=60, deadline=None)
@given(contents=st.lists(entries, min_size=1, max_size=64),
       ias=st.lists(st.integers(0, (1 << 64) - 1) | st.integers(0, 1 << 40), max_size=6),
       accesses=st.lists(st.integers(0, 15), min_size=1, max_size=3))
def test_direct_walk_is_the_loop(contents: list[int], ias: list[int],
                                 accesses: list[int]) -> None:
    """On plain guest memory the walker reads words straight from the mapping through the
    unrolled descent (walker.compile_descent); through any other port it runs the loop.
    Both give the same results and leave the same memory, whatever the tables hold."""
    blob = struct.pack(f"<{len(contents)}Q", *contents)
    tiles = (blob * (RAM_SIZE // len(blob) + 1))[:RAM_SIZE]
    direct, looped = anonymous_memory([(RAM, RAM_SIZE)]), anonymous_memory([(RAM, RAM_SIZE)])
    direct.write(RAM, tiles)
    looped.write(RAM, tiles)
    port = CountingMemory(looped)
    for walker, _ in walkers(RAM):
        for ia in ias + [0, RAM, 0xFFFF_FFFF_FFFF_F000]:
            for access in accesses:
                assert walker.walk(direct, ia, access) == walker.walk(port, ia, access)
    assert direct.read(RAM, RAM_SIZE) == looped.read(RAM, RAM_SIZE)


def test_direct_walk_follows_memory_table_changes() -> None:
    """The direct walk remembers the root's region per memory and table generation: another
    memory, or the same memory after its table changed, is read afresh."""
    from devices.model import Perm
    from devices.pagetable.builders import ArmS1Builder, TableAllocator
    from vmm.memory import RegionSpec, make_memfd

    first = anonymous_memory([(RAM, RAM_SIZE)])
    builder = ArmS1Builder(first, TableAllocator(first, RAM, RAM_SIZE), 4096, 16)
    builder.map(0x1000, 0x7000_0000, 0x1000, Perm.R)
    walker = ArmS1Config(builder.table(48))
    image = first.read(RAM, RAM_SIZE)
    assert image is not None
    r = walker.walk(first, 0x1234, 1)
    assert isinstance(r, Translation) and r.oa == 0x7000_0234
    # Another memory with the same tables but the page mapped elsewhere.
    second = anonymous_memory([(RAM, RAM_SIZE)])
    second.write(RAM, image)
    builder.unmap(0x1000, 0x1000)
    assert walker.walk(first, 0x1234, 1) != r
    builder.map(0x1000, 0x6000_0000, 0x1000, Perm.R)
    assert walker.walk(second, 0x1234, 1) == r
    moved = walker.walk(first, 0x1234, 1)
    assert isinstance(moved, Translation) and moved.oa == 0x6000_0234
    # The first memory loses its region: the walk cannot read the tables.
    first.remove(RAM, RAM_SIZE)
    gone = walker.walk(first, 0x1234, 1)
    assert isinstance(gone, Fault) and gone.kind == FaultKind.EXTERNAL_ABORT
    # ... and gets a new one holding the original tables.
    fd = make_memfd(RAM_SIZE)
    try:
        first.add(RegionSpec(RAM, RAM_SIZE, 0), fd)
    finally:
        import os
        os.close(fd)
    first.write(RAM, image)
    assert walker.walk(first, 0x1234, 1) == r


def test_walk_code_is_shared_by_shape_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formats of one shape share the compiled walk (each with its own names bound); the
    store of compiled shapes stays within its bound however many shapes guests configure."""
    from devices.pagetable import walker

    a, b = ArmS1Table(RAM, 4096, 16, 48), ArmS1Table(RAM + 0x1000, 4096, 16, 48)
    assert a.walk_from.__code__ is b.walk_from.__code__
    assert a.walk_from.__globals__["fmt"] is a and b.walk_from.__globals__["fmt"] is b
    monkeypatch.setattr(walker, "_WALK_CODE", {})
    monkeypatch.setattr(walker, "_WALK_CODE_MAX", 4)
    shapes = [ArmS1Table(RAM, granule, tsz, oas)
              for granule in (4096, 16384, 65536) for tsz in (16, 25) for oas in (40, 48)]
    assert len({t.walk_from.__code__ for t in shapes}) > 4
    assert len(walker._WALK_CODE) == 4
