"""Translation of one transaction with SMMUEN = 1 (Arm IHI 0070 §3.3, §3.4, §3.9, §5, §7.3).

Order of the checks, each ending the transaction with its own outcome:
1. stream table lookup → C_BAD_STREAMID / F_STE_FETCH (``ste.locate_ste``), STE validity →
   C_BAD_STE (``ste.decode_ste``); both cached until CMD_CFGI_* (``config``);
2. STE.Config 0b0xx: abort, no event;
3. SubstreamID rules (§5.2 S1CDMax/S1DSS, §7.3.7, §7.3.9): a SubstreamID without stage 1,
   with S1CDMax = 0 or ≥ 2^S1CDMax (SSIDSIZE = 0 included) → C_BAD_SUBSTREAMID; no
   SubstreamID with S1DSS = terminate, or SubstreamID 0 with S1DSS = SSID0 →
   F_STREAM_DISABLED;
4. stage 1 bypassed (Config bypass or stage 2 only, or S1DSS = bypass): an input address
   beyond the IAS is a stage-1 F_ADDR_SIZE, CLASS = IN (§7.3.14);
5. the CD: L1CD/CD fetch (through stage 2 when it translates: a stage-2 fault there is that
   fault with CLASS = CD and IPA = the CD address) → F_CD_FETCH, C_BAD_SUBSTREAMID (L1CD),
   C_BAD_CD (``cd``);
6. the walk, done by the host (``HostPort.translate``): its ``Fault`` becomes F_TRANSLATION,
   F_ADDR_SIZE, F_ACCESS, F_PERMISSION or F_WALK_EABT with S2, CLASS (TT for a stage-2 fault
   on a stage-1 table, §7.3.13) and IPA.

Recording: configuration errors and fetch aborts always; the four translation-related faults
only with CD.R (stage 1) or STE.S2R (stage 2) (§5.5); F_WALK_EABT always (§5.5: only the
four are gated); the stage-1 address-size fault of a bypassed stage 1 has no CD to gate it
and is recorded.  C_BAD_STREAMID needs CR2.RECINVSID (§7.3.3).

The reply (protocol.md "DMA and TRANSLATE") reports every fault, recorded or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from devices.model import DmaRequest, DmaTarget, Env, FaultKind
from devices.pagetable import ACCESS_PRIV, ACCESS_R, ACCESS_W, ACCESS_X, Fault
from devices.pagetable.arm import ArmS2Config
from devices.pagetable.fast import FastWalker
from devices.pagetable.walker import ATTR_NG

from .caps import Caps
from .cd import BadSubstream, Cd, decode_cd, locate_cd
from .config import ConfigCache, ContextPool, HostContext, StreamEntry
from .events import CLASS_CD, CLASS_IN, CLASS_TT, EventType
from .ste import (
    S1DSS_BYPASS,
    S1DSS_SSID0,
    S1DSS_TERMINATE,
    Config,
    Ste,
    StreamFault,
    decode_ste,
    locate_ste,
)


@dataclass(frozen=True, slots=True)
class Abort:
    """A terminated transaction: what to answer and what (if anything) to record."""

    kind: FaultKind
    stage: int
    event: EventType | None
    """The architecture's code (None: no event exists for it, e.g. STE Config = abort)."""
    record: bool
    """Whether the architecture records it (before TRANSLATE's "never record")."""
    fields: dict[str, int] = field(default_factory=dict)
    """Event fields beyond the transaction's own (S2, CLASS, IPA, FetchAddr, SubstreamID)."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StreamTable:
    """SMMU_STRTAB_BASE / _CFG as the lookup uses them."""

    base: int
    log2size: int
    fmt: int
    split: int
    recinvsid: bool


_WALK_EVENTS = {
    FaultKind.TRANSLATION: EventType.F_TRANSLATION,
    FaultKind.ADDRESS_SIZE: EventType.F_ADDR_SIZE,
    FaultKind.ACCESS_FLAG: EventType.F_ACCESS,
    FaultKind.PERMISSION: EventType.F_PERMISSION,
    FaultKind.EXTERNAL_ABORT: EventType.F_WALK_EABT,
}

BYPASS_KEY = ("bypass",)


def access_of(req: DmaRequest) -> int:
    """The walker access of a request: writes are data (InD = 0 when RnW = 0, §7.3)."""
    if req.write:
        access = ACCESS_W
    else:
        access = ACCESS_R | (ACCESS_X if req.execute else 0)
    return access | (ACCESS_PRIV if req.privileged else 0)


def s2_fill(walker: ArmS2Config, env: Env) -> Callable[[int, int], tuple[int, int, int] | Fault]:
    """A host stage-2 miss handler walking the guest's stage-2 tables (through the C
    walker where it can, ``devices.pagetable.fast``: same results)."""
    fast = FastWalker(walker)

    def fill(ipa: int, access: int) -> tuple[int, int, int] | Fault:
        t = fast.walk(env.memory, ipa, access)
        if isinstance(t, Fault):
            return t
        return t.oa & ~(t.size - 1), t.size, t.perm
    return fill


_GIB = 1 << 30
_PAGE = 4096
_RWX = ACCESS_R | ACCESS_W | ACCESS_X


def ram_ranges(env: Env) -> list[tuple[int, int]]:
    get = getattr(env.memory, "ram_ranges", None)
    return list(get()) if get is not None else []


def uniform_block(ranges: list[tuple[int, int]], address: int, limit: int = _GIB) -> int:
    """The largest naturally aligned block (4 KiB to ``limit``) around ``address`` lying
    wholly inside one RAM region or wholly outside RAM — the blocks the host translates as
    one piece (its placement keeps each region contiguous, and nothing else)."""
    size = limit
    while size > _PAGE:
        base = address & ~(size - 1)
        end = base + size
        if all(end <= start or base >= start + length or (start <= base and end <= start + length)
               for start, length in ranges):
            break
        size >>= 1
    return size


def identity_fill(env: Env) -> Callable[[int, int], tuple[int, int, int]]:
    """An identity stage 2 (IPA = GPA) for stage-1-only streams in nested s1-mode, filled
    in ``uniform_block``s.  A host identity context answers in 4 KiB pages, which would make
    a nested translation's block min(stage-1 leaf, 4 KiB) where shadow s1-mode reports the
    stage-1 leaf; both modes apply the same block rule instead."""
    def fill(ipa: int, access: int) -> tuple[int, int, int]:
        size = uniform_block(ram_ranges(env), ipa)
        return ipa & ~(size - 1), size, _RWX
    return fill


class ShadowLog:
    """The blocks a shadow context's fill installed, with their globalness, so that TLB
    invalidation by ASID can spare global entries as the architecture does (a shadow block
    does not carry its ASID).  Bounded: past ``limit`` blocks it forgets them and says so,
    and invalidation by ASID then drops the whole context (over-invalidation is allowed)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.blocks: dict[int, tuple[int, bool]] = {}
        self.overflow = False

    def add(self, base: int, size: int, is_global: bool) -> None:
        if len(self.blocks) >= self.limit and base not in self.blocks:
            self.blocks.clear()
            self.overflow = True
        self.blocks[base] = (size, is_global)

    def clear(self) -> None:
        self.blocks.clear()
        self.overflow = False

    def take(self, *, is_global: bool, start: int = 0,
             size: int = 1 << 64) -> list[tuple[int, int]]:
        """Remove and return the blocks of that globalness overlapping the range."""
        end = start + size
        hit = [(base, bsize) for base, (bsize, glob) in self.blocks.items()
               if glob == is_global and base < end and start < base + bsize]
        for base, _ in hit:
            del self.blocks[base]
        return hit


