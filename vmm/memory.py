"""Guest memory: the single place guest bytes are touched.

Regions arrive as file descriptors (memfd in practice) with SET_MEM_TABLE, ADD_MEM_REG and
REM_MEM_REG (protocol.md, "Memory regions") and are mapped shared, so the guest sees every
write at once.  Every access is bounds-checked; an access may cross from one region into an
adjacent one; an access that touches any byte outside guest RAM fails as a whole and reports
it as a value (``None`` / ``False``), never as an exception, since the address came from the
guest.

This is also the choke point for observers (recording, fuzzing oracles): every read and
write the device models make passes through here.
"""

from __future__ import annotations

import bisect
import mmap
import os
import stat
import struct
from collections.abc import Iterable
from typing import Protocol

from protocols.messages import RegionSpec

PAGE_SIZE = 4096
GPA_LIMIT = 1 << 52
MAX_REGIONS = 64

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32_FROM = _U32.unpack_from
_U64_FROM = _U64.unpack_from


class RegionError(Exception):
    """A client asked for a memory table the protocol forbids (the client's fault).

    ``errno`` is the negative errno of the reply: -EINVAL for a bad region, -ENOENT for
    REM_MEM_REG of a region that does not exist.
    """

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Region:
    __slots__ = ("gpa", "size", "mmap_offset", "end", "mm", "words")

    def __init__(self, spec: RegionSpec, mm: mmap.mmap) -> None:
        self.gpa = spec.gpa
        self.size = spec.size
        self.mmap_offset = spec.mmap_offset
        self.end = spec.gpa + spec.size
        self.mm = mm
        # (gpa, word count, the region as native u64 words) for the page walker's direct
        # reads (GuestMemory.u64_span); the view is released before the mapping is closed.
        words = memoryview(mm).cast("Q")
        self.words = (spec.gpa, len(words), words)

    def close(self) -> None:
        self.words[2].release()
        self.mm.close()


def check_spec(spec: RegionSpec) -> None:
    """The value rules of protocol.md for one region (raises RegionError(-EINVAL))."""
    import errno

    if spec.size == 0:
        raise RegionError(-errno.EINVAL, "region size is 0")
    for name in ("gpa", "size", "mmap_offset"):
        if getattr(spec, name) % PAGE_SIZE:
            raise RegionError(-errno.EINVAL, f"region {name} {getattr(spec, name):#x} not 4 KiB aligned")
    if spec.gpa + spec.size > GPA_LIMIT:
        raise RegionError(-errno.EINVAL, "region ends beyond 2^52")


