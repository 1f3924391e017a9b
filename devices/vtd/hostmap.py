"""How a VT-d translation setup is carried into the host IOMMU (seed 004's HostIOMMUContext).

VT-d rev 5.10 §3.6-§3.8 (first-stage, second-stage, nested translation), §6.1-§6.2 (what the
IOTLB caches and how invalidation addresses it: domain id, PASID, page range, CAP.CM caching
mode), §6.5.2.4 (PASID-based IOTLB invalidation).  Digest: reference/vtd.md §6a.

One host *context* per guest domain and stage-2 shape:

* ``SECOND_STAGE``: a context whose host stage 2 is the guest's second-stage table shadowed
  (IOVA → GPA).  Without caching mode it is filled on a host miss by walking the guest table;
  with CAP.CM = 1 it is also filled eagerly when the guest invalidates (host ``map``/``unmap``,
  the way QEMU replays MAP/UNMAP to VFIO), within a bounded number of pages per invalidation.
* ``IDENTITY``: a context whose stage 2 is guest RAM itself (IPA = GPA): pass-through, and the
  carrier of first-stage-only PASIDs.
* ``SHADOW``: a single-stage context holding a guest first stage (through the guest second
  stage when nested) flattened into IOVA → GPA, filled on a miss by walking the guest tables.

First-stage tables of requests *with* a PASID are bound into the host per PASID
(``bind_stage1``) on the domain's context — identity for PGTT = first-stage, the shadowed
second stage for PGTT = nested — so the host walks them (nested translation).  Requests
without PASID (RID_PASID) and PASID 0 are never bound: they use a shadow context (seed 004,
"do not pass down pasid bind for PASID #0").  With ``first-stage=shadow`` every first stage is
shadowed instead of bound; the two must give the same DMA results (the differential test).

Shadow contexts of first stages are kept apart per privilege level: a single-stage host
mapping cannot hold different user and supervisor rights.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devices.model import DmaTarget, MemoryPort
from devices.pagetable import (
    ACCESS_PRIV,
    Fault,
    Nested,
    Translation,
    VtdSecondStage,
    X86FirstStage,
)
from devices.pagetable.fast import FastWalker

from .lookup import Kind, Setup

if TYPE_CHECKING:
    from devices.model import HostPort

PAGE = 4096
EAGER_PAGES = 512
"""Pages a caching-mode invalidation shadows eagerly; the rest are filled on a host miss."""
MAX_CONTEXTS = 128
"""Host contexts kept before the model drops them all and starts again (bounded state)."""
MAX_BINDINGS = 4096
"""Stage-1 bindings kept before the same happens (they are re-made on demand)."""
ANY: Any = ...


class Role(enum.Enum):
    IDENTITY = "identity"
    SECOND_STAGE = "second-stage"
    SHADOW = "shadow"


def ss_key(ss: VtdSecondStage) -> tuple[int, int, bool]:
    return ss.root, ss.levels, ss.ssee


def fs_key(fs: X86FirstStage) -> tuple[int, int, bool, bool, bool, int]:
    # NXE shows only as XD being a reserved bit of the walker's entries.
    return fs.root, fs.levels, fs.sre, fs.wpe, fs.smep, fs.rsvd_table[0] >> 63


@dataclass(slots=True)
class HostDomain:
    """One host context and what it carries."""

    ctx: int
    role: Role
    did: int | None
    pasid: int | None = None
    """SHADOW: the (effective) PASID whose first stage it flattens."""
    walker: Any = None
    """SECOND_STAGE: the guest second stage; SHADOW: the first stage (or nested) walker;
    each as a ``FastWalker`` (C where it can, the same results; ``.walker`` the walker)."""
    privileged: bool = False
    bound: dict[int, tuple[Any, int]] = field(default_factory=dict)
    """PASID → (first-stage key, source-id that asked) of the stage-1 bindings here."""


class HostMap:
    """The model's host contexts, bindings and their invalidation."""

    def __init__(self, host: Callable[[], HostPort], memory: Callable[[], MemoryPort], *,
                 caching_mode: bool, bind_first_stage: bool) -> None:
        self._host = host
        self._memory = memory
        self.caching_mode = caching_mode
        self.bind_first_stage = bind_first_stage
        self.domains: dict[tuple[Any, ...], HostDomain] = {}
        self.bound = 0
        """Stage-1 bindings held, over all domains."""

    @property
    def host(self) -> HostPort:
        return self._host()

    # -- contexts ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Unbind and free every host context (reset, new root table, TE change)."""
        if not self.domains:
            return
        host = self.host
        for dom in self.domains.values():
            for pasid in dom.bound:
                host.unbind_stage1(dom.ctx, pasid)
            dom.bound.clear()  # a caller may still hold the domain: it binds nothing now
            host.free_context(dom.ctx)
        self.domains.clear()
        self.bound = 0

    def _domain(self, key: tuple[Any, ...], make: Callable[[], HostDomain]) -> HostDomain:
        dom = self.domains.get(key)
        if dom is None:
            if len(self.domains) >= MAX_CONTEXTS:
                self.reset()
            dom = make()
            if dom.ctx < 0:  # the host ran out of contexts: start again with none held
                self.reset()
                dom = make()
            self.domains[key] = dom
        return dom

    def _identity(self, did: int | None) -> HostDomain:
        return self._domain(("identity", did), lambda: HostDomain(
            self.host.alloc_context(identity=True), Role.IDENTITY, did))

    def _second_stage(self, did: int, ss: VtdSecondStage) -> HostDomain:
        def make() -> HostDomain:
            mem = self._memory
            fast = FastWalker(ss)

            def fill(iova: int, access: int) -> tuple[int, int, int] | Fault | None:
                return _flatten(fast.walk(mem(), iova, 0), iova)

            return HostDomain(self.host.alloc_context(fill=fill), Role.SECOND_STAGE, did,
                              walker=fast)
        return self._domain(("ss", did, ss_key(ss)), make)

    def _shadow(self, setup: Setup, pasid: int, privileged: bool) -> HostDomain:
        fs = setup.fs
        assert fs is not None
        walker: Any = fs if setup.ss is None else Nested(fs, setup.ss)
        key = ("shadow", setup.did, pasid, fs_key(fs),
               None if setup.ss is None else ss_key(setup.ss), privileged)

        def make() -> HostDomain:
            mem = self._memory
            priv = ACCESS_PRIV if privileged else 0
            fast = FastWalker(walker)  # Nested(X86FirstStage, VtdSecondStage) included

            def fill(iova: int, access: int) -> tuple[int, int, int] | Fault | None:
                return _flatten(fast.walk(mem(), iova, access | priv), iova)

            return HostDomain(self.host.alloc_context(fill=fill), Role.SHADOW, setup.did,
                              pasid=pasid, walker=fast, privileged=privileged)
        return self._domain(key, make)

    # -- translation ---------------------------------------------------------------------------

    def route(self, setup: Setup, pasid: int | None, effective_pasid: int, sid: int,
              privileged: bool) -> tuple[HostDomain, int | None]:
        """The host context (and host PASID) that translates requests of this setup."""
        if setup.kind is Kind.PASS_THROUGH:
            return self._identity(None), None
        if setup.kind is Kind.SECOND_STAGE:
            assert setup.ss is not None
            return self._second_stage(setup.did, setup.ss), None
        assert setup.fs is not None
        if pasid is None or pasid == 0 or not self.bind_first_stage:
            return self._shadow(setup, effective_pasid, privileged), None
        if self.bound >= MAX_BINDINGS:
            self.reset()
        if setup.kind is Kind.FIRST_STAGE:
            dom = self._identity(setup.did)
        else:
            assert setup.ss is not None
            dom = self._second_stage(setup.did, setup.ss)
        self._bind(dom, pasid, setup.fs, sid)
        return dom, pasid

    def _bind(self, dom: HostDomain, pasid: int, fs: X86FirstStage, sid: int) -> None:
        key = fs_key(fs)
        held = dom.bound.get(pasid)
        if held is not None and held[0] == key:
            return
        self.host.bind_stage1(dom.ctx, pasid, fs)
        if held is None:
            self.bound += 1
        dom.bound[pasid] = (key, sid)

    def translate(self, dom: HostDomain, host_pasid: int | None, iova: int, access: int,
                  ) -> DmaTarget | Fault:
        return self.host.translate(dom.ctx, host_pasid, iova, access)

    # -- invalidation --------------------------------------------------------------------------

    def _matching(self, did: int | None) -> list[HostDomain]:
        return [d for d in self.domains.values() if did is None or d.did == did]

    def flush_iotlb(self, did: int | None, start: int = 0, size: int = 1 << 64) -> None:
        """IOTLB invalidation (register or type-2 descriptor): everything of the domain(s)
        cached from second-stage tables, in ``[start, start + size)`` of the IOVA space."""
        host = self.host
        whole = start == 0 and size >= 1 << 64
        for dom in self._matching(did):
            if dom.role is Role.IDENTITY and not dom.bound:
                continue
            if dom.role is Role.SECOND_STAGE and not dom.bound:
                if self.caching_mode:
                    host.unmap(dom.ctx, start, min(size, (1 << 64) - start))
                host.invalidate_s2(dom.ctx, start, size)
                host.invalidate(dom.ctx, iova=start, size=size)
                if self.caching_mode and not whole:
                    self._shadow_eagerly(dom, start, size)
                continue
            # A second-stage change at one IPA may move any first-stage output: drop all.
            if dom.role is not Role.IDENTITY:
                host.invalidate_s2(dom.ctx)
            host.invalidate(dom.ctx)

    def flush_pasid(self, did: int, pasid: int, start: int = 0, size: int = 1 << 64, *,
                    keep_global: bool = False) -> None:
        """PASID-based IOTLB invalidation: first-stage (and nested) translations of one
        PASID in one domain (``keep_global``: the non-global ones only)."""
        host = self.host
        for dom in self._matching(did):
            if dom.role is Role.SHADOW and dom.pasid == pasid:
                # A flattened shadow keeps no G bit: drop globals too (over-invalidation).
                host.invalidate_s2(dom.ctx, start, size)
                host.invalidate(dom.ctx, iova=start, size=size)
            elif pasid in dom.bound:
                host.invalidate(dom.ctx, pasid=pasid, iova=start, size=size,
                                keep_global=keep_global)

    def _shadow_eagerly(self, dom: HostDomain, start: int, size: int) -> None:
        """Caching mode: install what the guest table maps in the invalidated range now."""
        mem = self._memory()
        host = self.host
        walker = dom.walker
        end = min(start + size, 1 << 64)
        iova = start
        for _ in range(EAGER_PAGES):
            if iova >= end:
                return
            t = walker.walk(mem, iova, 0)
            if isinstance(t, Fault):
                iova = (iova | (PAGE - 1)) + 1
                continue
            stop = min(end, (iova & ~(t.size - 1)) + t.size)
            host.map(dom.ctx, iova, t.oa, stop - iova, t.perm)
            iova = stop

    # -- bindings ------------------------------------------------------------------------------

    def bindings(self) -> list[tuple[HostDomain, int, int]]:
        """(domain, PASID, source-id) of every stage-1 binding held."""
        return [(dom, pasid, sid) for dom in self.domains.values()
                for pasid, (_, sid) in dom.bound.items()]

    def unbind(self, dom: HostDomain, pasid: int) -> None:
        if dom.bound.pop(pasid, None) is not None:
            self.bound -= 1
            self.host.unbind_stage1(dom.ctx, pasid)

    def drop_shadows(self, did: int | None, pasid: int | None) -> None:
        """Forget first-stage shadows (their PASID entries may have changed)."""
        host = self.host
        for dom in self._matching(did):
            if dom.role is Role.SHADOW and (pasid is None or dom.pasid == pasid):
                host.invalidate_s2(dom.ctx)
                host.invalidate(dom.ctx)


def _flatten(t: Translation | Fault, iova: int) -> tuple[int, int, int] | Fault:
    """A walk result as a host fill: the naturally aligned block around ``iova``."""
    if isinstance(t, Fault):
        return t
    mask = t.size - 1
    return t.oa & ~mask, t.size, t.perm
