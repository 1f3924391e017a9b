"""The generic page-table walker and its result types.

One loop walks every format (the shape of Linux ``drivers/iommu/generic_pt``): a format is a
``TableFormat`` holding per-level constants, and the loop only asks of each entry "empty,
table or leaf?" through masks:

* not present      ``pte & present_mask == 0``
* table            ``pte & type_mask[h] == table_type[h]``
* leaf             ``pte & type_mask[h] == leaf_type[h]``   (-1 in either: not at this level)
* anything else    a malformed entry (Arm: reserved descriptor type, Arm ARM D8.3;
                   x86/VT-d: PS where no large page is allowed, a reserved-bit fault)

Levels are counted by *height* ``h``: 0 is the table holding the smallest pages, the walk
starts at ``fmt.top`` and ``h`` strictly decreases, so a walk reads at most ``top + 1``
entries whatever the tables contain (cyclic tables included).  Each format names its levels
its own way (Arm: level 3 - h, Arm ARM D8.2; x86 and VT-d: level h + 1, VT-d spec 3.6-3.7);
results carry the format's own name in ``level``.

Permissions and access flags are format rules applied once, at the leaf, by
``TableFormat.finish``; what tables contribute comes in two accumulators (AND and OR of
every table entry on the way down), enough for x86 R/W and U/S (AND), XD (OR), Arm APTable
and XNTable (OR), VT-d R/W/X (AND).

Who checks permissions: the walker, when given an access (``ACCESS_R | ACCESS_W |
ACCESS_X``, plus ``ACCESS_PRIV`` for a privileged/supervisor request).  ``access == 0`` asks
for a pure lookup: no permission check, and no hardware update of A/D/AF bits.  The
translation always carries both privilege levels' permissions so a cache can check later.

Guest-caused problems are returned as ``Fault`` values, never raised (DESIGN.md invariant 4).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from types import CodeType
from typing import NamedTuple, Protocol

from devices.model import FaultKind, MemoryPort, Perm

ACCESS_R = int(Perm.R)
ACCESS_W = int(Perm.W)
ACCESS_X = int(Perm.X)
ACCESS_PRIV = 8
"""A privileged (Arm EL1 / x86 supervisor) request; absent means unprivileged/user."""
PERM_MASK = ACCESS_R | ACCESS_W | ACCESS_X

U64 = (1 << 64) - 1


class Reason(enum.IntEnum):
    """Why a walk faulted, finer than ``FaultKind``, so each IOMMU model can pick its own code
    (SMMUv3 event, VT-d fault reason)."""

    NOT_PRESENT = 1
    """Invalid / not-present entry (Arm bit0 = 0, x86 P = 0, VT-d R = W = 0)."""
    BAD_TYPE = 2
    """Arm: reserved descriptor type, or block where blocks are not allowed."""
    RESERVED = 3
    """x86 / VT-d: a reserved bit set (including PS where no large page is allowed)."""
    INPUT_RANGE = 4
    """Input address outside the configured input range (TxSZ, AGAW, both TTB halves)."""
    NON_CANONICAL = 5
    """x86: input address not canonical."""
    TTB_DISABLED = 6
    """Arm stage 1: the selected half has EPDx = 1."""
    OUTPUT_SIZE = 7
    """Arm: table or output address beyond the output address size (IPS/PS)."""
    WALK_ABORT = 8
    """A table entry could not be read (not guest RAM)."""
    ACCESS_FLAG = 9
    PERMISSION = 10
    SUPERVISOR = 11
    """VT-d first stage: a supervisor request while the PASID entry has SRE = 0."""
    UPDATE_FAILED = 12
    """A hardware A/D/AF update could not be written."""


class Attr(enum.IntFlag):
    """Translation attributes beyond permissions (``Translation.attrs``)."""

    NG = 1
    """Arm nG: the translation is tagged with the ASID."""
    GLOBAL = 2
    """x86 G."""
    ACCESSED = 4
    """AF / A set in the leaf (after any hardware update)."""
    DIRTY = 8
    """x86/VT-d D set, or Arm writable (AP[2] = 0 / S2AP[1] = 1) with DBM = 1."""
    SNOOP = 16
    """VT-d SNP."""


# Attr values as plain ints for the hot path (IntFlag arithmetic costs microseconds).
ATTR_NG = 1
ATTR_GLOBAL = 2
ATTR_ACCESSED = 4
ATTR_DIRTY = 8
ATTR_SNOOP = 16


class Translation(NamedTuple):
    """A successful walk.  ``oa`` is the output address of the input address itself;
    ``size`` is the naturally aligned page/block holding it.  Permission fields hold
    ``Perm`` bits as plain ints (cheap to build and to AND)."""

    oa: int
    size: int
    level: int
    perm: int
    """Permissions for the privilege of the request (``ACCESS_PRIV`` in the access)."""
    priv_perm: int
    user_perm: int
    attrs: int
    pte: int
    """The leaf entry as read (before any hardware update)."""
    pte_addr: int
    """Address of the leaf entry, in the space the tables live in (IPA when nested)."""

    @classmethod
    def of(cls, oa: int, size: int, level: int, perm: int, priv_perm: int, user_perm: int,
           attrs: int, pte: int, pte_addr: int) -> Translation:
        """Build one without NamedTuple's Python-level ``__new__`` (a walk's hottest
        allocation)."""
        return _tuple_new(cls, (oa, size, level, perm, priv_perm, user_perm, attrs, pte,
                                pte_addr))

    def allows(self, access: int) -> bool:
        perm = self.priv_perm if access & ACCESS_PRIV else self.user_perm
        return not access & PERM_MASK & ~perm


tuple_new = tuple.__new__
"""``tuple_new(Translation, fields)``: a Translation without a Python-level call (what
``Translation.of`` does, inlined where walks end)."""
_tuple_new = tuple_new


class Fault(NamedTuple):
    """A failed walk: data, handed to the IOMMU model to report."""

    kind: FaultKind
    reason: Reason
    stage: int
    level: int | None
    """Level of the entry that decided it (format's numbering); None before any entry."""
    pte_addr: int | None
    """Address of that entry (IPA for a stage-1 entry when nested)."""
    pte: int | None = None
    s1ptw: bool = False
    """Stage-2 fault while translating a stage-1 table address."""
    ipa: int | None = None
    """The IPA whose stage-2 translation failed (stage-2 faults when nested)."""


class Walker(Protocol):
    """A configured translation regime (one stage, or nested)."""

    stage: int

    def walk(self, mem: MemoryPort, ia: int, access: int) -> Translation | Fault: ...


class Stage1Walker(Walker, Protocol):
    """A stage whose table reads may themselves go through a stage 2 (nesting)."""

    def walk(
        self, mem: MemoryPort, ia: int, access: int, s2: Walker | None = None
    ) -> Translation | Fault: ...


class TableFormat:
    """Per-configuration constants of one table tree, precomputed once (indexed by height).

    Subclasses fill these in their constructors and implement ``finish``.
    """

    __slots__ = (
        "stage", "top", "shifts", "index_masks", "type_masks", "table_types", "leaf_types",
        "present_mask", "bad_type_reason", "table_addr_mask", "leaf_addr_masks",
        "rsvd_table", "rsvd_leaf", "oa_limit_mask", "level_names", "table_set", "steps",
        "access_steps", "word_steps", "access_word_steps", "walk_from",
    )

    stage: int
    top: int
    shifts: tuple[int, ...]
    index_masks: tuple[int, ...]
    type_masks: tuple[int, ...]
    table_types: tuple[int, ...]
    leaf_types: tuple[int, ...]
    present_mask: int
    bad_type_reason: Reason
    table_addr_mask: int
    leaf_addr_masks: tuple[int, ...]
    rsvd_table: tuple[int, ...]
    rsvd_leaf: tuple[int, ...]
    oa_limit_mask: int
    """Address bits beyond the output size: set in an entry ⇒ address-size fault (Arm)."""
    level_names: tuple[int, ...]
    table_set: int
    """Bits hardware sets in every table entry it uses (x86/VT-d A) when updating."""
    steps: tuple[tuple[int, int, int, int, int, int, int, int, int, int], ...]
    """The per-level constants the loop unpacks, top level first (``prepare``), for a
    lookup (no hardware updates)."""
    access_steps: tuple[tuple[int, int, int, int, int, int, int, int, int, int], ...]
    """The same for a request, whose walk sets ``table_set`` in the tables it uses."""
    word_steps: tuple[tuple[int, int, int, int, int, int, int], ...] | None
    """For the direct walk over plain guest memory (``walk_tables``): (h, shift, index mask,
    clean mask, clean value, leaf mask, leaf value) per level, top first; None when the
    table addresses are not 8-byte aligned."""
    access_word_steps: tuple[tuple[int, int, int, int, int, int, int], ...] | None
    walk_from: WalkFrom
    """``walk_tables`` for this format: ``walk_from(mem, ia, table, access, s2=None)``, with
    ``word_steps`` and ``access_word_steps`` unrolled into straight-line code
    (``compile_walk``)."""

    def prepare(self) -> None:
        """Derive ``steps`` once the per-level tuples are set (end of every constructor):
        (h, shift, index mask, clean mask, clean value, type mask, table type, leaf type,
        table bad-bits, leaf bad-bits), where bad bits are the reserved bits plus the
        beyond-output-size bits, and ``pte & clean mask == clean value`` picks out the
        common case, a *clean table entry*: present, of table type, no bad bit, and (in
        ``access_steps``) nothing for hardware to set, so the walk only goes down."""
        self.steps = tuple(self._step(h, 0) for h in range(self.top, -1, -1))
        self.access_steps = tuple(self._step(h, self.table_set)
                                  for h in range(self.top, -1, -1))
        self.word_steps = self.access_word_steps = None
        if not self.table_addr_mask & 7:
            self.word_steps = tuple(step[:5] + self._clean_leaf(step[0])
                                    for step in self.steps)
            self.access_word_steps = tuple(step[:5] + self._clean_leaf(step[0])
                                           for step in self.access_steps)
        self.walk_from = compile_walk(self)

    def _clean_leaf(self, h: int) -> tuple[int, int]:
        """(mask, value): ``pte & mask == value`` picks out a *clean leaf*, one that passes
        every check of the loop before ``finish`` (present, of leaf type and not of table
        type, no bad bit); where that cannot be told by one test, nothing matches."""
        leaf_bad = self.rsvd_leaf[h] | self.oa_limit_mask
        mask = self.present_mask | self.type_masks[h] | leaf_bad
        value = self.present_mask | self.leaf_types[h]
        if (self.leaf_types[h] < 0 or not self.present_mask
                or self.leaf_types[h] == self.table_types[h]
                or value & self.type_masks[h] != self.leaf_types[h] or value & leaf_bad):
            return 0, 1
        return mask, value

    def _step(self, h: int, table_set: int) -> tuple[int, int, int, int, int, int, int, int,
                                                         int, int]:
        table_bad = self.rsvd_table[h] | self.oa_limit_mask
        clean_mask = self.present_mask | self.type_masks[h] | table_bad | table_set
        clean_value = self.present_mask | self.table_types[h] | table_set
        # Matching must imply every check of the loop; where it cannot (no table type at
        # this level, present bits that contradict the table type, or that are bad), the
        # test is one nothing matches.
        if (self.table_types[h] < 0 or not self.present_mask
                or clean_value & self.type_masks[h] != self.table_types[h]
                or clean_value & table_bad):
            clean_mask, clean_value = 0, 1
        return (h, self.shifts[h], self.index_masks[h], clean_mask, clean_value,
                self.type_masks[h], self.table_types[h], self.leaf_types[h], table_bad,
                self.rsvd_leaf[h] | self.oa_limit_mask)

    def accumulators(self) -> tuple[bool, bool]:
        """Whether ``finish`` reads ``acc_and`` and ``acc_or``; the direct walk does not
        keep one that is never read (each costs two 64-bit operations per level)."""
        return True, True

    def finish(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        acc_and: int, acc_or: int, access: int,
    ) -> Translation | Fault:
        """Turn a well-formed leaf into a translation (or an AF/permission fault).

        ``pa`` is where the leaf really is (differs from ``pte_addr`` when nested), for
        hardware updates; -1 when stage 2 forbids writing it)."""
        raise NotImplementedError

    def fault(self, kind: FaultKind, reason: Reason, h: int, pte_addr: int,
              pte: int | None = None) -> Fault:
        return Fault(kind, reason, self.stage, self.level_names[h], pte_addr, pte)


class AccessDirtyFormat(TableFormat):
    """A format whose leaves carry Accessed and Dirty bits that hardware sets when the
    context enables it (``ad``): x86 first stage (A 5, D 6) and VT-d second stage (A 8, D 9).
    ``finish_ad`` is the common end of their ``finish``."""

    __slots__ = ("ad", "sizes")

    ad: bool
    sizes: tuple[int, ...]
    A: int
    D: int

    def finish_ad(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        access: int, priv: int, user: int, attrs: int,
    ) -> Translation | Fault:
        """The permission check, the A/D update a request makes, and the translation."""
        perm = priv if access & ACCESS_PRIV else user
        if access & PERM_MASK & ~perm:
            return permission_fault(self, h, pte_addr, pte)
        new = pte
        if self.ad and access:
            new = pte | self.A | (self.D if access & ACCESS_W else 0)
            if new != pte:
                failed = update_leaf(self, mem, pa, new, h, pte_addr, pte)
                if failed is not None:
                    return failed
        size = self.sizes[h]
        attrs |= (ATTR_ACCESSED if new & self.A else 0) | (ATTR_DIRTY if new & self.D else 0)
        return tuple_new(Translation, ((pte & self.leaf_addr_masks[h]) | (ia & (size - 1)),
                                       size, self.level_names[h], perm, priv, user, attrs, pte,
                                       pte_addr))


def walk_tables(
    fmt: TableFormat, mem: MemoryPort, ia: int, table: int, access: int,
    s2: Walker | None = None,
) -> Translation | Fault:
    """Walk ``fmt``'s tree rooted at ``table`` for input address ``ia``.

    The caller has already checked ``ia`` against the input range.  With ``s2``, every table
    address is an IPA translated by ``s2`` before it is read (nested translation); a fault
    there comes back as a stage-2 fault with ``s1ptw`` set.

    This is ``fmt.walk_from`` (``compile_walk``), which the formats' own walks call
    directly: on plain guest memory (a class that itself declares ``direct_words``, so never
    a recording, replaying or observing wrapper, nor a subclass: they must see every read
    through read_u64), clean entries of the root table's region are read straight from its
    mapping as u64 words, the values read_u64 gives.  Anything else (an entry outside that
    region, a fault, an entry hardware must update) walks again in ``walk_loop``, reading
    every entry through read_u64; nothing has been written by then, so it decides exactly
    as if it had been first.
    """
    return fmt.walk_from(mem, ia, table, access, s2)


def walk_loop(
    fmt: TableFormat, mem: MemoryPort, ia: int, table: int, access: int,
    s2: Walker | None = None,
) -> Translation | Fault:
    """``walk_tables`` entry by entry through ``mem.read_u64`` (and ``s2``): the definition
    the direct walk follows, and the path of everything it does not take."""
    read = mem.read_u64
    present = fmt.present_mask
    table_addr_mask = fmt.table_addr_mask
    table_set = fmt.table_set if access else 0
    acc_and = U64
    acc_or = 0
    s2_writable = ACCESS_W
    # One pass per level, top first: the walk reads at most top + 1 entries whatever the
    # tables contain (cyclic ones included), and the level-0 step has no table type.
    for h, shift, index_mask, clean_mask, clean_value, type_mask, table_type, leaf_type, \
            table_bad, leaf_bad in (fmt.access_steps if access else fmt.steps):
        pte_addr = table + (((ia >> shift) & index_mask) << 3)
        pa = pte_addr
        if s2 is not None:
            t2 = s2.walk(mem, pte_addr, ACCESS_R)
            if isinstance(t2, Fault):
                return t2._replace(s1ptw=True, ipa=pte_addr)
            pa = t2.oa
            s2_writable = t2.perm & ACCESS_W
        pte = read(pa)
        if pte is not None and pte & clean_mask == clean_value:
            # A clean table entry (prepare): all the checks below would pass.
            acc_and &= pte
            acc_or |= pte
            table = pte & table_addr_mask
            continue
        if pte is None:
            return fmt.fault(FaultKind.EXTERNAL_ABORT, Reason.WALK_ABORT, h, pte_addr)
        if not pte & present:
            return fmt.fault(FaultKind.TRANSLATION, Reason.NOT_PRESENT, h, pte_addr, pte)
        kind = pte & type_mask
        if kind == table_type:
            if pte & table_bad:
                return bad_entry(fmt, pte, h, pte_addr, fmt.rsvd_table[h])
            if table_set and pte & table_set != table_set:
                if not s2_writable:
                    return s2_update_fault(pte_addr)
                if not mem.write_u64(pa, pte | table_set):
                    return fmt.fault(FaultKind.EXTERNAL_ABORT, Reason.UPDATE_FAILED, h,
                                     pte_addr, pte)
            acc_and &= pte
            acc_or |= pte
            table = pte & table_addr_mask
            continue
        if kind != leaf_type:
            return fmt.fault(FaultKind.TRANSLATION, fmt.bad_type_reason, h, pte_addr, pte)
        if pte & leaf_bad:
            return bad_entry(fmt, pte, h, pte_addr, fmt.rsvd_leaf[h])
        if not s2_writable:
            pa = -1  # stage 2 forbids hardware updates of this leaf (see update_leaf)
        return fmt.finish(mem, ia, pte, pte_addr, pa, h, acc_and, acc_or, access)
    return Fault(FaultKind.TRANSLATION, fmt.bad_type_reason, fmt.stage, None, None)


_NATIVE_LE = sys.byteorder == "little"  # native u64 words of a mapping are the entries
_DIRECT: dict[type, bool] = {}  # memory class -> whether walk_tables reads its words directly

WalkFrom = Callable[[MemoryPort, int, int, int, "Walker | None"], "Translation | Fault"]


def direct_words(cls: type) -> bool:
    """Whether the walker may read tables of memory of class ``cls`` straight from its
    words (``walk_tables``), remembered per class."""
    direct = _DIRECT.get(cls)
    if direct is None:
        direct = _DIRECT[cls] = bool(cls.__dict__.get("direct_words")) and _NATIVE_LE
    return direct


def compile_walk(fmt: TableFormat) -> WalkFrom:
    """``walk_tables`` for ``fmt`` as one function, its direct walk unrolled.

    Looping over ``word_steps`` costs a tuple unpack and a dozen name loads per level, more
    than the level's own work; unrolled, each level is an index, one read and one mask
    test, with the format's constants written in as literals.  The code does exactly what
    that loop did: the same reads in the same order, clean table entries go down, a clean
    leaf goes to ``fmt.finish``, anything else goes to ``walk_loop`` from the root.  An
    index past the end of the words is caught as the IndexError of reading it (a try costs
    nothing until it catches, a bounds test costs every level).  A test that can never
    match (mask 0, value 1) is left out, with the branch it guards, and so is an
    accumulator ``finish`` does not read (``TableFormat.accumulators``).

    Compiling costs about a millisecond, five times the rest of building a format, so the
    code is kept per shape of format (``_WALK_CODE``) and each format only binds its own
    names to it."""
    key = (fmt.word_steps, fmt.access_word_steps, fmt.table_addr_mask, *fmt.accumulators())
    code = _WALK_CODE.get(key)
    if code is None:
        if len(_WALK_CODE) >= _WALK_CODE_MAX:  # shapes come from guests: keep it bounded
            del _WALK_CODE[next(iter(_WALK_CODE))]
        code = _WALK_CODE[key] = compile(_walk_source(*key), "<walk_from>", "exec")
    namespace: dict[str, object] = {
        "U64": U64, "DIRECT": _DIRECT, "direct_words": direct_words, "loop": walk_loop,
        "fmt": fmt, "finish": fmt.finish, "last_mem": None, "last_generation": -1,
        "last_table": -1, "last_lo": 0, "last_words": None, "last_tw": 0,
    }
    exec(code, namespace)
    return namespace["walk_from"]  # type: ignore[return-value]


Steps = tuple[tuple[int, int, int, int, int, int, int], ...]
_WALK_CODE: dict[tuple[Steps | None, Steps | None, int, bool, bool], CodeType] = {}
_WALK_CODE_MAX = 512


def _walk_source(word_steps: Steps | None, access_word_steps: Steps | None,
                 table_addr_mask: int, keep_and: bool, keep_or: bool) -> str:
    slow = "return loop(fmt, mem, ia, table, access, s2)"
    lines = ["def walk_from(mem, ia, table, access, s2=None):"]
    if word_steps is None or access_word_steps is None:
        lines.append("    " + slow)
        return "\n".join(lines)
    # The root's region is remembered with the memory's generation, which moves on every
    # change of its table (the region's words stay valid until then).  Holding the last
    # memory keeps no mapping alive: closing a region unmaps it.  One walk at a time per
    # format, like the rest of the device side (one trio thread).
    lines += ["    global last_mem, last_generation, last_table, last_lo, last_words, last_tw",
              "    if (mem is last_mem and table == last_table and s2 is None",
              "            and mem.generation == last_generation):",
              "        lo = last_lo",
              "        words = last_words",
              "        tw = last_tw",
              "    else:",
              "        direct = DIRECT.get(type(mem))",
              "        if direct is None:",
              "            direct = direct_words(type(mem))",
              "        if not direct or s2 is not None or table & 7:",
              "            " + slow,
              "        span = mem.u64_span(table)",
              "        if span is None:",
              "            " + slow,
              "        lo, _, words = span",
              "        tw = (table - lo) >> 3  # the root's word index",
              "        last_mem, last_generation, last_table = mem, mem.generation, table",
              "        last_lo, last_words, last_tw = lo, words, tw"]
    lines += ["    acc_and = U64"] if keep_and else []
    lines += ["    acc_or = 0"] if keep_or else []
    for test, steps in (("if access:", access_word_steps), ("else:", word_steps)):
        lines.append("    " + test)
        lines += ["        " + line
                  for line in _descent(steps, table_addr_mask, keep_and, keep_or, slow)]
    return "\n".join(lines)


def _descent(steps: Steps, table_addr_mask: int, keep_and: bool, keep_or: bool,
             slow: str) -> list[str]:
    top = steps[0][0]
    lines = []
    for h, shift, index_mask, clean_mask, clean_value, leaf_mask, leaf_value in steps:
        lines += [f"i = tw + ((ia >> {shift}) & {index_mask:#x})"]
        if h != top:  # the root lies in the region: only a lower table can lie below it
            lines += ["if i < 0:",
                      "    " + slow]
        lines += ["try:",
                  "    entry = words[i]",
                  "except IndexError:  # past the end of the words",
                  "    " + slow]
        leaf = _leaf_lines(h, leaf_mask, leaf_value, keep_and, keep_or, slow)
        if (clean_mask, clean_value) != (0, 1):
            lines += [f"if entry & {clean_mask:#x} == {clean_value:#x}:"]
            lines += ["    acc_and &= entry"] if keep_and else []
            lines += ["    acc_or |= entry"] if keep_or else []
            lines += [f"    tw = ((entry & {table_addr_mask:#x}) - lo) >> 3",
                      "else:"]
            lines += ["    " + line for line in leaf]
        else:
            lines += leaf
    lines.append(slow)
    return lines


def _leaf_lines(h: int, leaf_mask: int, leaf_value: int, keep_and: bool, keep_or: bool,
                slow: str) -> list[str]:
    """A clean leaf at height ``h`` goes to ``finish``; anything else to the loop.  An
    accumulator ``finish`` does not read goes as its starting value."""
    if (leaf_mask, leaf_value) == (0, 1):
        return [slow]
    acc_and = "acc_and" if keep_and else "U64"
    acc_or = "acc_or" if keep_or else "0"
    return [f"if entry & {leaf_mask:#x} == {leaf_value:#x}:",
            "    pte_addr = lo + (i << 3)",
            f"    return finish(mem, ia, entry, pte_addr, pte_addr, {h}, {acc_and}, {acc_or}, "
            "access)",
            slow]


def bad_entry(fmt: TableFormat, pte: int, h: int, pte_addr: int, rsvd: int) -> Fault:
    """Reserved bits (a translation fault) come before an address-size fault."""
    if pte & rsvd:
        return fmt.fault(FaultKind.TRANSLATION, Reason.RESERVED, h, pte_addr, pte)
    return fmt.fault(FaultKind.ADDRESS_SIZE, Reason.OUTPUT_SIZE, h, pte_addr, pte)


def s2_update_fault(ipa: int) -> Fault:
    """Stage 2 does not let hardware update the stage-1 entry at ``ipa``: the update is a
    stage-2 write made by the table walk (Arm ARM D8, hardware management of the Access
    flag and dirty state)."""
    return Fault(FaultKind.PERMISSION, Reason.PERMISSION, 2, None, None, None, True, ipa)


def update_leaf(
    fmt: TableFormat, mem: MemoryPort, pa: int, new: int, h: int, pte_addr: int, pte: int
) -> Fault | None:
    """Write a hardware-updated leaf (AF, A/D, DBM); a fault if that is impossible.

    ``pa`` is -1 when stage 2 forbids writing the leaf's page."""
    if pa < 0:
        return s2_update_fault(pte_addr)
    if mem.write_u64(pa, new):
        return None
    return fmt.fault(FaultKind.EXTERNAL_ABORT, Reason.UPDATE_FAILED, h, pte_addr, pte)


def permission_fault(fmt: TableFormat, h: int, pte_addr: int, pte: int) -> Fault:
    return fmt.fault(FaultKind.PERMISSION, Reason.PERMISSION, h, pte_addr, pte)
