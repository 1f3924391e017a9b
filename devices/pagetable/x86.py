"""x86-64 (IA-32e) paging used as VT-d first-stage translation (PGTT = 001, or the first
stage of nested translation).

Spec: Intel VT-d 4.x/5.x §3.6 "First-Stage Translation" (4-level and 5-level paging, 4 KiB
/ 2 MiB / 1 GiB pages, access rights, accessed/dirty flags) with the controls of the
scalable-mode PASID table entry (chapter 9: SRE, WPE, NXE, SMEP, FSPM), and chapter 9
"First-Stage Paging Entries" for the entry formats, which are those of Intel SDM vol. 3 §4.5.  Digest:
shared/reference/vtd.md §3d.

Rules applied at the leaf:
* a user (unprivileged) request needs U/S = 1 at every level;
* a write needs R/W = 1 at every level, except a supervisor write when WPE = 0;
* an execute needs XD = 0 at every level (XD is a reserved bit when NXE = 0), and a
  supervisor execute of a user page is refused with SMEP;
* a supervisor request when SRE = 0 is refused before any walk (fault 0x5D);
* with a request (``access != 0``) hardware sets A in every entry used and D in the leaf
  of a write; memory type bits (PWT/PCD/PAT) and EA are not interpreted.
"""

from __future__ import annotations

from devices.model import FaultKind, MemoryPort

from .walker import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    ATTR_GLOBAL,
    AccessDirtyFormat,
    Fault,
    Reason,
    Translation,
    Walker,
)

P = 1 << 0
RW = 1 << 1
US = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
A = 1 << 5
D = 1 << 6
PS = 1 << 7
G = 1 << 8
EA = 1 << 10
PAT_LARGE = 1 << 12
XD = 1 << 63

ADDR_BITS_MAX = 52
LEVELS = (4, 5)


class X86FirstStage(AccessDirtyFormat):
    """A first-stage table tree with its PASID-entry controls."""

    __slots__ = ("root", "levels", "haw", "va_bits", "sre", "wpe", "smep")
    A = A
    D = D

    def __init__(self, root: int, levels: int = 4, haw: int = 48, *, page_1g: bool = True,
                 nxe: bool = True, sre: bool = True, wpe: bool = False, smep: bool = False,
                 ad: bool = True) -> None:
        if levels not in LEVELS or not 32 <= haw <= ADDR_BITS_MAX:
            raise ValueError(f"x86 first stage: {levels} levels, HAW {haw}")
        self.stage = 1
        self.levels = levels
        self.haw = haw
        self.va_bits = 12 + 9 * levels
        self.sre = sre
        self.wpe = wpe
        self.smep = smep
        self.ad = ad
        top = levels - 1
        self.top = top
        self.shifts = tuple(12 + 9 * h for h in range(levels))
        self.sizes = tuple(1 << s for s in self.shifts)
        self.index_masks = (511,) * levels
        # In a PTE bit 7 is PAT, not PS: every present PTE is a page.
        self.type_masks = (0,) + (PS,) * top
        self.table_types = (-1,) + (0,) * top
        self.leaf_types = tuple(
            0 if h == 0 else PS if h == 1 or (h == 2 and page_1g) else -1 for h in range(levels)
        )
        self.present_mask = P
        self.bad_type_reason = Reason.RESERVED
        addr = (1 << haw) - 1
        above_haw = ((1 << ADDR_BITS_MAX) - 1) & ~addr
        common = above_haw | (0 if nxe else XD)
        self.rsvd_table = (common,) * levels
        # A large page's address bits below its size are reserved; bit 12 is its PAT.
        self.rsvd_leaf = tuple(
            common | (((1 << s) - 1) & ~((1 << 13) - 1) if h else 0)
            for h, s in enumerate(self.shifts)
        )
        self.table_addr_mask = addr & ~0xFFF
        self.leaf_addr_masks = tuple(addr & ~(size - 1) for size in self.sizes)
        self.oa_limit_mask = 0
        self.level_names = tuple(h + 1 for h in range(levels))
        self.table_set = A if ad else 0
        self.root = root & addr & ~0xFFF
        self.prepare()

    def walk(self, mem: MemoryPort, ia: int, access: int,
             s2: Walker | None = None) -> Translation | Fault:
        sign = ia >> (self.va_bits - 1)
        if sign and sign != (1 << (65 - self.va_bits)) - 1:
            return Fault(FaultKind.TRANSLATION, Reason.NON_CANONICAL, 1, None, None)
        if access & ACCESS_PRIV and not self.sre:
            return Fault(FaultKind.PERMISSION, Reason.SUPERVISOR, 1, None, None)
        return self.walk_from(mem, ia, self.root, access, s2)

    def finish(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        acc_and: int, acc_or: int, access: int,
    ) -> Translation | Fault:
        every = acc_and & pte
        executable = not (acc_or | pte) & XD
        user_page = every & US
        writable = every & RW
        user = 0
        if user_page:
            user = ACCESS_R | (ACCESS_W if writable else 0) | (ACCESS_X if executable else 0)
        priv = 0
        if self.sre:
            priv = ACCESS_R | (ACCESS_W if writable or not self.wpe else 0)
            if executable and not (self.smep and user_page):
                priv |= ACCESS_X
        return self.finish_ad(mem, ia, pte, pte_addr, pa, h, access, priv, user,
                              ATTR_GLOBAL if pte & G else 0)
