"""Arm VMSAv8-64 translation tables, stage 1 and stage 2, as an SMMUv3 walks them.

Spec: Arm ARM (DDI 0487) chapter D8, "The AArch64 Virtual Memory System Architecture":
translation granules and lookup levels, the start level from TxSZ (stage 1) and SL0 (stage
2) with concatenated stage-2 start tables, table/block/page descriptor formats and the
levels where each is legal, AP[2:1]/S2AP, APTable/PXNTable/UXNTable, XN/PXN/UXN, AF, nG,
DBM and hardware Access-flag / dirty-state management, TBI and TTBR0/TTBR1 selection,
address-size checks.  SMMUv3 (IHI 0070) §5.2 STE (S2T0SZ, S2SL0, S2TG, S2PS, S2AFFD,
S2HA/S2HD) and §5.4 CD (T0SZ/T1SZ, TG0/TG1, EPD0/EPD1, IPS, TBI, HAD0/HAD1, HA, HD) give
the encodings decoded here.  Digest: shared/reference/smmuv3.md §6.

Not modelled (the SMMU model reports them as unsupported): 52-bit addresses (LPA, LPA2, the
small-translation-table TTST option), WXN/UWXN.  The Contiguous bit is a hint the
architecture lets us ignore: the size reported is the descriptor's own.

Fault order at a leaf follows the Arm ARM (address size, then Access flag, then
permission); QEMU checks the output size last (smmuv3.md §10).
"""

from __future__ import annotations

from typing import NamedTuple

from devices.model import FaultKind, MemoryPort

from .walker import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    ATTR_ACCESSED,
    ATTR_DIRTY,
    ATTR_NG,
    PERM_MASK,
    Fault,
    Reason,
    TableFormat,
    Translation,
    Walker,
    permission_fault,
    tuple_new,
    update_leaf,
)

# -- descriptor fields (Arm ARM D8.3) ------------------------------------------------------
DESC_VALID = 1 << 0
DESC_TYPE = 0b11
DESC_TYPE_TABLE = 0b11
DESC_TYPE_PAGE = 0b11
DESC_TYPE_BLOCK = 0b01
ATTR_INDX_SHIFT = 2          # stage 1 AttrIndx[2:0], bits 4:2
MEMATTR_SHIFT = 2            # stage 2 MemAttr[3:0], bits 5:2
AP_1 = 1 << 6                # stage 1 AP[1]: EL0 access
AP_2 = 1 << 7                # stage 1 AP[2]: read-only
S2AP_R = 1 << 6              # stage 2 S2AP[0]
S2AP_W = 1 << 7              # stage 2 S2AP[1]
SH_SHIFT = 8
SH_INNER = 0b11
AF = 1 << 10
NG = 1 << 11
DBM = 1 << 51
CONTIGUOUS = 1 << 52
PXN = 1 << 53
UXN = 1 << 54                # stage 1 UXN / stage 2 XN (XN[1] with FEAT_XNX)
S2XN_SHIFT = 53              # stage 2 XN[1:0] with FEAT_XNX
PXN_TABLE = 1 << 59
UXN_TABLE = 1 << 60
AP_TABLE_NO_EL0 = 1 << 61    # APTable[0]
AP_TABLE_RO = 1 << 62        # APTable[1]
NS_TABLE = 1 << 63
TABLE_ATTRS = PXN_TABLE | UXN_TABLE | AP_TABLE_NO_EL0 | AP_TABLE_RO

PA_BITS_MAX = 48             # no LPA/LPA2: output addresses are bits [47:granule]
ADDR_MASK = (1 << PA_BITS_MAX) - 1

GRANULE_SHIFTS = {4096: 12, 16384: 14, 65536: 16}
# SMMUv3 / VTCR encodings
TG0_GRANULES = {0: 4096, 1: 65536, 2: 16384}
TG1_GRANULES = {1: 16384, 2: 4096, 3: 65536}
PS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}

TSZ_MIN = 16                 # 48-bit input
TSZ_MAX = 39                 # 25-bit input (no TTST)
S2_MAX_CONCAT_BITS = 4       # at most 16 concatenated start-level tables


class BadConfig(NamedTuple):
    """A guest configuration no walk can use (the SMMU model reports C_BAD_CD/C_BAD_STE)."""

    reason: str


