"""The C fast path of the walker (cffi), with the pure-Python walker as its fallback.

DESIGN.md "Dependencies": the walker in C, built at install time (``setup.py`` →
``_cwalk_build.py``), giving results identical to the Python walker, which stays the
definition of every rule.  ``_cwalk_core.c`` transcribes ``walk_tables`` and each format's
``finish`` step for step; this module copies a configured walker's precomputed constants
into C structures, and keeps the pure-Python walk as the path taken whenever C cannot be:

* the extension was not built (no compiler at install time) or ``VIOMMU_NO_C`` is set to
  anything but ``""``/``"0"`` → ``HAVE_C`` is False and every walk is the Python one;
* the walker is not one C knows (``ArmS1Config``, ``ArmS2Config``, ``X86FirstStage``,
  ``VtdSecondStage``, and ``Nested`` of those) → Python;
* the memory is not region memory (``regions`` of ``gpa``/``size``/``mm``, as
  ``vmm.memory.GuestMemory``), e.g. a recording or counting port → Python, so that every
  read still passes the port;
* an input address or access outside the C types → Python.

Use::

    fw = FastWalker(walker)                      # once per configuration
    fw.walk(mem, iova, ACCESS_R)                 # Translation | Fault, as walker.walk
    out = WalkResults(1024)                      # preallocated result arrays
    fw.walk_batch(mem, iovas, out, ACCESS_R)     # iovas: array('Q') / any u64 buffer

A ``FastWalker`` snapshots the walker's configuration: build a new one when the
configuration changes (configurations are decoded from guest structures and not mutated).
A batch writes into ``WalkResults``' ``array('Q')`` columns: no Python object per result;
``WalkResults.result(i)`` rebuilds the ``Translation`` or ``Fault``, equal to the Python
walker's.  The info word of each result is described in ``_cwalk_core.h``.

Guest memory: the C code reads and writes the regions' mappings through raw pointers taken
once per memory table and checks every access against the region bounds.  The pointers are
reused only while the table is the same: GuestMemory's ``generation`` has not moved (it
counts table changes), or, for a memory without that counter, its ``regions`` are the very
same region objects.  GuestMemory replaces its table before it closes a region, so a table
that is still current has no closed mapping.  No buffer export is held between calls, so
GuestMemory stays free to close and remap regions.  Not thread-safe (one result buffer per
FastWalker), like the daemon.

Speed (scripts/bench_translate.py): one C call per walk costs about as much as a Python
IOTLB hit, so C pays in batches; a batch walks groups of 16 addresses in lockstep where no
walk can write guest memory (``_cwalk_core.c``, "Batches overlap walks").
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from collections.abc import Collection, Iterable
from typing import Any, Final

from devices.model import FaultKind, MemoryPort

from .arm import ArmS1Config, ArmS1Table, ArmS2Config
from .nested import Nested
from .vtdss import VtdSecondStage
from .walker import U64, Fault, Reason, TableFormat, Translation, Walker
from .x86 import X86FirstStage


def _load() -> tuple[Any, Any]:
    try:
        from ._cwalk import ffi, lib
    except ImportError:  # not built: no compiler at install time
        return None, None
    return ffi, lib


_ffi, _lib = _load()

BUILT: Final = _lib is not None
"""The extension was built and imports."""
HAVE_C: Final = BUILT and os.environ.get("VIOMMU_NO_C", "") in ("", "0")
"""Walks use C where they can (``BUILT`` and not disabled by ``VIOMMU_NO_C``)."""

U32 = 0xFFFF_FFFF

# -- the info word (_cwalk_core.h cw_walk_batch) -------------------------------------------
HAS_LEVEL = 1
HAS_PTE_ADDR = 2
HAS_PTE = 4
HAS_IPA = 8

_NEVER = U64  # an entry type that never matches (the Python walker's -1)
_KINDS = {ArmS1Table: 1, ArmS2Config: 2, X86FirstStage: 3, VtdSecondStage: 4}
_REGIONS_CACHED = 8

_tuple_new = tuple.__new__
_UNPACK9 = struct.Struct("<9Q").unpack_from


def pack(result: Translation | Fault) -> tuple[int, int, int, int, int]:
    """(oa, info, pte, pte_addr, ipa) of a result, as a batch stores it."""
    if isinstance(result, Translation):
        info = (result.level << 8 | result.perm << 16 | result.priv_perm << 24
                | result.user_perm << 32 | result.attrs << 40
                | (result.size.bit_length() - 1) << 48)
        return result.oa, info, result.pte, result.pte_addr, 0
    has = ((HAS_LEVEL if result.level is not None else 0)
           | (HAS_PTE_ADDR if result.pte_addr is not None else 0)
           | (HAS_PTE if result.pte is not None else 0)
           | (HAS_IPA if result.ipa is not None else 0))
    info = (int(result.kind) | int(result.reason) << 8 | result.stage << 16
            | (result.level or 0) << 24 | int(result.s1ptw) << 32 | has << 36)
    return 0, info, result.pte or 0, result.pte_addr or 0, result.ipa or 0


def unpack(oa: int, info: int, pte: int, pte_addr: int, ipa: int) -> Translation | Fault:
    """The result ``pack`` stored (inverse of ``pack``)."""
    kind = info & 0xFF
    if not kind:
        return Translation.of(oa, 1 << ((info >> 48) & 0xFF), (info >> 8) & 0xFF,
                              (info >> 16) & 0xFF, (info >> 24) & 0xFF, (info >> 32) & 0xFF,
                              (info >> 40) & 0xFF, pte, pte_addr)
    has = (info >> 36) & 0xF
    return Fault(FaultKind(kind), Reason((info >> 8) & 0xFF), (info >> 16) & 0xFF,
                 (info >> 24) & 0xFF if has & HAS_LEVEL else None,
                 pte_addr if has & HAS_PTE_ADDR else None,
                 pte if has & HAS_PTE else None,
                 bool((info >> 32) & 1),
                 ipa if has & HAS_IPA else None)


FIELDS = ("oa", "info", "pte", "pte_addr", "ipa")
"""The columns of ``WalkResults``, in the order of ``struct cw_results``."""


class WalkResults:
    """Preallocated results of ``walk_batch``: five ``array('Q')`` columns, index i for the
    i-th input address.  ``info[i] & 0xFF`` is 0 for a translation, else the FaultKind."""

    __slots__ = ("capacity", "fields", "oa", "info", "pte", "pte_addr", "ipa", "_views", "_c")

    def __init__(self, capacity: int, fields: Collection[str] = FIELDS) -> None:
        if capacity < 0:
            raise ValueError(f"capacity {capacity}")
        unknown = set(fields) - set(FIELDS)
        if unknown or "info" not in fields:
            raise ValueError(f"fields {sorted(fields)}: info and any of {FIELDS}")
        self.capacity = capacity
        self.fields = tuple(name for name in FIELDS if name in fields)
        zero = bytes(8 * capacity)
        # A column not asked for is empty and never written: a batch then moves fewer
        # bytes per walk (five columns of 1024 walks fill a 32 KiB L1 data cache).
        self.oa = array("Q", zero if "oa" in fields else b"")
        self.info = array("Q", zero)
        self.pte = array("Q", zero if "pte" in fields else b"")
        self.pte_addr = array("Q", zero if "pte_addr" in fields else b"")
        self.ipa = array("Q", zero if "ipa" in fields else b"")
        # The C views pin the arrays' size (resizing them raises BufferError); the struct
        # hands all five to a batch in one argument, NULL for a column not kept.
        self._c: Any = None
        if _ffi is not None:
            self._views = tuple(
                _ffi.from_buffer("uint64_t[]", column) if name in fields else _ffi.NULL
                for name, column in zip(FIELDS, self.columns, strict=True))
            self._c = _ffi.new("struct cw_results *", self._views)

    @property
    def columns(self) -> tuple[array[int], ...]:
        return (self.oa, self.info, self.pte, self.pte_addr, self.ipa)

    def ok(self, i: int) -> bool:
        """Whether result ``i`` is a translation."""
        return not self.info[i] & 0xFF

    def result(self, i: int) -> Translation | Fault:
        """Result ``i`` whole; needs every column (``FIELDS``)."""
        return unpack(self.oa[i], self.info[i], self.pte[i], self.pte_addr[i], self.ipa[i])


# -- guest memory for C ----------------------------------------------------------------------

class _CMemory:
    """A C region table for one memory table: valid while the memory's ``generation`` is
    ``generation`` (GuestMemory counts its table changes), or, for a memory without that
    counter, while its ``regions`` are these very objects."""

    __slots__ = ("mem", "regions", "generation", "table", "entries")

    def __init__(self, mem: object, regions: tuple[Any, ...], table: Any, entries: Any) -> None:
        self.mem = mem
        self.regions = regions
        generation = getattr(mem, "generation", None)
        self.generation = generation if isinstance(generation, int) else None
        self.table = table
        self.entries = entries  # owns the region array the table points to

    def current(self, mem: object) -> bool:
        if mem is not self.mem:
            return False
        if self.generation is not None:
            return getattr(mem, "generation", None) == self.generation
        return getattr(mem, "regions", None) == self.regions


_memories: dict[int, _CMemory] = {}


def _c_memory(mem: MemoryPort) -> _CMemory | None:
    """The C region table of ``mem``, or None when C cannot read it."""
    cached = _memories.get(id(mem))
    if cached is not None and cached.current(mem):
        return cached
    regions = getattr(mem, "regions", None)
    if not isinstance(regions, tuple):
        return None
    made = _make_c_memory(mem, regions)
    if made is None:
        return None
    if len(_memories) >= _REGIONS_CACHED:
        del _memories[next(iter(_memories))]
    _memories[id(mem)] = made
    return made


def _make_c_memory(mem: object, regions: tuple[Any, ...]) -> _CMemory | None:
    entries = _ffi.new("struct cw_region[]", max(len(regions), 1))
    end = -1
    for i, region in enumerate(regions):
        gpa = getattr(region, "gpa", None)
        size = getattr(region, "size", None)
        mm = getattr(region, "mm", None)
        if not (isinstance(gpa, int) and isinstance(size, int) and isinstance(mm, mmap.mmap)):
            return None
        if mm.closed or len(mm) < size or gpa <= end or size <= 0 or gpa + size > U64:
            return None  # unsorted or overlapping tables are not GuestMemory's
        try:
            with _ffi.from_buffer("uint8_t[]", mm, require_writable=True) as view:
                host = _ffi.cast("uint8_t *", view)
        except (TypeError, ValueError, BufferError):
            return None
        entries[i].gpa = gpa
        entries[i].size = size
        entries[i].host = host
        end = gpa + size - 1
    table = _ffi.new("struct cw_memory *")
    table.regions = entries
    table.count = len(regions)
    return _CMemory(mem, regions, table, entries)


# -- compiling a walker --------------------------------------------------------------------

def _fill_table(ct: Any, t: TableFormat) -> None:
    """Copy ``t``'s constants (walker.py TableFormat, prepared) into a ``struct cw_table``."""
    ct.kind = _KINDS[type(t)]
    ct.stage = t.stage
    ct.top = t.top
    ct.bad_type_reason = int(t.bad_type_reason)
    ct.present_mask = t.present_mask
    ct.table_addr_mask = t.table_addr_mask
    ct.table_set = t.table_set
    if t.top >= _lib.CW_MAX_LEVELS:
        raise ValueError(f"{t.top + 1} levels")
    for h, shift, index_mask, clean_mask, clean_value, type_mask, table_type, leaf_type, \
            table_bad, leaf_bad in t.steps:
        lv = ct.lv[h]
        lv.shift = shift
        lv.index_mask = index_mask
        lv.fast_mask = clean_mask
        lv.fast_value = clean_value
        lv.type_mask = type_mask
        lv.table_type = _NEVER if table_type < 0 else table_type
        lv.leaf_type = _NEVER if leaf_type < 0 else leaf_type
        lv.table_bad = table_bad
        lv.leaf_bad = leaf_bad
        lv.rsvd_table = t.rsvd_table[h]
        lv.rsvd_leaf = t.rsvd_leaf[h]
        lv.leaf_addr_mask = t.leaf_addr_masks[h]
        lv.level = t.level_names[h]
    if isinstance(t, ArmS1Table):
        ct.root = t.root
        ct.root_limit = t.root_limit & U64
        ct.ia_bits = t.ia_bits
        ct.start_level = t.start_level
        ct.table_key_mask = t.table_key_mask
        ct.dbm_key_mask = t.dbm_key_mask
        ct.ha = t.ha
        ct.hd = t.hd
        for key, (priv, user) in enumerate(t.perm_table):
            ct.perm_table[key] = priv | user << 4
    elif isinstance(t, ArmS2Config):
        ct.root = t.root
        ct.root_limit = t.root_limit & U64
        ct.input_limit = U64 & ~((1 << t.ia_bits) - 1)
        ct.ia_bits = t.ia_bits
        ct.start_level = t.start_level
        ct.affd = t.affd
        ct.ha = t.ha
        ct.hd = t.hd
        ct.xnx = t.xnx
    elif isinstance(t, X86FirstStage):
        ct.root = t.root
        ct.sign_shift = t.va_bits - 1
        ct.sign_ones = (1 << (65 - t.va_bits)) - 1
        ct.sre = t.sre
        ct.wpe = t.wpe
        ct.smep = t.smep
        ct.ad = t.ad
    elif isinstance(t, VtdSecondStage):
        ct.root = t.root
        ct.input_limit = U64 & ~((1 << t.input_bits) - 1) if t.input_bits < 64 else 0
        ct.ssee = t.ssee
        ct.ad = t.ad