def shadow_fill(cd: Cd, s2: ArmS2Config | None, env: Env,
                log: ShadowLog) -> Callable[[int, int], tuple[int, int, int] | Fault]:
    """A host miss handler walking the guest's stage 1 (through its stage 2) and returning
    the flattened block (shadow s1-mode).  The combination is ``devices.pagetable.Nested``'s
    (faults keep their stage, a stage-2 fault on the output carries its IPA, permissions
    AND); the block size follows the host's rule for the stage-2 block it would have
    walked in nested s1-mode (``uniform_block``), so both modes answer the same sizes.

    The walkers go through ``FastWalker`` (C where it can, same results), built once per
    fill.  Without stage 2 the stage-1 walk is wholly C; with it, stage 1 walks in Python
    and each of its table reads and its output go through the C stage 2 (a C ``Nested``
    walk would give only the combined block, and the size rule needs the stage-2 one)."""
    s1 = cd.walker
    fs2 = None if s2 is None else FastWalker(s2)
    fs1 = FastWalker(s1) if s2 is None else None

    def fill(iova: int, access: int) -> tuple[int, int, int] | Fault:
        mem = env.memory
        t1 = fs1.walk(mem, iova, access) if fs1 is not None else s1.walk(mem, iova, access, fs2)
        if isinstance(t1, Fault):
            return t1
        ranges = ram_ranges(env)
        if s2 is None:
            oa, perm = t1.oa, t1.perm
            size = min(t1.size, uniform_block(ranges, oa))
        else:
            assert fs2 is not None
            t2 = fs2.walk(mem, t1.oa, access)
            if isinstance(t2, Fault):
                return t2._replace(ipa=t1.oa)
            oa, perm = t2.oa, t1.perm & t2.perm
            block = t2.size if uniform_block(ranges, t2.oa, t2.size) == t2.size else _PAGE
            size = min(t1.size, block)
        base = iova & ~(size - 1)
        log.add(base, size, not t1.attrs & ATTR_NG)
        return oa & ~(size - 1), size, perm
    return fill


