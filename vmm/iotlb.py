"""The IOTLB of the translation core: a bounded cache of leaf translations.

An entry is one leaf result of a walk: an input block (4 KiB, 16 KiB, 64 KiB, 2 MiB, 32 MiB,
512 MiB, 1 GiB … any naturally aligned power of two ≥ 4 KiB) mapped to the guest-physical
base of its output block, with its permissions.  Entries are grouped under a ``Tag``: host
context, VMID, ASID (Arm) or domain id (VT-d), PASID (``None`` = no PASID) and ``Stage``.

Spec references (digests in /work/shared/reference):

* Arm SMMUv3, IHI 0070 §4.4 (smmuv3.md §3): CMD_TLBI_NH_ALL / _ASID / _VA / _VAA,
  CMD_TLBI_S12_VMALL, CMD_TLBI_S2_IPA, CMD_TLBI_NSNH_ALL; range fields TG/SCALE/NUM/TTL, Leaf.
  A range covers ``(NUM+1) · 2^SCALE`` granules of ``2^(2·TG+10)`` bytes (smmuv3.md §3, and
  the same arithmetic in Linux ``__arm_smmu_tlb_inv_range`` and QEMU ``smmuv3_range_inval``).
  The ``(NUM+1) · 2^(5·SCALE+1)`` form is the CPU's TLBI RVA* (Armv8.4-TLBIRANGE, 2-bit
  SCALE), not the SMMU command.  TLBI by ASID leaves global (nG=0) entries alone; TLBI by VA
  with an ASID hits global entries of every ASID (Arm ARM D8 "TLB maintenance").
* Intel VT-d 3.x §6.5.2 (vtd.md §2a): IOTLB invalidation (global / domain / page-selective
  with AM and IH), PASID-based IOTLB invalidation (non-globals within PASID, page-selective
  within PASID), device-TLB invalidation with the S-bit size encoding (PCIe ATS §10.3.1).

Decisions (each matters for correctness or speed, so they are stated once here):

* Only leaf results are cached; there is no walk cache.  A leaf-only invalidation (Arm Leaf=1,
  VT-d IH=1) and a full one therefore drop the same entries: every entry overlapping the range.
  ``leaf_only`` is accepted so callers pass the command through unchanged.
* Over-invalidation is always allowed by both architectures (a TLB may lose an entry at any
  time); under-invalidation never happens.  So: Arm TTL (a level hint) is ignored; an entry is
  dropped when the range touches any byte of it (a 4 KiB invalidation inside a 2 MiB block
  drops the block).
* Nested (``Stage.NESTED``) entries remember the IPA of their block so that TLBI_S2_IPA can find
  them.  When the IPA was not given the rule is conservative: TLBI_S2_IPA drops every combined
  entry of that VMID.  Arm does not require TLBI_S2_IPA to touch combined entries (software
  follows it with TLBI_NH_ALL / TLBI_S12_VMALL); ``combined=False`` gives that strict form,
  useful for catching a driver that forgets the stage-1 invalidation.  Only the leaf's IPA is
  tracked, not the IPAs of stage-1 table pages (that is walk-cache state, see above).
* A global entry is stored under the ASID/PASID that was current when it was filled and only
  hits lookups with that exact tag (a miss is always permitted); invalidation treats it as
  shared, per ``GlobalRule``.
* Inserting drops any entry of the same tag that overlaps the new block, so at most one entry of
  a tag covers an address and a lookup's answer does not depend on probe order.
* Lookup: each tag holds one dict per block size present, keyed by ``iova >> shift``, and a
  tuple of those (shift, dict) pairs; a hit is one dict probe per size in use (usually one).
  The tag is an object the caller keeps, so no tuple is built or hashed per lookup, and it
  holds the dict of its smallest size as an attribute of its own (``first``), probed before
  anything else: a hit in it costs one attribute load, one probe and no loop.  An entry's
  ``mask`` is one shared int per block size (``_MASKS``), not one per entry, so a hit touches
  fewer cache lines.
* Replacement is CLOCK (second chance), an approximation of LRU: entries sit in a fixed array
  of ``capacity`` slots, a hit only increments ``Entry.hits`` (which doubles as the reference
  bit and as the hit statistic), and eviction sweeps a hand past referenced entries, clearing
  them.  True LRU would cost a move-to-end on every hit; CLOCK costs one attribute increment.
  The bound is strict: an insert into a full cache evicts before it stores.
* Work per invalidation is bounded by the number of cached entries, never by the range size:
  per tag and block size it probes the pages of the range only when there are fewer of them than
  cached entries of that size, and otherwise scans those entries.
* Tags are interned per key (a weak dictionary), so each key has one Tag while anybody holds it
  or it has entries; memory stays bounded by capacity plus the tags callers keep.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from devices.model import Perm

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
_ADDRESS_SPACE: Final = 1 << 64


class Stage(enum.IntEnum):
    """Which translation an entry's result comes from."""

    S1 = 1  # stage 1 only: IOVA -> output of stage 1 (= GPA when there is no stage 2)
    S2 = 2  # stage 2 only: IPA -> GPA; the input address is an IPA
    NESTED = 3  # stage 1 then stage 2 combined: IOVA -> GPA, with the IPA remembered


