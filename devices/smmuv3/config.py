"""The configuration cache and the host contexts behind it (IHI 0070 §3.21, §4.3, §16.2).

Configuration cache: decoded STEs by StreamID and decoded CDs by (StreamID, CD index),
filled when a transaction (or CMD_PREFETCH_CONFIG) first needs them and kept until a
CMD_CFGI_* covering them is consumed — so an entry the guest rewrites in place is not seen
half-written, exactly as with hardware that has cached it (§3.21.3; the Linux kunit
hitless-update sequences, smmuv3.md §9.2).  Structures that are invalid or cannot be
fetched are not cached: each transaction re-reads them (an SMMU may cache only what it
could use).  The cache is bounded (least recently used entries go first), which the
architecture allows: a cache may lose entries at any time.

Host contexts: each decoded configuration drives a ``HostPort`` context (DESIGN.md,
"Two ways to carry a guest stage 1 into the host"):
* ``nested`` s1-mode: one context per StreamID; its stage 2 is identity (stage 1 only) or
  filled on a miss from the guest's stage-2 tables; each CD is bound as a stage 1 per host
  PASID (None for traffic without a SubstreamID).
* ``shadow`` s1-mode: one context per (StreamID, host PASID, privilege) whose fill walks the
  guest stage 1 (and stage 2) itself and installs the flattened block; one privilege per
  context because a host stage-2 block has one set of permissions.
* STE bypass: one shared identity context.
Contexts remember the VMID, ASIDs and stages behind them, which is how TLB invalidation
commands find the host state to drop.  The pool is bounded; the least recently used context
is freed when it is full (dropping cached translations is always allowed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devices.model import HostPort
from devices.pagetable import Fault

from .cd import Cd
from .ste import Ste

if TYPE_CHECKING:
    from .translation import ShadowLog

Fill = Callable[[int, int], "tuple[int, int, int] | Fault | None"]


@dataclass
class StreamEntry:
    """A cached STE and the CDs fetched through it."""

    ste: Ste
    cds: OrderedDict[int, Cd] = field(default_factory=OrderedDict)


class ConfigCache:
    """Decoded STEs and CDs, bounded in both dimensions."""

    def __init__(self, max_streams: int = 4096, max_cds: int = 1024) -> None:
        self.max_streams = max_streams
        self.max_cds = max_cds
        self.streams: OrderedDict[int, StreamEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.streams)

    def stream(self, sid: int) -> StreamEntry | None:
        entry = self.streams.get(sid)
        if entry is not None:
            self.streams.move_to_end(sid)
        return entry

    def add_stream(self, sid: int, ste: Ste) -> StreamEntry:
        entry = self.streams[sid] = StreamEntry(ste)
        self.streams.move_to_end(sid)
        while len(self.streams) > self.max_streams:
            self.streams.popitem(last=False)
        return entry

    def cd(self, entry: StreamEntry, index: int) -> Cd | None:
        cd = entry.cds.get(index)
        if cd is not None:
            entry.cds.move_to_end(index)
        return cd

    def add_cd(self, entry: StreamEntry, index: int, cd: Cd) -> None:
        entry.cds[index] = cd
        entry.cds.move_to_end(index)
        while len(entry.cds) > self.max_cds:
            entry.cds.popitem(last=False)

    # -- CMD_CFGI_* ------------------------------------------------------------------------

    def drop_streams(self, first: int, last: int) -> list[int]:
        """Drop STEs (and their CDs) of StreamIDs first..last; the StreamIDs dropped.
        Work is bounded by the cache, not by the range."""
        gone = [sid for sid in self.streams if first <= sid <= last]
        for sid in gone:
            del self.streams[sid]
        return gone

    def drop_cd(self, sid: int, index: int | None) -> None:
        """Drop one CD of ``sid`` (``None``: all of them)."""
        entry = self.streams.get(sid)
        if entry is None:
            return
        if index is None:
            entry.cds.clear()
        else:
            entry.cds.pop(index, None)

    def clear(self) -> None:
        self.streams.clear()


@dataclass
class HostContext:
    """One context of the host IOMMU and what it holds."""

    ctx: int
    sid: int | None
    vmid: int
    s1: bool
    """Stage-1 translations are cached here (bound tables or shadow fills)."""
    s2: bool
    """A guest stage 2 fills it."""
    shadow: bool
    """Its filled blocks are flattened stage-1 results keyed by IOVA (shadow s1-mode)."""
    cd: tuple[int, Cd] | None = None
    """Shadow: the (CD index, CD) whose walk fills it."""
    bound: dict[int | None, tuple[int, Cd]] = field(default_factory=dict)
    """Nested: the (CD index, CD) bound for each host PASID."""
    log: ShadowLog | None = None
    """Shadow: the blocks its fill installed."""

    @property
    def asids(self) -> set[int]:
        found = {cd.asid for _, cd in self.bound.values()}
        if self.cd is not None:
            found.add(self.cd[1].asid)
        return found


class ContextPool:
    """The host contexts one SMMU model owns, least recently used first."""

    def __init__(self, host: Callable[[], HostPort], limit: int = 32) -> None:
        self._host = host
        self.limit = limit
        self.entries: OrderedDict[Hashable, HostContext] = OrderedDict()

    def __iter__(self) -> Iterator[HostContext]:
        return iter(list(self.entries.values()))

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Hashable) -> HostContext | None:
        hc = self.entries.get(key)
        if hc is not None:
            self.entries.move_to_end(key)
        return hc

    def add(self, key: Hashable, *, identity: bool, fill: Fill | None, sid: int | None,
            vmid: int, s1: bool, s2: bool, shadow: bool) -> HostContext | None:
        """A new context for ``key`` (replacing any), or None if the host has none left."""
        self.free(key)
        while len(self.entries) >= self.limit:
            self._evict()
        host = self._host()
        ctx = host.alloc_context(identity=identity, fill=fill)
        while ctx < 0 and self.entries:
            self._evict()
            ctx = host.alloc_context(identity=identity, fill=fill)
        if ctx < 0:
            return None
        hc = HostContext(ctx, sid, vmid, s1, s2, shadow)
        self.entries[key] = hc
        return hc

    def _evict(self) -> None:
        _, hc = self.entries.popitem(last=False)
        self._host().free_context(hc.ctx)

    def free(self, key: Hashable) -> None:
        hc = self.entries.pop(key, None)
        if hc is not None:
            self._host().free_context(hc.ctx)

    def free_streams(self, sids: Callable[[int], bool]) -> None:
        """Free the contexts of the StreamIDs ``sids`` selects."""
        for key, hc in list(self.entries.items()):
            if hc.sid is not None and sids(hc.sid):
                self.free(key)

    def free_all(self) -> None:
        for key in list(self.entries):
            self.free(key)