class Translator:
    """The SMMUEN = 1 path of one SMMU: configuration lookup, then the host."""

    def __init__(self, caps: Caps, env: Env, cache: ConfigCache, pool: ContextPool,
                 s1_mode: str) -> None:
        self.caps = caps
        self.env = env
        self.cache = cache
        self.pool = pool
        self.shadow = s1_mode == "shadow"

    # -- configuration ---------------------------------------------------------------------

    def load_stream(self, sid: int, st: StreamTable) -> StreamEntry | Abort:
        found = locate_ste(self.env.memory, st.base, st.log2size, st.fmt, st.split, sid)
        if isinstance(found, StreamFault):
            if found.event == EventType.C_BAD_STREAMID:
                return Abort(FaultKind.BAD_CONFIG, 0, found.event, st.recinvsid,
                             reason=found.reason)
            return Abort(FaultKind.EXTERNAL_ABORT, 0, found.event, True,
                         {"FetchAddr": found.fetch_addr >> 3}, found.reason)
        _, raw = found
        ste = decode_ste(raw, self.caps)
        if isinstance(ste, str):
            return Abort(FaultKind.BAD_CONFIG, 0, EventType.C_BAD_STE, True, reason=ste)
        return self.cache.add_stream(sid, ste)

    def load_cd(self, entry: StreamEntry, index: int) -> Cd | Abort:
        ste = entry.ste
        assert ste.s1 is not None
        s2 = ste.s2
        mem = self.env.memory

        def fetch(address: int, length: int) -> bytes | Abort:
            pa = address
            if s2 is not None:
                t = s2.walk(mem, address, ACCESS_R)
                if isinstance(t, Fault):
                    return self._walk_abort(t, ste, None, cd_fetch=address)
                pa = t.oa
            raw = mem.read(pa, length)
            if raw is None:
                return Abort(FaultKind.EXTERNAL_ABORT, 0, EventType.F_CD_FETCH, True,
                             {"FetchAddr": pa >> 3}, f"CD structure at {pa:#x} not readable")
            return raw

        limit = self.caps.ias if s2 is not None else self.caps.oas
        found = locate_cd(ste.s1, index, limit, fetch)
        if isinstance(found, Abort):
            return found
        if isinstance(found, BadSubstream):
            return Abort(FaultKind.BAD_CONFIG, 0, EventType.C_BAD_SUBSTREAMID, True,
                         {"SubstreamID": index}, found.reason)
        cd = decode_cd(found[1], self.caps)
        if isinstance(cd, str):
            return Abort(FaultKind.BAD_CONFIG, 0, EventType.C_BAD_CD, True, reason=cd)
        self.cache.add_cd(entry, index, cd)
        return cd

    # -- the transaction -------------------------------------------------------------------

    def translate(self, req: DmaRequest, st: StreamTable) -> DmaTarget | Abort:
        sid = req.requester
        entry = self.cache.stream(sid)
        if entry is None:
            got = self.load_stream(sid, st)
            if isinstance(got, Abort):
                return got
            entry = got
        ste = entry.ste
        if ste.config == Config.ABORT:
            return Abort(FaultKind.BLOCKED, 0, None, False, reason="STE.Config = abort")
        pasid = req.pasid
        s1 = ste.s1
        if s1 is None:
            if pasid is not None:
                return _bad_substream(pasid, "SubstreamID without stage 1")
            return self._bypass_s1(req, ste)
        if pasid is not None:
            if not s1.cdmax or pasid >> s1.cdmax:
                return _bad_substream(pasid, f"SubstreamID {pasid:#x} beyond S1CDMax "
                                             f"{s1.cdmax}")
            if s1.dss == S1DSS_SSID0 and pasid == 0:
                return _stream_disabled("SubstreamID 0 is reserved by S1DSS")
            index = pasid
        elif not s1.cdmax or s1.dss == S1DSS_SSID0:
            index = 0
        elif s1.dss == S1DSS_TERMINATE:
            return _stream_disabled("no SubstreamID and S1DSS = terminate")
        else:
            assert s1.dss == S1DSS_BYPASS
            return self._bypass_s1(req, ste)
        cd = self.cache.cd(entry, index)
        if cd is None:
            got_cd = self.load_cd(entry, index)
            if isinstance(got_cd, Abort):
                return got_cd
            cd = got_cd
        access = access_of(req)
        hc = self._s1_context(req, ste, pasid, index, cd, access)
        if hc is None:
            return Abort(FaultKind.BLOCKED, 0, None, False, reason="no host context left")
        host_pasid = None if self.shadow else pasid
        result = self.env.host.translate(hc.ctx, host_pasid, req.iova, access)
        if isinstance(result, Fault):
            return self._walk_abort(result, ste, cd, req.iova)
        return result

    def _bypass_s1(self, req: DmaRequest, ste: Ste) -> DmaTarget | Abort:
        """Stage 1 bypassed: the input address is the IPA (PA without stage 2)."""
        if req.iova >> self.caps.ias:
            return Abort(FaultKind.ADDRESS_SIZE, 1, EventType.F_ADDR_SIZE, True,
                         {"S2": 0, "CLASS": CLASS_IN},
                         "input beyond the IAS with stage 1 bypassed")
        access = access_of(req)
        if ste.s2 is None:
            hc = self.pool.get(BYPASS_KEY) or self.pool.add(
                BYPASS_KEY, identity=True, fill=None, sid=None, vmid=0, s1=False, s2=False,
                shadow=False)
        else:
            key = (req.requester, None, "s2")
            hc = self.pool.get(key) or self.pool.add(
                key, identity=False, fill=s2_fill(ste.s2, self.env), sid=req.requester,
                vmid=ste.vmid, s1=False, s2=True, shadow=False)
        if hc is None:
            return Abort(FaultKind.BLOCKED, 0, None, False, reason="no host context left")
        result = self.env.host.translate(hc.ctx, None, req.iova, access)
        if isinstance(result, Fault):
            return self._walk_abort(result, ste, None, req.iova)
        return result

    def _s1_context(self, req: DmaRequest, ste: Ste, pasid: int | None, index: int,
                    cd: Cd, access: int) -> HostContext | None:
        sid = req.requester
        s2 = ste.s2
        if self.shadow:
            shadow_key = (sid, pasid, bool(access & ACCESS_PRIV))
            hc = self.pool.get(shadow_key)
            if hc is None or hc.cd is None or hc.cd[1] is not cd:
                log = ShadowLog()
                hc = self.pool.add(shadow_key, identity=False,
                                   fill=shadow_fill(cd, s2, self.env, log), sid=sid,
                                   vmid=ste.vmid, s1=True, s2=s2 is not None, shadow=True)
                if hc is not None:
                    hc.cd = (index, cd)
                    hc.log = log
            return hc
        key = (sid,)
        hc = self.pool.get(key)
        if hc is None:
            hc = self.pool.add(key, identity=False,
                               fill=identity_fill(self.env) if s2 is None
                               else s2_fill(s2, self.env), sid=sid,
                               vmid=ste.vmid, s1=True, s2=s2 is not None, shadow=False)
            if hc is None:
                return None
        bound = hc.bound.get(pasid)
        if bound is None or bound[1] is not cd:
            self.env.host.bind_stage1(hc.ctx, pasid, cd.walker, cd.asid)
            hc.bound[pasid] = (index, cd)
        return hc

    # -- faults → events -------------------------------------------------------------------

    def _walk_abort(self, fault: Fault, ste: Ste, cd: Cd | None, iova: int = 0,
                    cd_fetch: int | None = None) -> Abort:
        event = _WALK_EVENTS.get(fault.kind)
        if event is None:  # the host refused (no context): nothing architectural
            return Abort(fault.kind, 0, None, False, reason=f"host: {fault.reason.name}")
        eabt = event == EventType.F_WALK_EABT
        fields: dict[str, int] = {}
        if fault.stage == 2:
            if cd_fetch is not None:
                cls, ipa = CLASS_CD, cd_fetch
            elif fault.s1ptw:
                cls, ipa = CLASS_TT, fault.ipa if fault.ipa is not None else 0
                fields["TTRnW"] = 1
            else:
                # Stage 2 only: the input address is the IPA.
                cls, ipa = CLASS_IN, fault.ipa if fault.ipa is not None else iova
            fields.update(S2=1, CLASS=cls, IPA=ipa >> 12)
            if eabt:
                fields["FetchAddr"] = (fault.pte_addr or 0) >> 3
            record = eabt or ste.s2r
        else:
            fields.update(S2=0, CLASS=CLASS_TT if eabt else CLASS_IN)
            if eabt:
                fields["FetchAddr"] = self._stage1_pa(fault.pte_addr or 0, ste) >> 3
            record = eabt or (cd.record if cd is not None else True)
        return Abort(fault.kind, fault.stage, event, record, fields, fault.reason.name)

    def _stage1_pa(self, ipa: int, ste: Ste) -> int:
        """Where a stage-1 descriptor at ``ipa`` really is (for FetchAddr)."""
        if ste.s2 is None:
            return ipa
        t = ste.s2.walk(self.env.memory, ipa, 0)
        return ipa if isinstance(t, Fault) else t.oa


def _bad_substream(pasid: int, reason: str) -> Abort:
    return Abort(FaultKind.BAD_CONFIG, 0, EventType.C_BAD_SUBSTREAMID, True,
                 {"SubstreamID": pasid & 0xFFFFF}, reason)


def _stream_disabled(reason: str) -> Abort:
    return Abort(FaultKind.BLOCKED, 0, EventType.F_STREAM_DISABLED, True, reason=reason)
