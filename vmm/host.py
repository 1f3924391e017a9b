"""The host IOMMU under the VMM: ``HostIOMMU`` and its contexts (HostIOMMUContext).

What the seeds ask of it (reference/xen-and-seeds.md, QEMU vSVA RFC's HostIOMMUContext and
Xen's IOMMU contexts): capabilities; contexts — a default one plus allocated ones — each with
a host-owned stage 2; devices attached to contexts; map/unmap/lookup with the PV-IOMMU error
rules; PASID allocation; stage-1 tables bound per (context, PASID) for nested translation and
their cache invalidation; shadow mappings filled on demand through a miss handler; a no-DMA
default context.  IOMMU models decode guest configuration and drive this; they never
translate DMA themselves.

Address spaces (DESIGN.md: keep GPA and HPA apart so mixing them is a visible bug):
* GPA — guest-physical, what the guest's tables and the wire talk about (``GuestMemory``).
* HPA — host-physical.  Guest RAM is *placed* in HPA space away from its GPA (``Placement``):
  each region lands at an address above every GPA of the guest, in reverse order, keeping
  1 GiB congruence so blocks stay naturally aligned — not identity, as under cache colouring
  (seed 003).  ``HostMemory`` reads HPA; anything not guest RAM maps to an HPA with
  ``NO_RAM`` set, which reads as an abort, so a translation can land outside RAM (TRANSLATE
  answers it; DMA gets kind 8) without the host inventing memory.

A context's stage 2 maps IOVA/IPA blocks to GPA blocks; the HPA is applied at translation,
so mappings survive memory-table changes (the IOTLB, which caches HPAs, is flushed then).
Stage 1, when bound for a PASID, is a guest table walked with every table read translated
by the context's stage 2 (``devices.pagetable.Nested``).
"""

from __future__ import annotations

import bisect
import errno as E
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from devices.model import DmaTarget, FaultKind, MemoryPort, Perm
from devices.pagetable import (
    ACCESS_PRIV,
    ArmS1Config,
    Fault,
    Nested,
    Reason,
    Stage1Walker,
    Translation,
)
from devices.pagetable.walker import ATTR_GLOBAL, ATTR_NG, PERM_MASK
from vmm.iotlb import ANY, GlobalRule, Iotlb, Stage, Tag

log = logging.getLogger(__name__)

PAGE = 4096
_GPA_BITS = 52  # protocol.md: guest-physical addresses are below 2^52
NO_RAM = 1 << 62
MAX_FILLED = 1 << 16
"""Shadow blocks one context keeps before it starts again empty (memory per guest is bounded)."""
"""Set in an HPA that stands for a GPA outside guest RAM."""
_GIB = 1 << 30
RWX = int(Perm.R | Perm.W | Perm.X)
_W = int(Perm.W)
_U64 = (1 << 64) - 1

FillResult = tuple[int, int, int] | Fault | None
Fill = Callable[[int, int], FillResult]


class RamLayout(Protocol):
    """Guest memory that can say where its RAM is (GuestMemory, FlatMemory)."""

    generation: int

    def ram_ranges(self) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class HostCaps:
    """What the host IOMMU offers (the seeds' capability query)."""

    nesting: bool = True
    stage1_formats: tuple[str, ...] = ("arm64-vmsa", "x86-64")
    pasid_bits: int = 20
    max_contexts: int = 256
    max_pages_per_op: int = 512
    max_iova_bits: int = 64


