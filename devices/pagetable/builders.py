"""Table builders: write translation tables into guest memory the way a driver does.

The guest driver harness and the tests use these to make real tables (Linux
io-pgtable-arm, intel-iommu and generic_pt play the same role in a real guest).  Each
builder derives its geometry from first principles (granule, level count, input size) and
does not reuse the walker's precomputed constants, so a geometry mistake in one does not
hide in the other.  Entry encodings: Arm ARM D8.3 (VMSAv8-64 descriptors), VT-d chapter 9
(first- and second-stage paging entries).

Semantics (those of Linux io-pgtable):
* ``map`` installs one page/block of a supported size at an aligned address; anything
  already present on its path (a larger leaf, or a smaller mapping inside) is a
  ``MapConflict``.  An *empty* table left by earlier unmaps is freed and replaced.
* ``unmap`` removes every leaf lying wholly inside the range and returns the bytes removed;
  a leaf that straddles the range's ends stays.  Tables are kept (as Linux does).

Misuse by the caller (bad size, misalignment, out of range, table memory exhausted) raises:
the caller plays a driver here, not a guest.
"""

from __future__ import annotations

import struct

from devices.model import MemoryPort, Perm

from . import arm, vtdss, x86


class MapConflict(ValueError):
    """The range is already (partly) mapped: the caller's mistake, Linux's -EEXIST."""


class AllocatorExhausted(RuntimeError):
    """The GPA range given for tables is used up."""


class TableAllocator:
    """Naturally aligned, zeroed table memory from ``[base, base + size)`` of guest RAM."""

    def __init__(self, mem: MemoryPort, base: int, size: int) -> None:
        self.mem = mem
        self.base = base
        self.end = base + size
        self.next = base
        self.free: dict[int, list[int]] = {}
        self.in_use = 0

    def alloc(self, size: int) -> int:
        align = max(size, 64)
        reuse = self.free.get(size)
        if reuse:
            gpa = reuse.pop()
        else:
            gpa = (self.next + align - 1) & ~(align - 1)
            if gpa + size > self.end:
                raise AllocatorExhausted(f"no {size:#x} bytes left in [{self.base:#x}, "
                                         f"{self.end:#x})")
            self.next = gpa + size
        if not self.mem.write(gpa, bytes(size)):
            raise AllocatorExhausted(f"table memory at {gpa:#x} is not guest RAM")
        self.in_use += size
        return gpa

    def release(self, gpa: int, size: int) -> None:
        self.free.setdefault(size, []).append(gpa)
        self.in_use -= size


