"""Guest memory: regions from fds, bounds, crossing accesses, table rules."""

from __future__ import annotations

import errno
import os

import pytest

from protocols.messages import RegionSpec
from vmm.memory import GuestMemory, RegionError, anonymous_memory, make_memfd


def test_crossing_and_outside() -> None:
    mem = anonymous_memory([(0x1000, 0x2000), (0x3000, 0x1000), (0x10000, 0x1000)])
    assert mem.write(0x2FFC, b"abcdefgh")  # crosses from the first region into the second
    assert mem.read(0x2FFC, 8) == b"abcdefgh"
    assert mem.read_u64(0x2FFC) == int.from_bytes(b"abcdefgh", "little")
    assert mem.read(0x3FFC, 8) is None  # runs off the end of RAM
    assert not mem.write(0x3FFC, b"12345678")
    assert mem.read(0x3FFC, 4) == b"\0\0\0\0"  # nothing of the failed write landed
    assert mem.read(0x0, 4) is None
    assert mem.read_u32(0x10FFC) == 0
    assert mem.read_u32(0x10FFE) is None
    assert not mem.contains(0x4000, 1)
    assert mem.contains(0x1000, 0x3000)


def test_shared_with_the_fd_owner() -> None:
    fd = make_memfd(0x2000)
    try:
        mem = GuestMemory()
        mem.set_table([(RegionSpec(0x8000, 0x2000, 0), fd)])
        mem.write_u32(0x8010, 0xDEADBEEF)
        assert os.pread(fd, 4, 0x10) == (0xDEADBEEF).to_bytes(4, "little")
        os.pwrite(fd, b"\x55", 0x1FFF)
        assert mem.read(0x9FFF, 1) == b"\x55"
        mem.clear()
    finally:
        os.close(fd)


@pytest.mark.parametrize("spec", [
    RegionSpec(0x1000, 0, 0),
    RegionSpec(0x1001, 0x1000, 0),
    RegionSpec(0x1000, 0x1800, 0),
    RegionSpec(0x1000, 0x1000, 0x10),
    RegionSpec((1 << 52) - 0x1000, 0x2000, 0),
    RegionSpec(0x1000, 0x1000, 0x2000),  # beyond the fd's size
])
def test_bad_region_leaves_table(spec: RegionSpec) -> None:
    mem = anonymous_memory([(0x100000, 0x1000)])
    fd = make_memfd(0x2000)
    try:
        with pytest.raises(RegionError) as err:
            mem.set_table([(spec, fd)])
        assert err.value.errno == -errno.EINVAL
        assert mem.contains(0x100000, 0x1000)
    finally:
        os.close(fd)


def test_overlap_and_remove() -> None:
    mem = anonymous_memory([(0x0, 0x4000)])
    fd = make_memfd(0x4000)
    try:
        with pytest.raises(RegionError):
            mem.add(RegionSpec(0x3000, 0x1000, 0), fd)
        mem.add(RegionSpec(0x4000, 0x1000, 0x1000), fd)
        assert mem.write(0x3FF8, bytes(16))
        with pytest.raises(RegionError) as err:
            mem.remove(0x4000, 0x2000)
        assert err.value.errno == -errno.ENOENT
        mem.remove(0x4000, 0x1000)
        assert not mem.contains(0x4000, 1)
    finally:
        os.close(fd)


def test_not_mappable() -> None:
    mem = GuestMemory()
    r, w = os.pipe()
    try:
        with pytest.raises(RegionError):
            mem.set_table([(RegionSpec(0, 0x1000, 0), r)])
    finally:
        os.close(r)
        os.close(w)