def level_shift(granule: int, level: int) -> int:
    """Bit position of a level's index: g + (3 - level) * (g - 3)."""
    g = GRANULE_SHIFTS[granule]
    return g + (3 - level) * (g - 3)


def s1_start_level(granule: int, ia_bits: int) -> int:
    """The first lookup level for a stage-1 input size (enough levels to cover it)."""
    g = GRANULE_SHIFTS[granule]
    return 4 - (ia_bits - 4) // (g - 3)


def s2_start_level(granule: int, sl0: int) -> int | None:
    """VTCR_EL2.SL0 / STE.S2SL0 to a start level (no TTST/LPA2); None when reserved."""
    if granule == 4096:
        return {0: 2, 1: 1, 2: 0}.get(sl0)
    return {0: 3, 1: 2, 2: 1}.get(sl0)


def s2_sl0(granule: int, start_level: int) -> int:
    """Inverse of ``s2_start_level``."""
    return (2 - start_level) if granule == 4096 else (3 - start_level)


def s2_geometry_ok(granule: int, ia_bits: int, start_level: int, oas: int) -> bool:
    """Whether a stage-2 start level suits the IPA size: the start level must resolve at
    least one bit and at most 16 concatenated tables, and the deep-table starts need a
    large enough PA size (Arm ARM D8, "concatenated translation tables")."""
    stride = GRANULE_SHIFTS[granule] - 3
    if not TSZ_MIN <= 64 - ia_bits <= TSZ_MAX:
        return False
    resolved = ia_bits - level_shift(granule, start_level)
    if not 1 <= resolved <= stride + S2_MAX_CONCAT_BITS:
        return False
    if granule == 4096:
        return not (start_level == 0 and oas <= 42)
    if granule == 16384:
        return start_level != 0 and not (start_level == 1 and oas <= 40)
    return start_level != 0 and not (start_level == 1 and oas <= 42)


def block_levels(granule: int) -> tuple[int, ...]:
    """Levels where block descriptors are legal without 52-bit addressing."""
    return (1, 2) if granule == 4096 else (2,)


class ArmFormat(TableFormat):
    """Geometry shared by both stages: one table tree of one granule."""

    __slots__ = ("root", "granule", "ia_bits", "oas", "start_level", "sizes", "root_limit")

    def __init__(self, stage: int, root: int, granule: int, ia_bits: int,
                 start_level: int, oas: int) -> None:
        if granule not in GRANULE_SHIFTS:
            raise ValueError(f"granule {granule:#x}")
        g = GRANULE_SHIFTS[granule]
        stride = g - 3
        top = 3 - start_level
        resolved = ia_bits - (g + top * stride)  # input bits the start level indexes
        if not 0 <= top <= 3 or not 1 <= resolved <= stride + S2_MAX_CONCAT_BITS:
            raise ValueError(f"start level {start_level} cannot cover {ia_bits} input bits")
        self.stage = stage
        self.granule = granule
        self.ia_bits = ia_bits
        self.oas = min(oas, PA_BITS_MAX)
        self.start_level = start_level
        self.top = top
        self.shifts = tuple(g + h * stride for h in range(top + 1))
        masks = [(1 << stride) - 1] * (top + 1)
        masks[top] = (1 << (ia_bits - self.shifts[top])) - 1  # short or concatenated
        self.index_masks = tuple(masks)
        self.sizes = tuple(1 << s for s in self.shifts)
        self.type_masks = (DESC_TYPE,) * (top + 1)
        self.table_types = (-1,) + (DESC_TYPE_TABLE,) * top
        blocks = {3 - level for level in block_levels(granule)}
        self.leaf_types = tuple(
            DESC_TYPE_PAGE if h == 0 else DESC_TYPE_BLOCK if h in blocks else -1
            for h in range(top + 1)
        )
        self.present_mask = DESC_VALID
        self.bad_type_reason = Reason.BAD_TYPE
        self.table_addr_mask = ADDR_MASK & ~((1 << g) - 1)
        self.leaf_addr_masks = tuple(ADDR_MASK & ~(size - 1) for size in self.sizes)
        self.rsvd_table = (0,) * (top + 1)
        self.rsvd_leaf = (0,) * (top + 1)
        self.oa_limit_mask = ADDR_MASK & ~((1 << self.oas) - 1)
        self.level_names = tuple(3 - h for h in range(top + 1))
        self.table_set = 0
        # The start table is aligned to its own size; lower TTB bits are RES0, taken as 0.
        start_bytes = (masks[top] + 1) * 8
        self.root = root & ADDR_MASK & ~(start_bytes - 1)
        self.root_limit = ~((1 << self.oas) - 1)
        self.prepare()

    def check_root(self) -> Fault | None:
        if self.root & self.root_limit:
            return self.root_fault()
        return None

    def root_fault(self) -> Fault:
        """The start table lies beyond the output address size."""
        return Fault(FaultKind.ADDRESS_SIZE, Reason.OUTPUT_SIZE, self.stage, self.start_level,
                     None)