class TableBuilder:
    """The format-independent part: find or make the path to a leaf, write it."""

    page_shift: int
    bits: int
    """Index bits per level below the top."""
    top: int
    """Height of the start table (0 = the table of smallest pages)."""
    top_bits: int
    """Index bits of the start table (fewer for a short one, more when concatenated)."""
    leaf_heights: tuple[int, ...]
    ia_lo: int
    ia_hi: int
    """The input range ``[ia_lo, ia_hi)`` this tree translates."""

    def __init__(self, mem: MemoryPort, alloc: TableAllocator) -> None:
        self.mem = mem
        self.alloc = alloc
        self.table_bytes = 8 << self.bits
        self.root = alloc.alloc(8 << self.top_bits)

    # -- format hooks -------------------------------------------------------------------
    def check_perm(self, perm: Perm) -> None:
        """Refuse permissions the format cannot express (before touching any table)."""

    def table_entry(self, table_gpa: int) -> int:
        raise NotImplementedError

    def leaf_entry(self, oa: int, h: int, perm: Perm, user: bool) -> int:
        raise NotImplementedError

    def is_table(self, pte: int, h: int) -> bool:
        raise NotImplementedError

    def table_addr(self, pte: int) -> int:
        raise NotImplementedError

    # -- geometry -----------------------------------------------------------------------
    def shift(self, h: int) -> int:
        return self.page_shift + self.bits * h

    @property
    def page_sizes(self) -> tuple[int, ...]:
        return tuple(1 << self.shift(h) for h in self.leaf_heights)

    def _legal_heights(self, heights: tuple[int, ...]) -> tuple[int, ...]:
        # A tree that starts low (small input, or a concatenated stage 2) has no level
        # for the largest blocks.
        return tuple(h for h in heights if h <= self.top)

    def entry_gpa(self, table: int, ia: int, h: int) -> int:
        index_bits = self.top_bits if h == self.top else self.bits
        return table + ((ia >> self.shift(h)) & ((1 << index_bits) - 1)) * 8

    def _read(self, gpa: int) -> int:
        value = self.mem.read_u64(gpa)
        if value is None:
            raise AllocatorExhausted(f"table entry at {gpa:#x} is not guest RAM")
        return value

    # -- operations ---------------------------------------------------------------------
    def map(self, ia: int, oa: int, size: int, perm: Perm = Perm.R | Perm.W, *,
            user: bool = True, extra: int = 0) -> None:
        """Map ``[ia, ia + size)`` to ``oa``; ``extra`` bits are ORed into the leaf."""
        if size not in self.page_sizes:
            raise ValueError(f"page size {size:#x} not in {[hex(s) for s in self.page_sizes]}")
        if ia % size or oa % size:
            raise ValueError(f"{ia:#x} -> {oa:#x} not aligned to {size:#x}")
        if not (self.ia_lo <= ia and ia + size <= self.ia_hi):
            raise ValueError(f"{ia:#x} outside [{self.ia_lo:#x}, {self.ia_hi:#x})")
        self.check_perm(perm)
        leaf_h = self.leaf_heights[self.page_sizes.index(size)]
        table, h = self.root, self.top
        while h > leaf_h:
            gpa = self.entry_gpa(table, ia, h)
            pte = self._read(gpa)
            if pte == 0:
                table = self.alloc.alloc(self.table_bytes)
                self.mem.write_u64(gpa, self.table_entry(table))
            elif self.is_table(pte, h):
                table = self.table_addr(pte)
            else:
                raise MapConflict(f"{ia:#x}: a larger mapping covers it")
            h -= 1
        gpa = self.entry_gpa(table, ia, h)
        pte = self._read(gpa)
        if pte:
            if not (h > 0 and self.is_table(pte, h) and self._empty(self.table_addr(pte), h - 1)):
                raise MapConflict(f"{ia:#x}: already mapped")
            self._release(self.table_addr(pte), h - 1)
        self.mem.write_u64(gpa, self.leaf_entry(oa, h, perm, user) | extra)

    def unmap(self, ia: int, size: int) -> int:
        """Remove the leaves wholly inside ``[ia, ia + size)``; the bytes removed."""
        end = min(ia + size, self.ia_hi)
        cur = max(ia, self.ia_lo)
        done = 0
        while cur < end:
            table, h = self.root, self.top
            while True:
                gpa = self.entry_gpa(table, cur, h)
                pte = self._read(gpa)
                span = 1 << self.shift(h)
                base = cur & ~(span - 1)
                if pte and h > 0 and self.is_table(pte, h):
                    table, h = self.table_addr(pte), h - 1
                    continue
                if pte and base >= ia and base + span <= end:
                    self.mem.write_u64(gpa, 0)
                    done += span
                cur = base + span
                break
        return done

    def leaf_gpa(self, ia: int) -> int | None:
        """Where the leaf entry for ``ia`` is (to corrupt or inspect it), if mapped."""
        table, h = self.root, self.top
        while True:
            gpa = self.entry_gpa(table, ia, h)
            pte = self._read(gpa)
            if pte == 0:
                return None
            if h > 0 and self.is_table(pte, h):
                table, h = self.table_addr(pte), h - 1
                continue
            return gpa

    def _entries(self, table: int) -> tuple[int, ...]:
        data = self.mem.read(table, self.table_bytes)
        if data is None:
            raise AllocatorExhausted(f"table at {table:#x} is not guest RAM")
        return struct.unpack(f"<{self.table_bytes // 8}Q", data)

    def _empty(self, table: int, h: int) -> bool:
        for pte in self._entries(table):
            if pte and not (h > 0 and self.is_table(pte, h)
                            and self._empty(self.table_addr(pte), h - 1)):
                return False
        return True

    def _release(self, table: int, h: int) -> None:
        for pte in self._entries(table):
            if pte and h > 0 and self.is_table(pte, h):
                self._release(self.table_addr(pte), h - 1)
        self.alloc.release(table, self.table_bytes)