#: The stages a stage-1 ("NH") invalidation reaches: Arm TLBI_NH_* never touches S2-only entries.
S1_STAGES: Final = frozenset({Stage.S1, Stage.NESTED})
ALL_STAGES: Final = frozenset(Stage)


class GlobalRule(enum.Enum):
    """How a range invalidation scoped to one address space treats global entries."""

    EXACT = 0  # global entries match only by their own tag, like any other entry
    ANY_ASID = 1  # Arm TLBI_NH_VA: global entries of every ASID (same VMID) match
    ANY_PASID = 2  # VT-d page-selective-within-PASID: global entries of every PASID in the DID


class Wildcard(enum.Enum):
    """Type of ``ANY``: "any value", distinct from ``None`` (which means "no PASID"/"no ASID")."""

    ANY = "ANY"


ANY: Final = Wildcard.ANY

TagKey = tuple[int, int, int | None, int | None, Stage]


_NOTHING: Final[dict[int, Entry]] = {}  # the ``first`` of a tag without entries; never filled
_MASKS: Final = tuple((1 << shift) - 1 for shift in range(65))  # Entry.mask, shared per size


class Tag:
    """The cache state of one (context, VMID, ASID/DID, PASID, stage); get it from Iotlb.tag().

    Callers keep the Tag of a configuration (e.g. next to a decoded STE/CD or PASID entry) and
    pass it to every lookup; its fields are read-only.
    """

    __slots__ = ("ctx", "vmid", "asid", "pasid", "stage", "maps", "tables", "count", "first",
                 "first_shift", "__weakref__")

    def __init__(
        self, ctx: int, vmid: int, asid: int | None, pasid: int | None, stage: Stage
    ) -> None:
        self.ctx = ctx
        self.vmid = vmid
        self.asid = asid  # Arm ASID or VT-d domain id; None for stage-2-only translations
        self.pasid = pasid
        self.stage = stage
        self.tables: dict[int, dict[int, Entry]] = {}  # shift -> {iova >> shift: entry}
        self.maps: tuple[tuple[int, dict[int, Entry]], ...] = ()  # the same, for the hot loop
        self.count = 0
        self.first: dict[int, Entry] = _NOTHING  # maps[0]: the smallest size's dict, if any
        self.first_shift = PAGE_SHIFT

    @property
    def key(self) -> TagKey:
        return (self.ctx, self.vmid, self.asid, self.pasid, self.stage)

    def _reindex(self) -> None:
        self.maps = tuple(sorted(self.tables.items()))
        self.first_shift, self.first = self.maps[0] if self.maps else (PAGE_SHIFT, _NOTHING)

    def __repr__(self) -> str:
        return (
            f"Tag(ctx={self.ctx}, vmid={self.vmid}, asid={self.asid}, pasid={self.pasid}, "
            f"stage={self.stage.name}, entries={self.count})"
        )


class Entry:
    """One cached leaf translation.  Read-only for callers, except through the Iotlb."""

    __slots__ = ("tag", "iova", "shift", "mask", "gpa", "perm", "is_global", "ipa", "hits", "slot",
                 "dirty")

    def __init__(
        self,
        tag: Tag,
        iova: int,
        shift: int,
        gpa: int,
        perm: Perm,
        is_global: bool,
        ipa: int | None,
        slot: int,
    ) -> None:
        self.tag = tag
        self.iova = iova  # input address of the block base (an IPA for Stage.S2)
        self.shift = shift
        self.mask = _MASKS[shift]
        self.gpa = gpa  # output address of the block base
        self.perm = perm
        self.is_global = is_global  # leaf of a global (Arm nG=0, x86 G=1) mapping
        self.ipa = ipa  # Stage.NESTED: IPA of the block base, if known
        self.hits = 0  # hits since the clock hand last passed: the reference bit
        self.slot = slot
        self.dirty = True  # False: a write must walk again (to set the table's dirty state)

    @property
    def size(self) -> int:
        return 1 << self.shift

    def output(self, iova: int) -> int:
        """The output address for an ``iova`` inside this block."""
        return self.gpa | (iova & self.mask)

    def __repr__(self) -> str:
        return (
            f"Entry(iova={self.iova:#x}, size={self.size:#x}, gpa={self.gpa:#x}, "
            f"perm={self.perm!r}, global={self.is_global}, ipa={self.ipa})"
        )