def s1_perms(ap: int, xn: int, table: int, clean: bool) -> tuple[int, int]:
    """(privileged, unprivileged) permissions of a stage-1 leaf.

    ``ap`` = AP[2:1], ``xn`` = {UXN, PXN}, ``table`` = the OR of {APTable[1:0], UXNTable,
    PXNTable} over the walk (0 under HAD), ``clean`` = DBM set with HD (writable-clean:
    AP[2] then only records "not yet dirty")."""
    writable = not (ap & 2 and not clean) and not table & 8      # AP[2], APTable[1]
    el0 = bool(ap & 1) and not table & 4                         # AP[1], APTable[0]
    rw = ACCESS_R | ACCESS_W if writable else ACCESS_R
    user = (rw if el0 else 0) | (0 if xn & 2 or table & 2 else ACCESS_X)  # UXN, UXNTable
    # Memory writable at EL0 is never executable at EL1.
    pxn = xn & 1 or table & 1 or (el0 and writable)              # PXN, PXNTable
    return (rw if pxn else rw | ACCESS_X), user


class ArmS1Table(ArmFormat):
    """One stage-1 half (TTB0 or TTB1) with its CD controls."""

    __slots__ = ("table_key_mask", "dbm_key_mask", "perm_table", "ha", "hd", "leaf_consts")

    def __init__(self, root: int, granule: int = 4096, tsz: int = 16, oas: int = 48, *,
                 had: bool = False, ha: bool = False, hd: bool = False) -> None:
        if not TSZ_MIN <= tsz <= TSZ_MAX:
            raise ValueError(f"TxSZ {tsz}")
        ia_bits = 64 - tsz
        # Before the base class prepares the walk, which asks accumulators().
        self.table_key_mask = 0 if had else 0xF0  # HADx: no hierarchical attributes
        self.dbm_key_mask = 0x100 if hd else 0
        super().__init__(1, root, granule, ia_bits, s1_start_level(granule, ia_bits), oas)
        self.perm_table = tuple(
            s1_perms(key & 3, (key >> 2) & 3, (key >> 4) & 0xF, bool(key & 0x100))
            for key in range(0x200)
        )
        self.ha = ha
        self.hd = hd
        # Per height, what finish needs of a leaf there: (size, offset mask, address mask,
        # level), one lookup on the hot path.
        self.leaf_consts = tuple((size, size - 1, self.leaf_addr_masks[h], 3 - h)
                                 for h, size in enumerate(self.sizes))

    @classmethod
    def decode(cls, root: int, tg: int, tsz: int, ips: int, *, upper: bool = False,
               had: bool = False, ha: bool = False, hd: bool = False) -> ArmS1Table | BadConfig:
        """From CD fields (TG0 or, with ``upper``, TG1 encoding; IPS encoding)."""
        granule = (TG1_GRANULES if upper else TG0_GRANULES).get(tg)
        if granule is None:
            return BadConfig(f"TG{int(upper)} {tg} reserved")
        if ips not in PS_BITS:
            return BadConfig(f"IPS {ips} reserved")
        if not TSZ_MIN <= tsz <= TSZ_MAX:
            return BadConfig(f"T{int(upper)}SZ {tsz} out of range")
        return cls(root, granule, tsz, PS_BITS[ips], had=had, ha=ha, hd=hd)

    def accumulators(self) -> tuple[bool, bool]:
        return False, bool(self.table_key_mask)  # APTable/XNTable: any entry (OR); not HAD

    def finish(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        acc_and: int, acc_or: int, access: int,
    ) -> Translation | Fault:
        # The bits that decide everything here, as two small ints (64-bit operations cost
        # several times more): bits 11:0 (AP, AF, nG) and 63:51 (DBM, PXN, UXN).
        low = old = pte & 0xFFF
        high = pte >> 51
        if not low & AF:
            if not self.ha:
                return self.fault(FaultKind.ACCESS_FLAG, Reason.ACCESS_FLAG, h, pte_addr, pte)
            if access:
                low |= AF
        # Permissions come from a table indexed by the 9 bits that decide them (see
        # s1_perms): AP[2:1], PXN/UXN, the accumulated table attributes, DBM under HD.
        priv, user = self.perm_table[
            ((low >> 6) & 3) | (high & 0xC) | ((acc_or >> 55) & self.table_key_mask)
            | ((high << 8) & self.dbm_key_mask)
        ]
        perm = priv if access & ACCESS_PRIV else user
        if access:
            if access & PERM_MASK & ~perm:
                return permission_fault(self, h, pte_addr, pte)
            if access & ACCESS_W and low & AP_2 and self.hd and high & 1:  # DBM
                low &= ~AP_2  # hardware dirty-state update
            if low != old:
                failed = update_leaf(self, mem, pa, pte & ~0xFFF | low, h, pte_addr, pte)
                if failed is not None:
                    return failed
        # nG (bit 11) lands on ATTR_NG, AF (bit 10) on ATTR_ACCESSED (_ATTR_SHIFTS_HOLD).
        attrs = ((low >> 11) & 1) | ((low >> 8) & 4)
        if high & 1 and not low & AP_2:  # DBM, writable: dirty
            attrs |= ATTR_DIRTY
        size, offset_mask, addr_mask, level = self.leaf_consts[h]
        return tuple_new(Translation, ((pte & addr_mask) | (ia & offset_mask), size, level,
                                       perm, priv, user, attrs, pte, pte_addr))