class _ArmBuilder(TableBuilder):
    def __init__(self, mem: MemoryPort, alloc: TableAllocator, granule: int, ia_bits: int,
                 top: int) -> None:
        self.granule = granule
        self.page_shift = granule.bit_length() - 1
        self.bits = self.page_shift - 3
        self.top = top
        self.top_bits = ia_bits - self.page_shift - self.bits * top
        # Blocks: 1 GiB and 2 MiB with 4K, 32 MiB with 16K, 512 MiB with 64K (no LPA).
        self.leaf_heights = self._legal_heights((0, 1, 2) if granule == 4096 else (0, 1))
        super().__init__(mem, alloc)

    def table_entry(self, table_gpa: int) -> int:
        return table_gpa | arm.DESC_TYPE_TABLE

    def is_table(self, pte: int, h: int) -> bool:
        return pte & 3 == 3

    def table_addr(self, pte: int) -> int:
        return pte & arm.ADDR_MASK & ~(self.granule - 1)

    def _type(self, h: int) -> int:
        return arm.DESC_TYPE_PAGE if h == 0 else arm.DESC_TYPE_BLOCK


class ArmS1Builder(_ArmBuilder):
    """A stage-1 tree for one TTB half (``upper`` for TTB1, addresses at the top of the
    64-bit space)."""

    def __init__(self, mem: MemoryPort, alloc: TableAllocator, granule: int = 4096,
                 tsz: int = 16, *, upper: bool = False) -> None:
        ia_bits = 64 - tsz
        g = granule.bit_length() - 1
        levels = -(-(ia_bits - g) // (g - 3))  # enough levels of g-3 bits to cover ia_bits
        super().__init__(mem, alloc, granule, ia_bits, levels - 1)
        self.tsz = tsz
        self.upper = upper
        self.ia_lo = (1 << 64) - (1 << ia_bits) if upper else 0
        self.ia_hi = (1 << 64) if upper else 1 << ia_bits

    def leaf_entry(self, oa: int, h: int, perm: Perm, user: bool) -> int:
        pte = oa | self._type(h) | arm.AF | arm.SH_INNER << arm.SH_SHIFT
        if not perm & Perm.W:
            pte |= arm.AP_2
        if user:
            pte |= arm.AP_1
        if not perm & Perm.X:
            pte |= arm.PXN | arm.UXN
        return pte

    def table(self, oas: int = 48, **controls: bool) -> arm.ArmS1Table:
        return arm.ArmS1Table(self.root, self.granule, self.tsz, oas, **controls)


class ArmS2Builder(_ArmBuilder):
    """A stage-2 tree; ``start_level`` below what the IPA needs means concatenated tables."""

    def __init__(self, mem: MemoryPort, alloc: TableAllocator, granule: int = 4096,
                 tsz: int = 16, start_level: int | None = None) -> None:
        if start_level is None:
            start_level = arm.default_s2_start_level(granule, 64 - tsz)
        super().__init__(mem, alloc, granule, 64 - tsz, 3 - start_level)
        self.tsz = tsz
        self.start_level = start_level
        self.ia_lo = 0
        self.ia_hi = 1 << (64 - tsz)

    def leaf_entry(self, oa: int, h: int, perm: Perm, user: bool) -> int:
        pte = oa | self._type(h) | arm.AF | arm.SH_INNER << arm.SH_SHIFT
        pte |= 0xF << arm.MEMATTR_SHIFT  # Normal, write-back
        if perm & Perm.R:
            pte |= arm.S2AP_R
        if perm & Perm.W:
            pte |= arm.S2AP_W
        if not perm & Perm.X:
            pte |= arm.UXN
        return pte

    def config(self, oas: int = 48, **controls: bool) -> arm.ArmS2Config:
        return arm.ArmS2Config(self.root, self.granule, self.tsz, self.start_level, oas,
                               **controls)


class _X86StyleBuilder(TableBuilder):
    """4 KiB tables of 512 entries, PS marks large pages (x86 and VT-d second stage)."""

    ps = 0

    def __init__(self, mem: MemoryPort, alloc: TableAllocator, levels: int) -> None:
        self.levels = levels
        self.page_shift = 12
        self.bits = 9
        self.top = levels - 1
        self.top_bits = 9
        self.leaf_heights = (0, 1, 2)
        super().__init__(mem, alloc)

    def is_table(self, pte: int, h: int) -> bool:
        return not pte & self.ps

    def table_addr(self, pte: int) -> int:
        return pte & ((1 << 52) - 1) & ~0xFFF


class X86Builder(_X86StyleBuilder):
    """VT-d first-stage tables (x86-64 4- or 5-level paging)."""

    ps = x86.PS

    def __init__(self, mem: MemoryPort, alloc: TableAllocator, levels: int = 4, *,
                 nxe: bool = True) -> None:
        super().__init__(mem, alloc, levels)
        self.nxe = nxe
        half = 1 << (12 + 9 * levels - 1)
        # The lower canonical half; tests map upper-half addresses by their sign-extension.
        self.ia_lo = 0
        self.ia_hi = half

    def table_entry(self, table_gpa: int) -> int:
        # Tables grant everything; leaves decide (Linux does the same).
        return table_gpa | x86.P | x86.RW | x86.US

    def leaf_entry(self, oa: int, h: int, perm: Perm, user: bool) -> int:
        pte = oa | x86.P | (x86.PS if h else 0)
        if perm & Perm.W:
            pte |= x86.RW
        if user:
            pte |= x86.US
        if self.nxe and not perm & Perm.X:
            pte |= x86.XD
        return pte

    def config(self, haw: int = 48, **controls: bool) -> x86.X86FirstStage:
        controls.setdefault("nxe", self.nxe)
        return x86.X86FirstStage(self.root, self.levels, haw, **controls)


class VtdSsBuilder(_X86StyleBuilder):
    """VT-d second-stage tables (3, 4 or 5 levels)."""

    ps = vtdss.PS

    def __init__(self, mem: MemoryPort, alloc: TableAllocator, levels: int = 4, *,
                 ssee: bool = False) -> None:
        super().__init__(mem, alloc, levels)
        self.ssee = ssee
        self.ia_lo = 0
        self.ia_hi = 1 << vtdss.agaw_bits(levels)

    def table_entry(self, table_gpa: int) -> int:
        return table_gpa | vtdss.R | vtdss.W | (vtdss.X if self.ssee else 0)

    def check_perm(self, perm: Perm) -> None:
        if not perm & (Perm.R | Perm.W):
            raise ValueError("a VT-d second-stage leaf needs R or W to be present")

    def leaf_entry(self, oa: int, h: int, perm: Perm, user: bool) -> int:
        pte = oa | (vtdss.PS if h else 0)
        if perm & Perm.R:
            pte |= vtdss.R
        if perm & Perm.W:
            pte |= vtdss.W
        if self.ssee and perm & Perm.X:
            pte |= vtdss.X
        return pte

    def config(self, haw: int = 48, **controls: bool) -> vtdss.VtdSecondStage:
        controls.setdefault("ssee", self.ssee)
        return vtdss.VtdSecondStage(self.root, self.levels, haw, **controls)