@dataclass(frozen=True, slots=True)
class IotlbStats:
    """A snapshot of the counters, for introspection."""

    capacity: int
    entries: int
    hits: int
    misses: int
    inserts: int
    evictions: int
    invalidations: int  # invalidation requests handled
    invalidated: int  # entries those requests dropped


class Iotlb:
    """A bounded, tagged cache of leaf translations (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"IOTLB capacity must be at least 1, not {capacity}")
        self._slots: list[Entry | None] = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._hand = 0
        self._tags: weakref.WeakValueDictionary[TagKey, Tag] = weakref.WeakValueDictionary()
        self._live: dict[Tag, None] = {}  # tags with entries, in a deterministic order
        self._misses = 0
        self._inserts = 0
        self._evictions = 0
        self._invalidations = 0
        self._invalidated = 0
        self._hits_retired = 0  # hits of entries no longer referenced or no longer cached

    # -- tags, lookup, fill ------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return len(self._slots)

    def __len__(self) -> int:
        return len(self._slots) - len(self._free)

    def tag(
        self,
        *,
        ctx: int,
        stage: Stage,
        vmid: int = 0,
        asid: int | None = None,
        pasid: int | None = None,
    ) -> Tag:
        """The Tag for these identifiers: the same object for as long as anyone uses it."""
        key: TagKey = (ctx, vmid, asid, pasid, Stage(stage))
        tag = self._tags.get(key)
        if tag is None:
            tag = Tag(*key)
            self._tags[key] = tag
        return tag

    def lookup(self, tag: Tag, iova: int) -> Entry | None:
        """The entry of ``tag`` covering ``iova``, or None on a miss."""
        # The smallest block size first, without a loop: usually the only one.  A subscript
        # is a specialised instruction where .get() is a method call; its KeyError costs a
        # few hundred nanoseconds on the way to larger blocks or a miss (a walk, microseconds).
        try:
            entry = tag.first[iova >> tag.first_shift]
        except KeyError:
            return self._lookup_larger(tag, iova)
        entry.hits += 1
        return entry

    def _lookup_larger(self, tag: Tag, iova: int) -> Entry | None:
        for shift, table in tag.maps[1:]:
            entry = table.get(iova >> shift)
            if entry is not None:
                entry.hits += 1
                return entry
        self._misses += 1
        return None

    def insert(
        self,
        tag: Tag,
        iova: int,
        size: int,
        gpa: int,
        perm: Perm,
        *,
        is_global: bool = False,
        ipa: int | None = None,
        dirty: bool = True,
    ) -> Entry:
        """Cache the leaf of ``size`` bytes that covers ``iova`` and maps to ``gpa``.

        ``iova``, ``gpa`` and ``ipa`` may point anywhere inside their blocks (a walker's
        output for the faulting address is fine): each is aligned down to ``size``.  Entries of
        the same tag overlapping the block are replaced.  Raises ValueError on a size that is not
        a power of two ≥ 4 KiB or a negative address: the walker's bug, never the guest's.
        """
        if size < PAGE_SIZE or size & (size - 1):
            raise ValueError(f"IOTLB block size must be a power of two >= 4 KiB, not {size:#x}")
        if iova < 0 or gpa < 0 or (ipa is not None and ipa < 0):
            raise ValueError("IOTLB addresses must not be negative")
        shift = size.bit_length() - 1
        base = iova & ~(size - 1)
        if tag.count:
            self._drop_range(tag, base, base + size, None)
        slot = self._free.pop() if self._free else self._evict()
        entry = Entry(
            tag,
            base,
            shift,
            gpa & ~(size - 1),
            Perm(perm),
            is_global,
            None if ipa is None else ipa & ~(size - 1),
            slot,
        )
        entry.dirty = dirty
        self._slots[slot] = entry
        # Fetched after eviction, which may have emptied (and dropped) this very table.
        table = tag.tables.get(shift)
        if table is None:
            table = tag.tables[shift] = {}
            tag._reindex()
        table[base >> shift] = entry
        if not tag.count:
            self._live[tag] = None
        tag.count += 1
        self._inserts += 1
        return entry

    def stats(self) -> IotlbStats:
        live_hits = sum(entry.hits for entry in self._slots if entry is not None)
        return IotlbStats(
            capacity=self.capacity,
            entries=len(self),
            hits=self._hits_retired + live_hits,
            misses=self._misses,
            inserts=self._inserts,
            evictions=self._evictions,
            invalidations=self._invalidations,
            invalidated=self._invalidated,
        )

    def entries(self) -> list[Entry]:
        """Every cached entry, in slot order (introspection and tests)."""
        return [entry for entry in self._slots if entry is not None]

    # -- invalidation --------------------------------------------------------------------------
    # Every method returns the number of entries it dropped.

    def invalidate_all(self, *, ctx: int | None = None) -> int:
        """Everything (Arm TLBI_NSNH_ALL, VT-d global IOTLB invalidation), or one context."""
        return self._invalidate(ctx=ctx)

    def invalidate_vmid(
        self, vmid: int, *, ctx: int | None = None, stages: Collection[Stage] = ALL_STAGES
    ) -> int:
        """All entries of a VMID: TLBI_S12_VMALL, or TLBI_NH_ALL with ``stages=S1_STAGES``."""
        return self._invalidate(ctx=ctx, vmid=vmid, stages=stages)

    def invalidate_asid(
        self,
        asid: int,
        *,
        keep_global: bool,
        vmid: int | None = None,
        ctx: int | None = None,
        stages: Collection[Stage] = ALL_STAGES,
    ) -> int:
        """All entries of an ASID or VT-d domain.

        Arm TLBI_NH_ASID: ``keep_global=True`` (global entries belong to no ASID).
        VT-d domain-selective IOTLB invalidation: ``keep_global=False``.
        """
        return self._invalidate(
            ctx=ctx, vmid=vmid, asid=asid, stages=stages, keep_global=keep_global
        )

    def invalidate_pasid(
        self,
        pasid: int | None,
        *,
        keep_global: bool,
        asid: int | None | Wildcard = ANY,
        vmid: int | None = None,
        ctx: int | None = None,
        stages: Collection[Stage] = ALL_STAGES,
    ) -> int:
        """All entries of a PASID (within the domain ``asid``, if given).

        VT-d PASID-based IOTLB "non-globals within PASID" (G=10b): ``keep_global=True``.
        """
        return self._invalidate(
            ctx=ctx, vmid=vmid, asid=asid, pasid=pasid, stages=stages, keep_global=keep_global
        )

    def invalidate_range(
        self,
        start: int,
        size: int,
        *,
        ctx: int | None = None,
        vmid: int | None = None,
        asid: int | None | Wildcard = ANY,
        pasid: int | None | Wildcard = ANY,
        stages: Collection[Stage] = ALL_STAGES,
        global_rule: GlobalRule = GlobalRule.EXACT,
        leaf_only: bool = False,
    ) -> int:
        """Entries overlapping input addresses [start, start + size) within the given scope.

        Arm TLBI_NH_VA: ``asid=…, stages=S1_STAGES, global_rule=ANY_ASID``; TLBI_NH_VAA: no
        ``asid``.  VT-d page-selective IOTLB: ``asid=did``; page-selective-within-PASID: also
        ``pasid=…`` and ``global_rule=ANY_PASID``.  ``leaf_only`` (Arm Leaf, VT-d IH) changes
        nothing here: only leaves are cached (module docstring).  The range may be as large as
        the caller likes (2^64 and beyond); the work is bounded by the entries cached.
        """
        if size < 0 or start < 0:
            raise ValueError(f"bad invalidation range start={start:#x} size={size:#x}")
        self._invalidations += 1
        if size == 0:
            return 0
        del leaf_only  # every entry is a leaf, so both forms drop the same entries
        end = start + size
        stage_set = frozenset(stages)
        dropped = 0
        for tag in list(self._live):
            if not _tag_in(tag, ctx, vmid, stage_set):
                continue
            asid_ok = asid is ANY or tag.asid == asid
            pasid_ok = pasid is ANY or tag.pasid == pasid
            if asid_ok and pasid_ok:
                dropped += self._drop_range(tag, start, end, None)
            elif (global_rule is GlobalRule.ANY_ASID and pasid_ok) or (
                global_rule is GlobalRule.ANY_PASID and asid_ok
            ):
                dropped += self._drop_range(tag, start, end, True)
        self._invalidated += dropped
        return dropped

    def invalidate_ipa(
        self,
        start: int,
        size: int,
        *,
        vmid: int,
        ctx: int | None = None,
        combined: bool = True,
        leaf_only: bool = False,
    ) -> int:
        """Arm TLBI_S2_IPA: entries whose stage-2 input overlaps IPAs [start, start + size).

        Stage-2-only entries are matched by their input address.  With ``combined`` (the
        default) nested entries are matched by their remembered IPA, and a nested entry whose
        IPA is unknown is dropped whatever the range (conservative rule, module docstring).
        """
        if size < 0 or start < 0:
            raise ValueError(f"bad invalidation range start={start:#x} size={size:#x}")
        self._invalidations += 1
        if size == 0:
            return 0
        del leaf_only  # only leaves are cached
        end = start + size
        dropped = 0
        for tag in list(self._live):
            if (ctx is not None and tag.ctx != ctx) or tag.vmid != vmid:
                continue
            if tag.stage is Stage.S2:
                dropped += self._drop_range(tag, start, end, None)
            elif tag.stage is Stage.NESTED and combined:
                victims = [
                    entry
                    for table in tag.tables.values()
                    for entry in table.values()
                    if entry.ipa is None or (entry.ipa < end and entry.ipa + entry.mask >= start)
                ]
                for entry in victims:
                    self._remove(entry)
                dropped += len(victims)
        self._invalidated += dropped
        return dropped

    # -- internals ---------------------------------------------------------------------------

    def _invalidate(
        self,
        *,
        ctx: int | None = None,
        vmid: int | None = None,
        asid: int | None | Wildcard = ANY,
        pasid: int | None | Wildcard = ANY,
        stages: Collection[Stage] = ALL_STAGES,
        keep_global: bool = False,
    ) -> int:
        self._invalidations += 1
        stage_set = frozenset(stages)
        dropped = 0
        for tag in list(self._live):
            if not _tag_in(tag, ctx, vmid, stage_set):
                continue
            if (asid is not ANY and tag.asid != asid) or (pasid is not ANY and tag.pasid != pasid):
                continue
            victims = [
                entry
                for table in tag.tables.values()
                for entry in table.values()
                if not (keep_global and entry.is_global)
            ]
            for entry in victims:
                self._remove(entry)
            dropped += len(victims)
        self._invalidated += dropped
        return dropped

    def _drop_range(self, tag: Tag, start: int, end: int, only_global: bool | None) -> int:
        """Drop the entries of ``tag`` overlapping [start, end); ``only_global``: just those."""
        victims: list[Entry] = []
        for shift, table in tag.maps:
            first = start >> shift
            last = (end - 1) >> shift
            if last - first < len(table):
                # Fewer pages in the range than entries of this size: probe the pages.
                for vpn in range(first, last + 1):
                    entry = table.get(vpn)
                    if entry is not None and (only_global is None or entry.is_global):
                        victims.append(entry)
            else:
                # A large range: scan the entries instead, so the guest cannot make us loop.
                victims.extend(
                    entry
                    for vpn, entry in table.items()
                    if first <= vpn <= last and (only_global is None or entry.is_global)
                )
        for entry in victims:
            self._remove(entry)
        return len(victims)

    def _remove(self, entry: Entry) -> None:
        self._slots[entry.slot] = None
        self._free.append(entry.slot)
        self._hits_retired += entry.hits
        tag = entry.tag
        table = tag.tables[entry.shift]
        del table[entry.iova >> entry.shift]
        if not table:
            del tag.tables[entry.shift]
            tag._reindex()
        tag.count -= 1
        if not tag.count:
            del self._live[tag]

    def _evict(self) -> int:
        """CLOCK: free the first slot past the hand whose entry was not hit since last passed.

        Called only when no slot is free, so every slot holds an entry; one full sweep clears
        every reference, so this ends within ``capacity + 1`` steps.
        """
        slots = self._slots
        hand = self._hand
        while True:
            entry = slots[hand]
            assert entry is not None
            if not entry.hits:
                break
            self._hits_retired += entry.hits
            entry.hits = 0
            hand = (hand + 1) % len(slots)
        self._remove(entry)
        self._hand = (hand + 1) % len(slots)
        self._evictions += 1
        return self._free.pop()


def _tag_in(tag: Tag, ctx: int | None, vmid: int | None, stages: frozenset[Stage]) -> bool:
    return (
        (ctx is None or tag.ctx == ctx)
        and (vmid is None or tag.vmid == vmid)
        and tag.stage in stages
    )


# -- command fields -> (start, size) ------------------------------------------------------------


# The range decoders are hardware facts and live with the models; re-exported here.
from devices.ranges import arm_tlbi_range, vtd_devtlb_range, vtd_iotlb_range  # noqa: E402

__all__ = ["arm_tlbi_range", "vtd_devtlb_range", "vtd_iotlb_range"]