_TAG_KEEP = (1 << 56) - 1
_ATTR_SHIFTS_HOLD = (NG >> 11, AF >> 8) == (ATTR_NG, ATTR_ACCESSED)
assert _ATTR_SHIFTS_HOLD, "ArmS1Table.finish moves nG and AF onto the Attr bits by shifts"


class ArmS1Config:
    """A stage-1 regime: both TTB halves (None where EPDx = 1) and TBI."""

    __slots__ = ("halves", "tag_masks", "expect", "stage", "_starts")

    def __init__(self, ttb0: ArmS1Table | None = None, ttb1: ArmS1Table | None = None, *,
                 tbi0: bool = False, tbi1: bool = False) -> None:
        self.stage = 1
        self.halves = (ttb0, ttb1)
        self.tag_masks = (_TAG_KEEP if tbi0 else (1 << 64) - 1,
                          _TAG_KEEP if tbi1 else (1 << 64) - 1)
        # Bits [top:IA] must equal the half's select bit: 0 for TTB0, all ones for TTB1.
        top1 = 56 if tbi1 else 64
        self.expect = (0, (1 << (top1 - ttb1.ia_bits)) - 1 if ttb1 is not None else 0)
        # Per half, what walk checks, in one lookup: (table, tag mask, input bits, expected
        # top bits, root or -1 when the root lies beyond the output size).
        self._starts = tuple(
            None if t is None else
            (t, self.tag_masks[i], t.ia_bits, self.expect[i],
             -1 if t.root & t.root_limit else t.root)
            for i, t in enumerate(self.halves))

    def walk(self, mem: MemoryPort, ia: int, access: int,
             s2: Walker | None = None) -> Translation | Fault:
        start = self._starts[(ia >> 55) & 1]  # the half is chosen by bit 55, tagged or not
        if start is None:
            return Fault(FaultKind.TRANSLATION, Reason.TTB_DISABLED, 1, None, None)
        t, tag_mask, ia_bits, expect, root = start
        if (ia & tag_mask) >> ia_bits != expect:
            return Fault(FaultKind.TRANSLATION, Reason.INPUT_RANGE, 1, None, None)
        if root < 0:
            return t.root_fault()
        return t.walk_from(mem, ia, root, access, s2)