class Placement:
    """GPA ↔ HPA for the current memory table (a bijection on RAM, ``NO_RAM`` elsewhere)."""

    def __init__(self, ranges: list[tuple[int, int]], identity: bool = False) -> None:
        ranges = sorted(ranges)
        self.identity = identity
        self._gpa_starts: list[int] = []
        self._gpa_spans: list[tuple[int, int, int]] = []  # (gpa, end, hpa)
        top = max((gpa + size for gpa, size in ranges), default=0)
        next_hpa = -(-top // _GIB) * _GIB + _GIB  # above every GPA, with a gap
        spans = []
        for gpa, size in reversed(ranges):
            if identity:
                hpa = gpa
            else:
                hpa = next_hpa + (gpa % _GIB)
                next_hpa = -(-(hpa + size) // _GIB) * _GIB
            spans.append((gpa, gpa + size, hpa))
        spans.sort()
        self._gpa_spans = spans
        self._gpa_starts = [s[0] for s in spans]
        by_hpa = sorted((hpa, hpa + (end - gpa), gpa) for gpa, end, hpa in spans)
        self._hpa_spans = by_hpa
        self._hpa_starts = [s[0] for s in by_hpa]

    def hpa(self, gpa: int) -> int:
        i = bisect.bisect_right(self._gpa_starts, gpa) - 1
        if i >= 0:
            start, end, hpa = self._gpa_spans[i]
            if gpa < end:
                return hpa + (gpa - start)
        return NO_RAM | gpa

    def gpa(self, hpa: int) -> int:
        if hpa & NO_RAM:
            return hpa & ~NO_RAM
        i = bisect.bisect_right(self._hpa_starts, hpa) - 1
        if i >= 0:
            start, end, gpa = self._hpa_spans[i]
            if hpa < end:
                return gpa + (hpa - start)
        return hpa  # not an HPA this placement made; report it unchanged

    def run(self, hpa: int, size: int) -> int | None:
        """The GPA of ``[hpa, hpa+size)`` when it lies inside one placed region (one bisection:
        HostMemory's common case), else None."""
        i = bisect.bisect_right(self._hpa_starts, hpa) - 1
        if i >= 0:
            start, end, gpa = self._hpa_spans[i]
            if hpa < end and hpa + size <= end:
                return gpa + (hpa - start)
        return None

    def contiguous(self, gpa: int, size: int) -> bool:
        """True when ``[gpa, gpa+size)`` is one run of HPA (inside one RAM region or none)."""
        i = bisect.bisect_right(self._gpa_starts, gpa) - 1
        if i >= 0 and gpa < self._gpa_spans[i][1]:
            return gpa + size <= self._gpa_spans[i][1]
        j = bisect.bisect_left(self._gpa_starts, gpa)
        return j >= len(self._gpa_starts) or gpa + size <= self._gpa_starts[j]


class HostMemory:
    """HPA-addressed memory: guest RAM through its placement (a ``MemoryPort``)."""

    __slots__ = ("guest", "placement")

    def __init__(self, guest: MemoryPort, placement: Placement) -> None:
        self.guest = guest
        self.placement = placement

    def _gpa(self, hpa: int) -> int | None:
        if hpa & NO_RAM:
            return None
        gpa = self.placement.gpa(hpa)
        return None if gpa == hpa and not self.placement.identity else gpa

    def read(self, hpa: int, length: int) -> bytes | None:
        gpa = self.placement.run(hpa, length)
        if gpa is not None:
            return self.guest.read(gpa, length)
        gpa = self._gpa(hpa)
        if gpa is None or not self.placement.contiguous(gpa, length):
            return None
        return self.guest.read(gpa, length)

    def write(self, hpa: int, data: bytes | bytearray | memoryview) -> bool:
        gpa = self._gpa(hpa)
        if gpa is None or not self.placement.contiguous(gpa, len(data)):
            return False
        return self.guest.write(gpa, data)

    def read_u32(self, hpa: int) -> int | None:
        gpa = self._gpa(hpa)
        return None if gpa is None else self.guest.read_u32(gpa)

    def read_u64(self, hpa: int) -> int | None:
        gpa = self._gpa(hpa)
        return None if gpa is None else self.guest.read_u64(gpa)

    def write_u32(self, hpa: int, value: int) -> bool:
        gpa = self._gpa(hpa)
        return gpa is not None and self.guest.write_u32(gpa, value)

    def write_u64(self, hpa: int, value: int) -> bool:
        gpa = self._gpa(hpa)
        return gpa is not None and self.guest.write_u64(gpa, value)


def _stage2_fault(reason: Reason, kind: FaultKind = FaultKind.TRANSLATION) -> Fault:
    return Fault(kind, reason, 2, None, None)


class ContextStage2:
    """A context's host-owned stage 2 as a ``devices.pagetable.Walker``: IOVA/IPA → HPA.

    Blocks are kept per size in dicts keyed by ``ipa >> shift`` (as the IOTLB does): one probe
    per size in use.  ``identity`` maps all guest RAM (and only RAM) IPA = GPA.
    """

    stage = 2

    def __init__(self, host: HostIOMMU, identity: bool, fill: Fill | None) -> None:
        self.host = host
        self.identity = identity
        self.fill = fill
        self.blocked = False
        # shift -> {ipa >> shift: (gpa_base, perms, filled)}
        self.blocks: dict[int, dict[int, tuple[int, int, bool]]] = {}
        self.shifts: tuple[int, ...] = ()
        self.mapped_bytes = 0
        self.filled = 0  # blocks installed by ``fill``: a cache, bounded by MAX_FILLED

    # -- mappings ----------------------------------------------------------------------------

    def find(self, ipa: int) -> tuple[int, int, int, bool] | None:
        """(block size, gpa base, perms, filled) of the block covering ``ipa``."""
        for shift in self.shifts:
            hit = self.blocks[shift].get(ipa >> shift)
            if hit is not None:
                return (1 << shift, hit[0], hit[1], hit[2])
        return None

    def add(self, ipa: int, gpa: int, size: int, perms: int, filled: bool) -> None:
        shift = size.bit_length() - 1
        table = self.blocks.get(shift)
        if table is None:
            table = self.blocks[shift] = {}
            self.shifts = tuple(sorted(self.blocks, reverse=True))
        table[ipa >> shift] = (gpa, perms, filled)
        self.mapped_bytes += size
        self.filled += filled

    def remove_range(self, start: int, size: int, *, filled_only: bool) -> int:
        """Drop blocks overlapping ``[start, start+size)``; bytes removed.  Bounded by the
        number of blocks, never by the range."""
        end = start + size
        removed = 0
        for shift in list(self.blocks):
            table = self.blocks[shift]
            span = 1 << shift
            first, last = start >> shift, (end - 1) >> shift
            if last - first + 1 < len(table):
                keys = [k for k in range(first, last + 1) if k in table]
            else:
                keys = [k for k in table if first <= k <= last]
            for key in keys:
                if table[key][2]:
                    self.filled -= 1
                elif filled_only:
                    continue
                del table[key]
                removed += span
            if not table:
                del self.blocks[shift]
        self.shifts = tuple(sorted(self.blocks, reverse=True))
        self.mapped_bytes -= removed
        return removed

    # -- the walker interface ------------------------------------------------------------------

    def walk(self, mem: MemoryPort, ia: int, access: int) -> Translation | Fault:
        if self.blocked:
            return Fault(FaultKind.BLOCKED, Reason.NOT_PRESENT, 2, None, None)
        placement = self.host.placement
        if self.identity:
            if ia >> _GPA_BITS:
                # no guest-physical address is that large: NO_RAM could not carry it
                return _stage2_fault(Reason.OUTPUT_SIZE, FaultKind.ADDRESS_SIZE)
            hpa = placement.hpa(ia)
            return Translation.of(hpa, PAGE, 0, RWX, RWX, RWX, 0, 0, 0)
        hit = self.find(ia)
        perm_access = access & PERM_MASK
        if hit is not None and not perm_access & ~hit[2]:
            size, gpa, perms, _ = hit
            hpa = placement.hpa(gpa + (ia & (size - 1)))
            if placement.contiguous(gpa, size):
                return Translation.of(hpa, size, 0, perms, perms, perms, 0, 0, 0)
            return Translation.of(hpa, PAGE, 0, perms, perms, perms, 0, 0, 0)
        if self.fill is None:
            if hit is not None:
                return _stage2_fault(Reason.PERMISSION, FaultKind.PERMISSION)
            return _stage2_fault(Reason.NOT_PRESENT)
        # Shadowed stage 2: the owner's answer is authoritative (a stale or missing shadow
        # entry is refilled; a guest fault is reported as the guest's tables decide it).
        got = self.fill(ia, access)
        if got is None:
            return _stage2_fault(Reason.NOT_PRESENT)
        if isinstance(got, Fault):
            return got
        gpa, size, perms = got
        if gpa >> _GPA_BITS:
            return _stage2_fault(Reason.OUTPUT_SIZE, FaultKind.ADDRESS_SIZE)
        if size < PAGE or size & (size - 1):
            size = PAGE
            gpa &= ~(PAGE - 1)
        base = ia & ~(size - 1)
        if self.filled >= MAX_FILLED:
            # A shadow is a cache of what the owner's tables say: forget it rather than grow
            # without bound with the guest's mappings (every block can be filled again).
            self.remove_range(0, 1 << 64, filled_only=True)
        self.remove_range(base, size, filled_only=False)
        self.add(base, gpa & ~(size - 1), size, perms & RWX, True)
        if perm_access & ~perms:
            return _stage2_fault(Reason.PERMISSION, FaultKind.PERMISSION)
        hpa = placement.hpa((gpa & ~(size - 1)) + (ia & (size - 1)))
        out_size = size if placement.contiguous(gpa & ~(size - 1), size) else PAGE
        return Translation.of(hpa, out_size, 0, perms, perms, perms, 0, 0, 0)


@dataclass
class Binding:
    walker: Stage1Walker
    asid: int
    nested: Nested


@dataclass
class Context:
    """A host domain (HostIOMMUContext)."""

    id: int
    s2: ContextStage2
    bindings: dict[int | None, Binding] = field(default_factory=dict)
    devices: set[tuple[int, int]] = field(default_factory=set)
    tags: dict[tuple[int | None, int], Tag] = field(default_factory=dict)
    on_fault: Callable[[Fault, int | None, int], None] | None = None


class HostIOMMU:
    """The physical IOMMU under the VMM, one per guest session (``devices.model.HostPort``)."""

    def __init__(self, memory: Any, *, caps: HostCaps | None = None,
                 iotlb_capacity: int = 4096, identity_placement: bool = False,
                 no_dma: bool = False) -> None:
        self.memory = memory
        self.caps = caps or HostCaps()
        self.iotlb = Iotlb(iotlb_capacity)
        self.identity_placement = identity_placement
        self._generation = -1
        self.placement = Placement([], identity_placement)
        self.host_memory = HostMemory(memory, self.placement)
        self.contexts: dict[int, Context] = {}
        self.devices: dict[tuple[int, int], int] = {}
        self.pasids: set[int] = set()
        self._free_pasids: list[int] = []  # a heap of PASIDs freed below the high-water mark
        self._pasid_top = 0
        self._next_ctx = 1
        self.contexts[0] = Context(0, ContextStage2(self, identity=True, fill=None))
        self.contexts[0].s2.blocked = no_dma
        self._refresh()

    # -- placement ---------------------------------------------------------------------------

    def _refresh(self) -> None:
        generation = getattr(self.memory, "generation", 0)
        if generation == self._generation:
            return
        self._generation = generation
        ranges = self.memory.ram_ranges() if hasattr(self.memory, "ram_ranges") else []
        self.placement = Placement(ranges, self.identity_placement)
        self.host_memory.placement = self.placement
        self.iotlb.invalidate_all()

    def gpa_to_hpa(self, gpa: int) -> int | None:
        self._refresh()
        hpa = self.placement.hpa(gpa)
        return None if hpa & NO_RAM else hpa

    def hpa_to_gpa(self, hpa: int) -> int:
        return self.placement.gpa(hpa)

    # -- contexts ------------------------------------------------------------------------------

    def alloc_context(self, *, identity: bool = False, fill: Fill | None = None) -> int:
        if len(self.contexts) >= self.caps.max_contexts:
            return -E.ENOSPC
        ctx = self._next_ctx
        while ctx in self.contexts:
            ctx += 1
        self._next_ctx = ctx + 1
        self.contexts[ctx] = Context(ctx, ContextStage2(self, identity=identity, fill=fill))
        return ctx

    def free_context(self, ctx: int) -> None:
        """Free a context; its devices go back to the default context."""
        if ctx == 0 or ctx not in self.contexts:
            return
        context = self.contexts.pop(ctx)
        for dev in context.devices:
            self.devices[dev] = 0
            self.contexts[0].devices.add(dev)
        self.iotlb.invalidate_all(ctx=ctx)

    def has_context(self, ctx: int) -> bool:
        return ctx in self.contexts

    def set_no_dma(self, blocked: bool) -> None:
        self.contexts[0].s2.blocked = blocked
        self.iotlb.invalidate_all(ctx=0)

    # -- devices ---------------------------------------------------------------------------------

    def attach(self, segment: int, requester: int, ctx: int) -> int:
        if ctx not in self.contexts:
            return -E.ENOENT
        dev = (segment, requester)
        old = self.devices.get(dev)
        if old is not None and old in self.contexts:
            self.contexts[old].devices.discard(dev)
        self.devices[dev] = ctx
        self.contexts[ctx].devices.add(dev)
        return 0

    def device_context(self, segment: int, requester: int) -> int | None:
        return self.devices.get((segment, requester))

    # -- mappings (PV-IOMMU rules) ----------------------------------------------------------

    def map(self, ctx: int, iova: int, gpa: int, size: int, perms: int) -> int:
        context = self.contexts.get(ctx)
        if context is None:
            return -E.ENOENT
        if size < PAGE or size & (size - 1) or iova % size or gpa % size or (gpa + size) >> _GPA_BITS:
            return -E.EINVAL
        if context.s2.identity:
            return -E.EPERM
        context.s2.remove_range(iova, size, filled_only=True)  # explicit beats a shadow fill
        for probe in range(iova, iova + size, max(PAGE, size // 512)):
            if context.s2.find(probe) is not None:
                return -E.EADDRINUSE
        context.s2.add(iova, gpa, size, perms & RWX, False)
        return 0

    def _batch_context(self, ctx: int, count: int) -> Context | int:
        """The context a map_pages / unmap_pages batch changes, or the -errno that refuses
        the batch whole, in the PV-IOMMU order (E2BIG, ENOENT, EPERM)."""
        if count > self.caps.max_pages_per_op:
            return -E.E2BIG
        context = self.contexts.get(ctx)
        if context is None:
            return -E.ENOENT
        if ctx == 0:
            return -E.EPERM  # the default context can be neither changed nor freed
        return context

    def map_pages(self, ctx: int, dfn: int, gfn: int, count: int, perms: int,
                  ) -> tuple[int, int]:
        """Map ``count`` 4 KiB pages; (pages mapped, 0 or -errno at the first failure)."""
        context = self._batch_context(ctx, count)
        if isinstance(context, int):
            return 0, context
        if not perms & (Perm.R | Perm.W):
            return 0, -E.EINVAL
        contains = getattr(self.memory, "contains", None)
        for i in range(count):
            iova, gpa = (dfn + i) * PAGE, (gfn + i) * PAGE
            if iova >> self.caps.max_iova_bits:
                return i, -E.EINVAL
            if contains is not None and not contains(gpa, PAGE):
                return i, -E.ENOENT
            if context.s2.find(iova) is not None:
                return i, -E.EADDRINUSE
            context.s2.add(iova, gpa, PAGE, perms & RWX, False)
        return count, 0

    def unmap(self, ctx: int, iova: int, size: int) -> int:
        context = self.contexts.get(ctx)
        if context is None:
            return 0
        removed = context.s2.remove_range(iova, size, filled_only=False)
        self._drop_cached(context, iova, size)
        return removed

    def unmap_pages(self, ctx: int, dfn: int, count: int) -> tuple[int, int]:
        context = self._batch_context(ctx, count)
        if isinstance(context, int):
            return 0, context
        for i in range(count):
            iova = (dfn + i) * PAGE
            hit = context.s2.find(iova)
            if hit is None:
                self._drop_cached(context, dfn * PAGE, i * PAGE)
                return i, -E.ENOENT
            context.s2.remove_range(iova, PAGE, filled_only=False)
        self._drop_cached(context, dfn * PAGE, count * PAGE)
        return count, 0

    def lookup(self, ctx: int, iova: int) -> tuple[int, int] | int:
        """(gpa, perms) of the mapping at ``iova``, or a negative errno."""
        context = self.contexts.get(ctx)
        if context is None:
            return -E.ENOENT
        if context.s2.identity:
            return iova, RWX
        hit = context.s2.find(iova)
        if hit is None:
            return -E.ENOENT
        size, gpa, perms, _ = hit
        return gpa + (iova & (size - 1)), perms

    def invalidate_s2(self, ctx: int, ipa: int = 0, size: int = 1 << 64) -> None:
        context = self.contexts.get(ctx)
        if context is None:
            return
        context.s2.remove_range(ipa, min(size, (1 << 64) - ipa), filled_only=True)
        # Combined (nested) entries do not remember their IPA: drop the context's cache.
        self.iotlb.invalidate_all(ctx=ctx)

    def _drop_cached(self, context: Context, iova: int, size: int) -> None:
        if context.bindings:
            self.iotlb.invalidate_all(ctx=context.id)
        elif size:
            self.iotlb.invalidate_range(iova, size, ctx=context.id)

    # -- PASIDs and stage-1 bindings ---------------------------------------------------------

    def alloc_pasid(self) -> int | None:
        """The lowest free PASID ≥ 1, in O(log n) whatever the guest allocated and freed."""
        if self._free_pasids:
            pasid = heapq.heappop(self._free_pasids)
        elif self._pasid_top < (1 << self.caps.pasid_bits) - 1:
            self._pasid_top += 1
            pasid = self._pasid_top
        else:
            return None
        self.pasids.add(pasid)
        return pasid

    def free_pasid(self, pasid: int) -> bool:
        if pasid not in self.pasids:
            return False
        self.pasids.remove(pasid)
        heapq.heappush(self._free_pasids, pasid)
        return True

    def bind_stage1(self, ctx: int, pasid: int | None, walker: Stage1Walker,
                    asid: int = 0) -> None:
        context = self.contexts[ctx]
        context.bindings[pasid] = Binding(walker, asid, Nested(walker, context.s2))
        self.iotlb.invalidate_pasid(pasid, keep_global=False, ctx=ctx)
        context.tags = {k: v for k, v in context.tags.items() if k[0] != pasid}

    def unbind_stage1(self, ctx: int, pasid: int | None) -> None:
        context = self.contexts.get(ctx)
        if context is None or context.bindings.pop(pasid, None) is None:
            return
        self.iotlb.invalidate_pasid(pasid, keep_global=False, ctx=ctx)
        context.tags = {k: v for k, v in context.tags.items() if k[0] != pasid}

    def invalidate(self, ctx: int | None = None, *, pasid: Any = ..., asid: Any = ...,
                   iova: int = 0, size: int = 1 << 64, keep_global: bool = False,
                   global_any_asid: bool = False) -> None:
        """Drop cached stage-1 translations; ``...`` matches anything.

        ``keep_global``: entries of global mappings survive (Arm TLBI_NH_ASID, VT-d
        non-globals within a PASID).  ``global_any_asid``: global entries of every ASID are
        hit as well (Arm TLBI_NH_VA with an ASID)."""
        size = min(size, (1 << 64) - iova)
        whole = iova == 0 and size == 1 << 64
        if whole and pasid is ... and asid is ... and not keep_global:
            self.iotlb.invalidate_all(ctx=ctx)
        elif whole and asid is not ... and pasid is ...:
            self.iotlb.invalidate_asid(asid, keep_global=keep_global, ctx=ctx)
        elif whole and pasid is not ... and asid is ...:
            self.iotlb.invalidate_pasid(pasid, keep_global=keep_global, ctx=ctx)
        else:
            rule = GlobalRule.ANY_ASID if global_any_asid else GlobalRule.EXACT
            self.iotlb.invalidate_range(
                iova, size, ctx=ctx, asid=ANY if asid is ... else asid,
                pasid=ANY if pasid is ... else pasid, global_rule=rule,
            )

    # -- translation ---------------------------------------------------------------------------

    def _tag(self, context: Context, pasid: int | None, priv: int) -> Tag:
        key = (pasid, priv)
        tag = context.tags.get(key)
        if tag is None:
            binding = context.bindings.get(pasid)
            tag = self.iotlb.tag(
                ctx=context.id, stage=Stage.NESTED if binding else Stage.S2, vmid=priv,
                asid=binding.asid if binding else None, pasid=pasid,
            )
            context.tags[key] = tag
        return tag

    def translate(self, ctx: int, pasid: int | None, iova: int, access: int,
                  ) -> DmaTarget | Fault:
        self._refresh()
        context = self.contexts.get(ctx)
        if context is None:
            return Fault(FaultKind.BLOCKED, Reason.NOT_PRESENT, 0, None, None)
        priv = 1 if access & ACCESS_PRIV else 0
        tag = self._tag(context, pasid, priv)
        entry = self.iotlb.lookup(tag, iova)
        want = access & PERM_MASK
        placement = self.placement
        if entry is not None and not want & ~entry.perm and (entry.dirty or not want & _W):
            hpa = entry.gpa | (iova & entry.mask)
            return DmaTarget(placement.gpa(hpa), entry.size, entry.perm, hpa)
        binding = context.bindings.get(pasid)
        if binding is not None:
            result = binding.nested.walk(self.host_memory, iova, access)
        elif pasid is not None and context.bindings:
            # PASID-tagged traffic with no table bound for that PASID.
            return Fault(FaultKind.TRANSLATION, Reason.NOT_PRESENT, 1, None, None)
        else:
            result = context.s2.walk(self.host_memory, iova, access)
        if isinstance(result, Fault):
            if context.on_fault is not None:
                context.on_fault(result, pasid, iova)
            return result
        size = result.size
        # A write must have walked once (A/D and DBM updates happen on the walk) before a hit
        # may serve a write: entries filled by other accesses are kept "clean".
        perm = result.perm
        hpa = result.oa
        is_global = False
        if binding is not None:
            if isinstance(binding.walker, ArmS1Config):
                is_global = not result.attrs & ATTR_NG
            else:
                is_global = bool(result.attrs & ATTR_GLOBAL)
        if not hpa & NO_RAM:
            self.iotlb.insert(tag, iova, size, hpa & ~(size - 1), Perm(perm), is_global=is_global,
                             dirty=bool(want & _W))
        return DmaTarget(placement.gpa(hpa), size, Perm(result.perm), None if hpa & NO_RAM else hpa)