def _fill_regime(cr: Any, regime: object) -> None:
    if type(regime) is ArmS1Config:
        cr.kind = _KINDS[ArmS1Table]
        for i, half in enumerate(regime.halves):
            if half is not None:
                if type(half) is not ArmS1Table:
                    raise TypeError(type(half).__name__)
                _fill_table(cr.t[i], half)
                cr.halves |= 1 << i
            cr.tag_mask[i] = regime.tag_masks[i]
            cr.expect[i] = regime.expect[i]
    elif type(regime) in (ArmS2Config, X86FirstStage, VtdSecondStage):
        assert isinstance(regime, TableFormat)
        cr.kind = _KINDS[type(regime)]
        _fill_table(cr.t[0], regime)
    else:
        raise TypeError(type(regime).__name__)


def _compile(walker: Walker) -> Any:
    """A ``struct cw_walker *`` for ``walker``, or None when C does not know it."""
    cw = _ffi.new("struct cw_walker *")
    try:
        if type(walker) is Nested:
            if type(walker.s1) not in (ArmS1Config, X86FirstStage) or \
                    type(walker.s2) not in (ArmS2Config, VtdSecondStage):
                return None
            cw.nested = 1
            _fill_regime(cw.s1, walker.s1)
            _fill_regime(cw.s2, walker.s2)
        else:
            _fill_regime(cw.s1, walker)
    except (TypeError, ValueError, OverflowError, KeyError):
        return None
    _lib.cw_prepare(cw)
    return cw