class ArmS2Config(ArmFormat):
    """A stage-2 regime (STE S2* fields)."""

    __slots__ = ("affd", "ha", "hd", "xnx")

    def __init__(self, root: int, granule: int = 4096, tsz: int = 16,
                 start_level: int | None = None, oas: int = 48, *, affd: bool = False,
                 ha: bool = False, hd: bool = False, xnx: bool = False) -> None:
        ia_bits = 64 - tsz
        if start_level is None:
            start_level = default_s2_start_level(granule, ia_bits)
        if not s2_geometry_ok(granule, ia_bits, start_level, oas):
            raise ValueError(f"stage 2: {granule:#x} granule, {ia_bits}-bit IPA, "
                             f"start level {start_level}, {oas}-bit PA")
        super().__init__(2, root, granule, ia_bits, start_level, oas)
        self.affd = affd
        self.ha = ha
        self.hd = hd
        self.xnx = xnx

    @classmethod
    def decode(cls, s2ttb: int, s2t0sz: int, s2sl0: int, s2tg: int, s2ps: int, *,
               affd: bool = False, ha: bool = False, hd: bool = False,
               xnx: bool = False) -> ArmS2Config | BadConfig:
        """From STE fields (S2TG in TG0 encoding, S2PS in PS encoding)."""
        granule = TG0_GRANULES.get(s2tg)
        if granule is None:
            return BadConfig(f"S2TG {s2tg} reserved")
        if s2ps not in PS_BITS:
            return BadConfig(f"S2PS {s2ps} reserved")
        level = s2_start_level(granule, s2sl0)
        if level is None:
            return BadConfig(f"S2SL0 {s2sl0} reserved")
        if not s2_geometry_ok(granule, 64 - s2t0sz, level, PS_BITS[s2ps]):
            return BadConfig(f"S2T0SZ {s2t0sz} does not suit S2SL0 {s2sl0}")
        return cls(s2ttb, granule, s2t0sz, level, PS_BITS[s2ps], affd=affd, ha=ha, hd=hd,
                   xnx=xnx)

    def walk(self, mem: MemoryPort, ia: int, access: int) -> Translation | Fault:
        if ia >> self.ia_bits:
            return Fault(FaultKind.TRANSLATION, Reason.INPUT_RANGE, 2, None, None)
        if self.root & self.root_limit:
            return self.root_fault()
        return self.walk_from(mem, ia, self.root, access, None)

    def accumulators(self) -> tuple[bool, bool]:
        return False, False  # stage 2 has no hierarchical attributes

    def finish(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        acc_and: int, acc_or: int, access: int,
    ) -> Translation | Fault:
        size = self.sizes[h]
        new = pte
        if not pte & AF and not self.affd:
            if not self.ha:
                return self.fault(FaultKind.ACCESS_FLAG, Reason.ACCESS_FLAG, h, pte_addr, pte)
            if access:
                new |= AF
        clean = self.hd and pte & DBM and not pte & S2AP_W
        rw = (ACCESS_R if pte & S2AP_R else 0) | (ACCESS_W if pte & S2AP_W or clean else 0)
        if self.xnx:
            # XN[1:0]: 00 both, 01 EL0 only, 10 neither, 11 EL1 only may execute.
            xn = (pte >> S2XN_SHIFT) & 3
            priv = rw | (ACCESS_X if xn in (0, 3) else 0)
            user = rw | (ACCESS_X if xn in (0, 1) else 0)
        else:
            priv = user = rw if pte & UXN else rw | ACCESS_X
        perm = priv if access & ACCESS_PRIV else user
        if access & PERM_MASK & ~perm:
            return permission_fault(self, h, pte_addr, pte)
        if clean and access & ACCESS_W:
            new |= S2AP_W
        if new != pte:
            failed = update_leaf(self, mem, pa, new, h, pte_addr, pte)
            if failed is not None:
                return failed
        attrs = (ATTR_ACCESSED if new & AF else 0) | \
            (ATTR_DIRTY if pte & DBM and new & S2AP_W else 0)
        return tuple_new(Translation, ((pte & self.leaf_addr_masks[h]) | (ia & (size - 1)),
                                       size, 3 - h, perm, priv, user, attrs, pte, pte_addr))


def default_s2_start_level(granule: int, ia_bits: int) -> int:
    """A start level for building tables: the deepest legal one (fewest lookups, using
    up to 16 concatenated tables).  Linux concatenates only to avoid a level-0 start."""
    for level in (3, 2, 1, 0):
        if s2_geometry_ok(granule, ia_bits, level, PA_BITS_MAX):
            return level
    return s1_start_level(granule, ia_bits)
