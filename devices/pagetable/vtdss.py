"""VT-d second-stage translation tables (legacy mode, scalable-mode PGTT = 010, and the
second stage of nested translation).

Spec: Intel VT-d 4.x/5.x §3.7 "Second-Stage Translation" (3/4/5 levels by the adjusted
guest address width, 2 MiB / 1 GiB super-pages when CAP.SSLPS allows them, R/W/X with
SSEE, A/D with SSADE) and chapter 9 "Second-Stage Paging Entries" for the formats.  Digest:
shared/reference/vtd.md §3c; Linux generic_pt fmt/vtdss.h encodes the same entries.

* An entry is present when R or W is set (hardware's rule; Linux's own "entry != 0" is a
  software view).  Permissions are the AND of every level.
* Without SSEE, execute requests are checked as reads.
* Reserved: address bits at or above HAW; PS at levels 4/5 or where the super-page size is
  not supported; a super-page's address bits below its size; SNP (bit 11) unless snoop
  control is available.  EMT/IPAT/TM and the ignored bits are not interpreted.
"""

from __future__ import annotations

from devices.model import FaultKind, MemoryPort

from .walker import (
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    ATTR_SNOOP,
    AccessDirtyFormat,
    Fault,
    Reason,
    Translation,
)

R = 1 << 0
W = 1 << 1
X = 1 << 2
EMT_SHIFT = 3
IPAT = 1 << 6
PS = 1 << 7
A = 1 << 8
D = 1 << 9
SNP = 1 << 11

ADDR_BITS_MAX = 52
LEVELS = (3, 4, 5)


def agaw_bits(levels: int) -> int:
    """Input bits covered by a table of ``levels`` levels: 39, 48 or 57."""
    return 12 + 9 * levels


class VtdSecondStage(AccessDirtyFormat):
    """A second-stage table tree with its context/PASID-entry controls."""

    __slots__ = ("root", "levels", "haw", "input_bits", "ssee")
    A = A
    D = D

    def __init__(self, root: int, levels: int = 4, haw: int = 48, *, sp_2m: bool = True,
                 sp_1g: bool = True, ssee: bool = False, ad: bool = False, snp: bool = True,
                 input_bits: int | None = None) -> None:
        if levels not in LEVELS or not 32 <= haw <= ADDR_BITS_MAX:
            raise ValueError(f"VT-d second stage: {levels} levels, HAW {haw}")
        self.stage = 2
        self.levels = levels
        self.haw = haw
        # Input beyond the table's AGAW (or a smaller MGAW the caller passes) faults.
        self.input_bits = min(agaw_bits(levels), input_bits or 64)
        self.ssee = ssee
        self.ad = ad
        top = levels - 1
        self.top = top
        self.shifts = tuple(12 + 9 * h for h in range(levels))
        self.sizes = tuple(1 << s for s in self.shifts)
        self.index_masks = (511,) * levels
        self.type_masks = (0,) + (PS,) * top
        self.table_types = (-1,) + (0,) * top
        self.leaf_types = tuple(
            0 if h == 0 else PS if (h == 1 and sp_2m) or (h == 2 and sp_1g) else -1
            for h in range(levels)
        )
        self.present_mask = R | W
        self.bad_type_reason = Reason.RESERVED
        addr = (1 << haw) - 1
        common = (((1 << ADDR_BITS_MAX) - 1) & ~addr) | (0 if snp else SNP)
        self.rsvd_table = (common,) * levels
        self.rsvd_leaf = tuple(
            common | (((1 << s) - 1) & ~0xFFF if h else 0) for h, s in enumerate(self.shifts)
        )
        self.table_addr_mask = addr & ~0xFFF
        self.leaf_addr_masks = tuple(addr & ~(size - 1) for size in self.sizes)
        self.oa_limit_mask = 0
        self.level_names = tuple(h + 1 for h in range(levels))
        self.table_set = A if ad else 0
        self.root = root & addr & ~0xFFF
        self.prepare()

    def walk(self, mem: MemoryPort, ia: int, access: int) -> Translation | Fault:
        if ia >> self.input_bits:
            return Fault(FaultKind.TRANSLATION, Reason.INPUT_RANGE, 2, None, None)
        return self.walk_from(mem, ia, self.root, access, None)

    def accumulators(self) -> tuple[bool, bool]:
        return True, False  # R/W/X: every entry of the walk must grant it (AND)

    def finish(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        acc_and: int, acc_or: int, access: int,
    ) -> Translation | Fault:
        every = acc_and & pte
        perm = (ACCESS_R if every & R else 0) | (ACCESS_W if every & W else 0)
        if every & X if self.ssee else every & R:
            perm |= ACCESS_X
        return self.finish_ad(mem, ia, pte, pte_addr, pa, h, access, perm, perm,
                              ATTR_SNOOP if pte & SNP else 0)