def map_region(spec: RegionSpec, fd: int) -> Region:
    """Map ``fd`` for ``spec``; RegionError(-EINVAL) when it cannot be mapped or is too small."""
    import errno

    check_spec(spec)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise RegionError(-errno.EINVAL, f"region fd: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size < spec.mmap_offset + spec.size:
        raise RegionError(-errno.EINVAL, "region fd is not a regular file of sufficient size")
    try:
        mm = mmap.mmap(
            fd, spec.size, flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=spec.mmap_offset,
        )
    except (OSError, ValueError, OverflowError) as exc:
        raise RegionError(-errno.EINVAL, f"region fd cannot be mapped: {exc}") from None
    return Region(spec, mm)


class SessionMemory(Protocol):
    """What a guest session needs of its memory: ``GuestMemory``, and the wrappers that stand
    in for it (``vmm.record.RecordingMemory``, ``vmm.replay.ReplayMemory``)."""

    @property
    def generation(self) -> int: ...
    def ram_ranges(self) -> list[tuple[int, int]]: ...
    def contains(self, gpa: int, length: int) -> bool: ...
    def read(self, gpa: int, length: int) -> bytes | None: ...
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool: ...
    def read_u32(self, gpa: int) -> int | None: ...
    def read_u64(self, gpa: int) -> int | None: ...
    def write_u32(self, gpa: int, value: int) -> bool: ...
    def write_u64(self, gpa: int, value: int) -> bool: ...
    def set_table(self, entries: list[tuple[RegionSpec, int]]) -> None: ...
    def add(self, spec: RegionSpec, fd: int) -> None: ...
    def remove(self, gpa: int, size: int) -> None: ...
    def clear(self) -> None: ...


class GuestMemory:
    """Guest-physical memory made of mapped regions, sorted by address."""

    direct_words = True
    """The walker may read table words straight from ``u64_span`` (devices/pagetable/walker.py);
    declared on this class alone, so wrappers and subclasses are never read around."""

    __slots__ = ("_regions", "_starts", "_last", "generation")

    def __init__(self) -> None:
        self.generation = 0
        """Bumped whenever the table changes (the host re-places RAM then)."""
        self._regions: list[Region] = []
        self._starts: list[int] = []
        self._last: Region | None = None

    # -- the memory table ---------------------------------------------------------------

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def ram_ranges(self) -> list[tuple[int, int]]:
        return [(r.gpa, r.size) for r in self._regions]

    @staticmethod
    def _check_table(specs: Iterable[RegionSpec]) -> None:
        import errno

        ordered = sorted(specs, key=lambda s: s.gpa)
        if len(ordered) > MAX_REGIONS:
            raise RegionError(-errno.EINVAL, f"more than {MAX_REGIONS} regions")
        for spec in ordered:
            check_spec(spec)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.gpa < a.gpa + a.size:
                raise RegionError(-errno.EINVAL, f"regions at {a.gpa:#x} and {b.gpa:#x} overlap")

    def set_table(self, entries: list[tuple[RegionSpec, int]]) -> None:
        """Replace the whole table; on any error the old table stays and nothing is kept."""
        self._check_table(spec for spec, _ in entries)
        mapped: list[Region] = []
        try:
            for spec, fd in entries:
                mapped.append(map_region(spec, fd))
        except RegionError:
            for region in mapped:
                region.close()
            raise
        old = self._regions
        self._install(mapped)
        for region in old:
            region.close()

    def add(self, spec: RegionSpec, fd: int) -> None:
        current = [RegionSpec(r.gpa, r.size, r.mmap_offset) for r in self._regions]
        self._check_table([*current, spec])
        region = map_region(spec, fd)
        self._install([*self._regions, region])

    def remove(self, gpa: int, size: int) -> None:
        import errno

        for region in self._regions:
            if region.gpa == gpa and region.size == size:
                self._install([r for r in self._regions if r is not region])
                region.close()
                return
        raise RegionError(-errno.ENOENT, f"no region at {gpa:#x} of size {size:#x}")

    def clear(self) -> None:
        old = self._regions
        self._install([])
        for region in old:
            region.close()

    def _install(self, regions: list[Region]) -> None:
        regions.sort(key=lambda r: r.gpa)
        self._regions = regions
        self._starts = [r.gpa for r in regions]
        self._last = regions[0] if regions else None
        self.generation += 1

    # -- accesses -------------------------------------------------------------------------

    def _find(self, gpa: int) -> Region | None:
        last = self._last
        if last is not None and last.gpa <= gpa < last.end:
            return last
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i < 0:
            return None
        region = self._regions[i]
        if gpa < region.end:
            self._last = region
            return region
        return None

    def contains(self, gpa: int, length: int) -> bool:
        """True when every byte of ``[gpa, gpa + length)`` is guest RAM."""
        while length > 0:
            region = self._find(gpa)
            if region is None:
                return False
            chunk = min(length, region.end - gpa)
            gpa += chunk
            length -= chunk
        return True

    def read(self, gpa: int, length: int) -> bytes | None:
        """``length`` bytes at ``gpa``, or None if any of them is outside guest RAM."""
        region = self._find(gpa)
        if region is None or length < 0:
            return None
        off = gpa - region.gpa
        if gpa + length <= region.end:
            return region.mm[off : off + length]
        if not self.contains(gpa, length):
            return None
        parts = []
        while length > 0:
            region = self._find(gpa)
            assert region is not None
            chunk = min(length, region.end - gpa)
            off = gpa - region.gpa
            parts.append(region.mm[off : off + chunk])
            gpa += chunk
            length -= chunk
        return b"".join(parts)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        """Write all of ``data`` at ``gpa``, or nothing if any byte is outside guest RAM."""
        length = len(data)
        region = self._find(gpa)
        if region is None:
            return False
        if gpa + length <= region.end:
            off = gpa - region.gpa
            region.mm[off : off + length] = data
            return True
        if not self.contains(gpa, length):
            return False
        view = memoryview(data)
        done = 0
        while done < length:
            region = self._find(gpa + done)
            assert region is not None
            chunk = min(length - done, region.end - (gpa + done))
            off = gpa + done - region.gpa
            region.mm[off : off + chunk] = view[done : done + chunk]
            done += chunk
        return True

    def u64_span(self, gpa: int) -> tuple[int, int, memoryview] | None:
        """(first gpa, length in u64 words, the words) of the region holding ``gpa``, or
        None outside guest RAM.

        The page walker reads table entries through this when the memory is exactly a
        ``GuestMemory`` (devices/pagetable/walker.py): word ``i`` holds the same value
        ``read_u64(first + 8 * i)`` returns, read without a call per entry.  Valid while
        ``generation`` does not move.
        """
        last = self._last
        if last is not None and last.gpa <= gpa < last.end:
            return last.words
        region = self._find(gpa)
        return None if region is None else region.words

    def read_u32(self, gpa: int) -> int | None:
        # The region of the last access first, without a call: the queues' hot path.
        last = self._last
        if last is not None and last.gpa <= gpa and gpa + 4 <= last.end:
            return _U32_FROM(last.mm, gpa - last.gpa)[0]  # type: ignore[no-any-return]
        region = self._find(gpa)
        if region is not None and gpa + 4 <= region.end:
            return _U32_FROM(region.mm, gpa - region.gpa)[0]  # type: ignore[no-any-return]
        data = self.read(gpa, 4)
        return None if data is None else int(_U32.unpack(data)[0])

    def read_u64(self, gpa: int) -> int | None:
        # The region of the last access first, without a call: the page walker's hot path.
        last = self._last
        if last is not None and last.gpa <= gpa and gpa + 8 <= last.end:
            return _U64_FROM(last.mm, gpa - last.gpa)[0]  # type: ignore[no-any-return]
        region = self._find(gpa)
        if region is not None and gpa + 8 <= region.end:
            return _U64_FROM(region.mm, gpa - region.gpa)[0]  # type: ignore[no-any-return]
        data = self.read(gpa, 8)
        return None if data is None else int(_U64.unpack(data)[0])

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.write(gpa, _U32.pack(value & 0xFFFF_FFFF))

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.write(gpa, _U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF))


def make_memfd(size: int, name: str = "guest-ram") -> int:
    """An anonymous shared file of ``size`` bytes, as a front-end allocates guest RAM."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


def anonymous_memory(layout: Iterable[tuple[int, int]]) -> GuestMemory:
    """Guest memory with fresh zeroed regions ``(gpa, size)``, for replay, fuzzing and tests."""
    memory = GuestMemory()
    entries: list[tuple[RegionSpec, int]] = []
    fds: list[int] = []
    try:
        for gpa, size in layout:
            fd = make_memfd(size)
            fds.append(fd)
            entries.append((RegionSpec(gpa, size, 0), fd))
        memory.set_table(entries)
    finally:
        for fd in fds:
            os.close(fd)
    return memory