class FastWalker:
    """``walker`` through C where possible, through Python otherwise; same results.

    ``use_c``: None follows ``HAVE_C``; False forces the Python walker; True requires C
    (RuntimeError when the extension is missing or does not know this walker)."""

    __slots__ = ("walker", "stage", "_c", "_out", "_buf", "_mem", "_generation", "_table")

    def __init__(self, walker: Walker, *, use_c: bool | None = None) -> None:
        self.walker = walker
        self.stage = walker.stage
        self._c: Any = None
        want = HAVE_C if use_c is None else use_c
        if want:
            if _lib is None:
                raise RuntimeError("the C walker (devices.pagetable._cwalk) is not built")
            self._c = _compile(walker)
            if self._c is None and use_c:
                raise RuntimeError(f"the C walker does not handle {type(walker).__name__}")
        self._out: Any = None
        self._buf: Any = None
        if self._c is not None:
            self._out = _ffi.new("uint64_t[9]")
            self._buf = _ffi.buffer(self._out)
        # The last memory walked, while its generation is the same: its C region table.
        self._mem: Any = None
        self._generation = -1
        self._table: Any = None

    @property
    def uses_c(self) -> bool:
        return self._c is not None

    def _table_for(self, mem: Any) -> Any:
        """The C region table for ``mem`` (None: walk in Python)."""
        if self._c is None:
            return None
        cmem = _c_memory(mem)
        if cmem is None:
            return None
        if cmem.generation is not None:  # remembered here, checked by one comparison
            self._mem = mem
            self._generation = cmem.generation
            self._table = cmem.table
        return cmem.table

    def walk(self, mem: MemoryPort, ia: int, access: int) -> Translation | Fault:
        """As ``walker.walk``."""
        if mem is self._mem and mem.generation == self._generation:
            table = self._table
        else:
            table = self._table_for(mem)
            if table is None:
                return self.walker.walk(mem, ia, access)
        try:
            kind = _lib.cw_walk_one(self._c, table, ia, access, self._out)
        except OverflowError:  # an address or access beyond the C types
            return self.walker.walk(mem, ia, access)
        if not kind:
            return _tuple_new(Translation, _UNPACK9(self._buf))
        values = _UNPACK9(self._buf)
        has = values[8]
        return Fault(FaultKind(values[0]), Reason(values[1]), values[2],
                     values[3] if has & HAS_LEVEL else None,
                     values[4] if has & HAS_PTE_ADDR else None,
                     values[5] if has & HAS_PTE else None,
                     bool(values[6]),
                     values[7] if has & HAS_IPA else None)

    def walk_batch(self, mem: MemoryPort, ias: Any, out: WalkResults, access: int = 0,
                   accesses: Any = None) -> int:
        """Walk every address of ``ias`` (a buffer of native u64: ``array('Q')``, a
        memoryview, bytes) into ``out[0:n]``; ``accesses``, a buffer of u8 as long as
        ``ias``, gives each walk its own access instead of ``access``.  Returns how many
        walks gave a translation."""
        # An array('Q') goes to C as it is; anything else through a checked u64 view.
        view = ias if type(ias) is array and ias.typecode == "Q" \
            else memoryview(ias).cast("B").cast("Q")
        n = len(view)
        if n > out.capacity:
            raise ValueError(f"{n} addresses for {out.capacity} results")
        acc_view = None
        if accesses is not None:
            acc_view = memoryview(accesses).cast("B")
            if len(acc_view) < n:
                raise ValueError(f"{len(acc_view)} accesses for {n} addresses")
        results = out._c
        if mem is self._mem and mem.generation == self._generation:
            table = self._table
        else:
            table = self._table_for(mem) if results is not None else None
        if table is None or not 0 <= access <= U32:
            return self._walk_batch_python(mem, view, out, access, acc_view)
        # (The buffer exports end with the call, when their cdata objects go.)
        c_acc = _ffi.NULL if acc_view is None else _ffi.from_buffer("uint8_t[]", acc_view)
        done: int = _lib.cw_walk_batch(self._c, table, _ffi.from_buffer("uint64_t[]", view), n,
                                       access, c_acc, results)
        return done

    def _walk_batch_python(self, mem: MemoryPort, ias: Iterable[int], out: WalkResults,
                           access: int, accesses: memoryview | None) -> int:
        walk = self.walker.walk
        kept = [(column, k)
                for k, (name, column) in enumerate(zip(FIELDS, out.columns, strict=True))
                if name in out.fields]
        ok = 0
        for i, ia in enumerate(ias):
            result = walk(mem, ia, access if accesses is None else accesses[i])
            values = pack(result)
            for column, k in kept:
                column[i] = values[k]
            if isinstance(result, Translation):
                ok += 1
        return ok
