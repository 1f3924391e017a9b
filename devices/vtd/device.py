"""The Intel VT-d remapping unit as an IOMMU model: options, capabilities, register handshakes.

Intel VT-d Architecture Specification rev 5.10: §11.4 (register semantics, including the
GCMD recipe), §6.5.1 (register-based invalidation), §6.5.2 (queued invalidation
enable/disable), chapter 7 (fault recording and fault events).  The register declarations
are in ``devices.vtd.regs``; this module holds the behaviour, as hooks after the generic
write rule.

Decisions (where the spec leaves room or QEMU's ``intel_iommu`` differs):

- VER reads 1.0 (0x10), as QEMU reports.  The version is informational for rev 1.0-5.x
  hardware (guests test CAP/ECAP), and any VER ≥ 6.0 would forbid the register-based
  invalidation this unit offers (§6.5.1).
- GCMD, one command per write (§11.4): software computes each write from GSTS (masking the
  one-shot bits with 0x96FFFFFF) and changes one bit.  Each persistent bit (TE, QIE, IRE, CFI)
  is the requested state — the spec defines 0 as "disable" — so a write that omits an enabled
  bit disables it, exactly like QEMU's "act on change".  The spec leaves a write that changes
  several bits undefined; we act on all of them in a fixed order (pointer latches SRTP/SIRTP,
  then QIE, IRE, CFI, then TE last, so translation starts with the root table of the same
  write).  SRTP and SIRTP act whenever written as 1, so writing raw GSTS back re-latches
  (that is why the recipe masks them).  WBF is ignored: CAP.RWBF = 0, so WBFS stays 0.
- IRE, SIRTP and CFI are RsvdZ without ECAP.IR (option ``intremap``, default off).
- QIE enable latches IQA and starts the queue at IQH = 0; disable succeeds only when
  IQH == IQT and then zeroes IQH (the spec: IQH reads 0 whenever QIES is clear).  QEMU also
  insists that the last descriptor was a wait descriptor; the spec does not, nor do we.
- Register-based invalidation (CCMD, IOTLB) completes at once (ICC/IVT read 0) and reports
  CAIG/IAIG = 00 ("not performed") while QIES = 1 or the active root table has TTM ≠ 00
  (§6.5.1, §11.4); QEMU runs it regardless of TTM, and logs and ignores it while QIES = 1.
  A page-selective request with IVA.AM > MAMV also reports 00 (as QEMU).
- PASID support needs scalable mode; ``pasid-bits`` defaults to 0 (no PASID), like QEMU.
  First-stage tables (ECAP.FSTS) come with scalable mode when ``aw-bits`` ≥ 48 (4- or 5-level
  first-stage paging; a 39-bit unit offers second stage only).
- ECAP.VCS (option ``vcmd``): the rev 3.3+ interface.  VCCAP reports NS and PAS; PASID
  allocation and free go to the host's PASID allocator (seed 004: guest PASIDs are host
  PASIDs), SC = 16 when none is left or the PASID to free is not allocated, SC = 1 for any
  other command.  Commands complete synchronously (VCRSP.IP reads 0 again at once).
- Translation goes through the host IOMMU (``hostmap``): second stage shadowed into host
  contexts, first stage bound per PASID (option ``first-stage=bind``, nested) or shadowed
  (``first-stage=shadow``); requests without PASID and PASID 0 always use the shadow.
- The context cache holds decoded context entries per source-id and the PASID cache decoded
  PASID entries per (source-id, PASID); both fill only with entries that translate (a faulting
  configuration is read again next time, as allowed with and without CAP.CM).  A new root
  table (SRTP, with CAP.ESRTPS) and every TE change drop all caches and host state.
- Requests without PASID are unprivileged reads/writes: PCIe carries privilege and execute
  only in the PASID prefix, so PRIVILEGED/EXECUTE flags without a PASID are not honoured.
  A request with PASID asking to execute is refused with 0x5C (ECAP.ERS = 0).
- TRANSLATE (``record=False``) answers what a DMA would get; it is not gated on the context's
  device-TLB enable (TT = 01 / DTE), so reasons 0xD and 0x44 are never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devices.model import (
    DmaFault,
    DmaRequest,
    DmaTarget,
    Env,
    FaultKind,
    IommuModel,
    Option,
    Perm,
)
from devices.pagetable import ACCESS_PRIV, ACCESS_R, ACCESS_W, ACCESS_X, Fault, Reason
from devices.ranges import vtd_devtlb_range, vtd_iotlb_range
from devices.regs import Register, RegisterFile
from devices.vtd import descriptors as dsc
from devices.vtd import regs as r
from devices.vtd.descriptors import DescType
from devices.vtd.faults import FR, NOT_QUALIFIED, FaultInfo, FaultRecorder, config_kind
from devices.vtd.hostmap import HostMap
from devices.vtd.lookup import (
    ConfigFault,
    Kind,
    ScalableContext,
    Setup,
    Unit,
    legacy_context,
    scalable_context,
    scalable_pasid,
)
from devices.vtd.prq import (
    TYPE_PAGE_REQUEST,
    PageRequest,
    PageRequestQueue,
    PageRequestResult,
    PageResponse,
)
from devices.vtd.queue import InvalidationQueue
from devices.vtd.regs import CAP, CCMD, ECAP, GCMD, GSTS, IOTLB, IVA, RTADDR, VCRSP

log = logging.getLogger(__name__)

GPA_LIMIT = 1 << 52
"""Guest-physical addresses are below 2^52 (protocol.md); untranslated DMA beyond faults."""

_PAGE = 4096
NO_PASID = 0xFFFF_FFFF
"""The back-end channel's "no PASID" (protocol.md ATC_INVALIDATE)."""
PASID_CACHE_MAX = 1 << 16
"""PASID-cache entries kept; beyond, the cache starts again empty (dropping cached entries
is always allowed), so a guest with millions of PASIDs cannot grow the model's memory."""
EAGER_BIND_DEVICES = 64
"""Devices whose PASID a PASID-selective cache invalidation binds at once; the others bind
at their first request with that PASID (bounded work per descriptor)."""

_EVENTS = {
    # event control register: (vector name, data, address, upper address registers)
    "FECTL": ("fault", "FEDATA", "FEADDR", "FEUADDR"),
    "IECTL": ("invalidation", "IEDATA", "IEADDR", "IEUADDR"),
    "PECTL": ("page-request", "PEDATA", "PEADDR", "PEUADDR"),
}


def _bool(name: str, default: bool, help: str) -> Option:
    return Option(name, "bool", default, help)


@dataclass(frozen=True)
class Features:
    """The options that shape CAP and ECAP, validated."""

    aw_bits: int = 48
    scalable_mode: bool = False
    caching_mode: bool = False
    pasid_bits: int = 0
    device_iotlb: bool = False
    pt: bool = True
    snoop_control: bool = False
    intremap: bool = False
    nesting: bool = False
    pri: bool = False
    vcmd: bool = False
    first_stage_bind: bool = True

    def __post_init__(self) -> None:
        if self.aw_bits not in (39, 48, 57):
            raise ValueError(f"aw-bits must be 39, 48 or 57, not {self.aw_bits}")
        if not 0 <= self.pasid_bits <= 20:
            raise ValueError(f"pasid-bits must be 0..20, not {self.pasid_bits}")
        needs_sm = {"pasid-bits": self.pasid_bits > 0, "nesting": self.nesting,
                    "pri": self.pri, "vcmd": self.vcmd}
        for name, wanted in needs_sm.items():
            if wanted and not self.scalable_mode:
                raise ValueError(f"{name} needs scalable-mode=on")
        if self.nesting and not self.first_stage:
            raise ValueError("nesting needs first-stage tables (aw-bits 48 or 57)")
        if self.pri and not (self.device_iotlb and self.pasid_bits):
            raise ValueError("pri needs device-iotlb=on and pasid-bits > 0")
        if self.vcmd and not self.pasid_bits:
            raise ValueError("vcmd needs pasid-bits > 0")

    @property
    def first_stage(self) -> bool:
        return self.scalable_mode and self.aw_bits >= 48

    def unit(self) -> Unit:
        cap, ecap = self.cap(), self.ecap()
        return Unit(
            aw_bits=self.aw_bits, sagaw=CAP.SAGAW.get(cap),
            sp_1g=bool(CAP.SSLPS.get(cap) & r.SSLPS_1G), dt=self.device_iotlb, pt=self.pt,
            snoop=self.snoop_control, nest=self.nesting, fsts=self.first_stage,
            ssts=self.scalable_mode, fs5lp=bool(CAP.FS5LP.get(cap)),
            fs1gp=bool(CAP.FS1GP.get(cap)), srs=bool(ECAP.SRS.get(ecap)),
            pasid_bits=self.pasid_bits,
        )

    def cap(self) -> int:
        sagaw = {39: r.SAGAW_39, 48: r.SAGAW_39 | r.SAGAW_48,
                 57: r.SAGAW_39 | r.SAGAW_48 | r.SAGAW_57}[self.aw_bits]
        fields = {
            "ND": 6,  # 16-bit domain IDs
            "CM": self.caching_mode,
            "SAGAW": sagaw,
            "MGAW": self.aw_bits - 1,
            "FRO": r.FRO,
            "SSLPS": r.SSLPS_2M | r.SSLPS_1G,
            "PSI": 1,
            "NFR": r.NFR,
            "MAMV": r.MAMV,
            "DWD": 1,  # deprecated; hardware reports 1
            "DRD": 1,
            "FS1GP": self.first_stage,
            "FS5LP": self.first_stage and self.aw_bits == 57,
            "ESRTPS": 1,  # SRTP drops every cache: nothing cached survives a new root
        }
        return _compose(CAP, fields)

    def ecap(self) -> int:
        fields = {
            "QI": 1,
            "DT": self.device_iotlb,
            "IR": self.intremap,
            "PT": self.pt,
            "SC": self.snoop_control,
            "IRO": r.IRO,
            "MHMV": 15 if self.intremap else 0,
            "NEST": self.nesting,
            "PRS": self.pri,
            "SRS": self.pasid_bits > 0 and self.first_stage,
            "PSS": max(self.pasid_bits - 1, 0),
            "PASID": self.pasid_bits > 0,
            "PDS": self.pri,
            "SMTS": self.scalable_mode,
            "VCS": self.vcmd,
            "SSTS": self.scalable_mode,
            "FSTS": self.first_stage,
        }
        return _compose(ECAP, fields)


def _compose(reg: Register, fields: dict[str, int | bool]) -> int:
    value = 0
    for name, v in fields.items():
        value |= reg.field(name).prep(int(v))
    return value


class VTd(IommuModel):
    """An Intel VT-d remapping unit (one DRHD)."""

    model = "vtd"
    irq_names = ("fault", "invalidation", "page-request")
    mmio_size = r.WINDOW
    default_base = 0xFED9_0000
    options = (
        Option("id", "int", 0, "device id in GET_CONFIG and MMIO/RESET requests"),
        Option("base", "int", 0xFED9_0000, "guest-physical base of the register window"),
        Option("rids", "range", (0, 0xFFFF), "requester IDs (bus<<8|devfn) behind this unit"),
        Option("aw-bits", "int", 48, "guest address width: CAP.SAGAW/MGAW", (39, 48, 57)),
        _bool("scalable-mode", False, "scalable-mode translation (ECAP.SMTS/SSTS/FSTS)"),
        _bool("caching-mode", False, "CAP.CM: shadow second-stage tables when invalidated"),
        Option("pasid-bits", "int", 0, "PASID width, 0 = no PASID (ECAP.PASID/PSS)",
               tuple(range(21))),
        _bool("device-iotlb", False, "ATS device-TLBs (ECAP.DT)"),
        _bool("pt", True, "pass-through translation type (ECAP.PT)"),
        _bool("snoop-control", False, "ECAP.SC"),
        _bool("intremap", False, "interrupt-remapping registers and commands (ECAP.IR)"),
        _bool("nesting", False, "nested first/second-stage translation (ECAP.NEST)"),
        _bool("pri", False, "page requests (ECAP.PRS/PDS; needs device-iotlb and PASID)"),
        _bool("vcmd", False, "virtual command interface (ECAP.VCS)"),
        Option("first-stage", "str", "bind",
               "carry guest first-stage tables into the host: bind (nested) or shadow",
               ("bind", "shadow")),
    )

    def __init__(self, config: dict[str, Any], env: Env) -> None:
        super().__init__(config, env)

        def opt(name: str) -> Any:
            default = next(o.default for o in self.options if o.name == name)
            return config.get(name, default)

        self.features = Features(
            aw_bits=int(opt("aw-bits")), scalable_mode=bool(opt("scalable-mode")),
            caching_mode=bool(opt("caching-mode")), pasid_bits=int(opt("pasid-bits")),
            device_iotlb=bool(opt("device-iotlb")), pt=bool(opt("pt")),
            snoop_control=bool(opt("snoop-control")), intremap=bool(opt("intremap")),
            nesting=bool(opt("nesting")), pri=bool(opt("pri")), vcmd=bool(opt("vcmd")),
            first_stage_bind=opt("first-stage") != "shadow",
        )
        self.cap = self.features.cap()
        self.ecap = self.features.ecap()
        self.unit = self.features.unit()
        self.regs = RegisterFile(r.declare(self.cap, self.ecap), r.WINDOW)
        hooks = {
            "GCMD": self._gcmd_written, "FSTS": self._fsts_written,
            "FECTL": lambda old, new: self._ctl_written("FECTL"), "ICS": self._ics_written,
            "IECTL": lambda old, new: self._ctl_written("IECTL"), "PRS": self._prs_written,
            "PECTL": lambda old, new: self._ctl_written("PECTL"),
            "IQT": lambda old, new: self._iqt_written(),
            "CCMD": self._ccmd_written, "IOTLB": self._iotlb_written, "VCMD": self._vcmd_written,
            **{reg.name: self._frcd_written for reg in r.FRCD_HI},
        }
        # Registers made RsvdZ by a missing feature get no behaviour.
        self.regs.on_write.update(
            {name: hook for name, hook in hooks.items() if self.regs.register(name).fields})
        # The hardware's own copies of the pointers, latched by GCMD commands.
        self.active_rtaddr = 0
        self.active_irta = 0
        self.active_iqa = 0
        self.ite_sid: int | None = None
        """The SID of a device-TLB invalidation that timed out, until the next wait
        descriptor reports it (§6.5.2.10)."""
        f = self.features
        self.queue = InvalidationQueue(dsc.Support(
            device_tlb=f.device_iotlb, iec=f.intremap, scalable=f.scalable_mode,
            page_requests=f.pri, drain=f.pri, dit=False, mhmv=ECAP.MHMV.get(self.ecap),
        ), smts=f.scalable_mode, adms=False)
        self.faults = FaultRecorder(self.regs, lambda: self._raise_event("FECTL"))
        self.prq = PageRequestQueue(self.regs, lambda: self._raise_event("PECTL"))
        self.hostmap = HostMap(lambda: self.env.host, lambda: self.env.memory,
                               caching_mode=f.caching_mode,
                               bind_first_stage=f.first_stage_bind)
        self.context_cache: dict[int, Setup | ScalableContext] = {}
        """Source-id → decoded context entry (legacy: its setup)."""
        self.pasid_cache: dict[tuple[int, int], Setup] = {}
        """(source-id, PASID) → decoded PASID entry (scalable mode)."""
        self.page_responses: list[PageResponse] = []
        """Every page group response sent to a device, in order."""
        self.last_page_request = PageRequestResult.DROPPED
        """What the hardware did with the latest page request."""
        self.reset()

    # -- the IommuModel contract ------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if self.queue.pending:
            self._run_queue()
        return self.regs.read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.queue.pending:
            self._run_queue()
        self.regs.write(offset, size, value)

    def reset(self) -> None:
        self.regs.reset()
        if self.features.vcmd:
            self.regs["VCCAP"] = r.VCCAP.NS.mask | r.VCCAP.PAS.mask
        self.active_rtaddr = 0
        self.active_irta = 0
        self.active_iqa = 0
        self.ite_sid = None
        self.queue.pending = False
        self.faults.reset()
        self.page_responses.clear()
        self.last_page_request = PageRequestResult.DROPPED
        self._drop_caches()

    def _drop_caches(self) -> None:
        self.context_cache.clear()
        self.pasid_cache.clear()
        self.hostmap.reset()

    def translate(self, req: DmaRequest) -> DmaTarget | DmaFault:
        """Translate one page of DMA (§3.4-§3.8).

        With GSTS.TES = 0 remapping is off and requests pass untranslated, within the
        guest-physical space (below 2^52: beyond it there is no memory to reach, answered as
        an address-size fault, recorded nowhere since remapping is off).
        """
        if not GSTS.TES.get(self.regs["GSTS"]):
            if req.iova >= GPA_LIMIT:
                return DmaFault(FaultKind.ADDRESS_SIZE, 0, req.iova, 0)
            return DmaTarget(gpa=req.iova, size=_PAGE, perms=Perm.R | Perm.W | Perm.X)
        got = self._setup(req.requester, req.pasid)
        if isinstance(got, ConfigFault):
            return self._config_fault(req, got)
        setup, effective = got
        access = ACCESS_W if req.write else ACCESS_R
        if req.pasid is not None:
            if req.execute:
                return self._config_fault(req, ConfigFault(FR.SM_ERE_CLEAR, setup.fpd))
            if req.privileged:
                access |= ACCESS_PRIV
        if setup.kind is Kind.PASS_THROUGH and req.iova >> self.unit.aw_bits:
            reason = FR.SM_BEYOND_HAW if setup.scalable else FR.ADDRESS_BEYOND_MGAW
            return self._fault(req, reason, setup.fpd, FaultKind.ADDRESS_SIZE, 0)
        dom, host_pasid = self.hostmap.route(setup, req.pasid, effective, req.requester,
                                             bool(access & ACCESS_PRIV))
        result = self.hostmap.translate(dom, host_pasid, req.iova, access)
        if isinstance(result, Fault):
            return self._walk_fault(req, setup, result, access)
        return result

    # -- configuration lookup and the context/PASID caches (§6.2.1-§6.2.2) -------------------

    def _setup(self, sid: int, pasid: int | None) -> tuple[Setup, int] | ConfigFault:
        """The setup of a request and its effective PASID (RID_PASID for none)."""
        rtaddr = self.active_rtaddr
        ttm = RTADDR.TTM.get(rtaddr)
        rta = RTADDR.RTA.get(rtaddr) << 12
        mem = self.env.memory
        if ttm == r.TTM_LEGACY:
            if pasid is not None:
                return ConfigFault(FR.SM_PASID_IN_LEGACY)
            cached = self.context_cache.get(sid)
            if cached is None:
                got = legacy_context(mem, rta, sid, self.unit)
                if isinstance(got, ConfigFault):
                    return got
                self.context_cache[sid] = cached = got
            assert isinstance(cached, Setup)
            return cached, 0
        if ttm != r.TTM_SCALABLE or not self.features.scalable_mode:
            return ConfigFault(FR.SM_RTA_INVALID)
        sc = self.context_cache.get(sid)
        if sc is None:
            got_sc = scalable_context(mem, rta, sid, self.unit)
            if isinstance(got_sc, ConfigFault):
                return got_sc
            self.context_cache[sid] = sc = got_sc
        assert isinstance(sc, ScalableContext)
        effective = sc.entry.RID_PASID if pasid is None else pasid
        setup = self.pasid_cache.get((sid, effective))
        if setup is None or (pasid is not None and not sc.entry.PASIDE):
            got_pe = scalable_pasid(mem, sc, pasid, self.unit)
            if isinstance(got_pe, ConfigFault):
                return got_pe
            setup = got_pe[0]
            if len(self.pasid_cache) >= PASID_CACHE_MAX:
                self.pasid_cache.clear()
            self.pasid_cache[(sid, effective)] = setup
        return setup, effective

    # -- faults (chapter 7) ------------------------------------------------------------------

    def _config_fault(self, req: DmaRequest, cf: ConfigFault) -> DmaFault:
        kind, stage = config_kind(cf.reason)
        return self._fault(req, cf.reason, cf.fpd, kind, stage)

    def _fault(self, req: DmaRequest, reason: FR, fpd: bool, kind: FaultKind,
               stage: int) -> DmaFault:
        if req.record and not (fpd and reason not in NOT_QUALIFIED):
            self.faults.record(FaultInfo(
                req.requester, req.iova, int(reason), write=req.write,
                privileged=req.privileged and req.pasid is not None,
                execute=req.execute and req.pasid is not None, pasid=req.pasid))
        return DmaFault(kind, int(reason), req.iova, stage)

    def _walk_fault(self, req: DmaRequest, setup: Setup, f: Fault, access: int) -> DmaFault:
        """A host walk fault as the VT-d fault reason (§7.1.3) and protocol kind."""
        kind = f.kind
        if f.kind is FaultKind.BLOCKED:
            return DmaFault(FaultKind.BLOCKED, 0, req.iova, 0)
        reason = f.reason
        if f.stage == 1:
            reason_fs = {
                Reason.NON_CANONICAL: FR.FS_NON_CANONICAL, Reason.NOT_PRESENT: FR.FS_NOT_PRESENT,
                Reason.RESERVED: FR.FS_RESERVED, Reason.OUTPUT_SIZE: FR.FS_RESERVED,
                Reason.SUPERVISOR: FR.SM_SRE_CLEAR, Reason.UPDATE_FAILED: FR.FS_AD_UPDATE,
            }
            fr = reason_fs.get(reason)
            if reason is Reason.WALK_ABORT:
                top = setup.fs.levels if setup.fs is not None else 0
                fr = FR.FS_ROOT_ACCESS if f.level == top else FR.FS_ACCESS
            elif reason is Reason.PERMISSION:
                fr = self._fs_permission(req, setup, access)
            if reason is Reason.NON_CANONICAL:
                kind = FaultKind.ADDRESS_SIZE
            if fr is None:
                fr = FR.FS_NOT_PRESENT
            return self._fault(req, fr, setup.fpd, kind, 1)
        if f.s1ptw and setup.fs is not None:
            # Nested: second stage refused a first-stage table access (§3.8).
            if reason is Reason.INPUT_RANGE:
                fr = FR.NESTED_FS_BEYOND_MGAW
                kind = FaultKind.ADDRESS_SIZE
            elif f.kind is FaultKind.PERMISSION and f.level is None:
                fr = FR.NESTED_FS_WRITE  # the A/D update of a first-stage entry
            elif reason is Reason.WALK_ABORT:
                fr = FR.SS_ACCESS
            elif reason in (Reason.RESERVED, Reason.OUTPUT_SIZE):
                fr = FR.SS_RESERVED
            elif (f.ipa or 0) >> 12 == setup.fs.root >> 12:
                fr = FR.NESTED_FS_ROOT_READ
            else:
                fr = FR.NESTED_FS_READ
            if reason is Reason.NOT_PRESENT:
                kind = FaultKind.PERMISSION
            return self._fault(req, fr, setup.fpd, kind, 2)
        sm = setup.scalable
        if reason is Reason.INPUT_RANGE:
            fr = FR.SS_BEYOND_AGAW if sm else FR.ADDRESS_BEYOND_MGAW
            kind = FaultKind.ADDRESS_SIZE
        elif reason in (Reason.NOT_PRESENT, Reason.PERMISSION):
            kind = FaultKind.PERMISSION  # a second-stage entry without the R/W bit needed
            if sm and reason is Reason.NOT_PRESENT:
                fr = FR.SS_NOT_PRESENT
            elif req.write:
                fr = FR.SM_WRITE if sm else FR.WRITE
            else:
                fr = FR.SM_READ if sm else FR.READ
        elif reason is Reason.WALK_ABORT or reason is Reason.UPDATE_FAILED:
            fr = FR.SS_ACCESS if sm else FR.PAGING_ENTRY_ACCESS
        else:
            fr = FR.SS_RESERVED if sm else FR.PAGING_ENTRY_RESERVED
        return self._fault(req, fr, setup.fpd, kind, 2)

    def _fs_permission(self, req: DmaRequest, setup: Setup, access: int) -> FR:
        """Which first-stage right was missing: U/S (0x81), R/W (0x85), XD (0x82)."""
        fs = setup.fs
        assert fs is not None
        looked = fs.walk(self.env.memory, req.iova, 0, setup.ss)
        if isinstance(looked, Fault):
            return FR.SM_WRITE if req.write else FR.SM_READ
        perm = looked.priv_perm if access & ACCESS_PRIV else looked.user_perm
        if not access & ACCESS_PRIV and not looked.user_perm:
            return FR.FS_USER
        if access & ACCESS_W and not perm & ACCESS_W:
            return FR.SM_WRITE
        if access & ACCESS_X and not perm & ACCESS_X:
            return FR.FS_EXECUTE
        return FR.SM_READ

    # -- GCMD / GSTS (§11.4) ------------------------------------------------------------------

    def _set_status(self, name: str, value: int) -> None:
        gsts = self.regs["GSTS"]
        f = GSTS.field(name)
        if f.get(gsts) != value:
            log.debug("GSTS.%s %d → %d", name, f.get(gsts), value)
        self.regs["GSTS"] = (gsts & ~f.mask) | f.prep(value)

    def _gcmd_written(self, old: int, cmd: int) -> None:
        self.regs["GCMD"] = 0  # write-only: keep no stale command around
        gsts = self.regs["GSTS"]
        ir = bool(ECAP.IR.get(self.ecap))
        if GCMD.SRTP.get(cmd):
            # CAP.ESRTPS: a new root table also drops every cached context/PASID/IOTLB entry.
            self.active_rtaddr = self.regs["RTADDR"]
            self._drop_caches()
            self._set_status("RTPS", 1)
        if ir and GCMD.SIRTP.get(cmd):
            self.active_irta = self.regs["IRTA"]
            self._set_status("IRTPS", 1)
        if GCMD.QIE.get(cmd) != GSTS.QIES.get(gsts):
            self._qie(bool(GCMD.QIE.get(cmd)))
        if ir:
            self._set_status("IRES", GCMD.IRE.get(cmd))
            self._set_status("CFIS", GCMD.CFI.get(cmd))
        if GCMD.TE.get(cmd) != GSTS.TES.get(gsts):
            self._drop_caches()
        self._set_status("TES", GCMD.TE.get(cmd))

    def _qie(self, enable: bool) -> None:
        """§6.5.2: enable latches IQA and starts at IQH = 0; disable needs an idle queue."""
        if enable:
            self.active_iqa = self.regs["IQA"]
            self.regs["IQH"] = 0
            self._set_status("QIES", 1)
            # Windows programs IQT before enabling the queue: run whatever is already there.
            self._iqt_written()
        elif self.regs["IQH"] == self.regs["IQT"]:
            self._set_status("QIES", 0)
            self.regs["IQH"] = 0
            self.queue.pending = False
        else:
            log.debug("QIE disable refused: IQH %#x != IQT %#x",
                      self.regs["IQH"], self.regs["IQT"])

    # -- queued invalidation (§6.5.2) ---------------------------------------------------------

    def _iqt_written(self) -> None:
        """Run the invalidation queue from IQH up to IQT (after every IQT write, at QIE
        enable, when software clears IQE, and at register accesses while work is left)."""
        self._run_queue()

    def _run_queue(self) -> None:
        regs = self.regs
        stopped = regs["FSTS"] & (r.FSTS.IQE.mask | r.FSTS.ITE.mask)
        if not GSTS.QIES.get(regs["GSTS"]) or stopped:
            self.queue.pending = False
            return
        head, err = self.queue.run(self.env.memory, self.active_iqa, regs["IQH"], regs["IQT"],
                                   self.active_rtaddr, self._execute)
        regs["IQH"] = head
        if err is not None:
            self._queue_error(err)

    def _queue_error(self, iqei: int) -> None:
        log.debug("invalidation queue error IQEI %d at IQH %#x", iqei, self.regs["IQH"])
        fsts = self.regs["FSTS"]
        self.regs["IQERCD"] = r.IQERCD.IQEI.prep(iqei)
        self.regs["FSTS"] = fsts | r.FSTS.IQE.mask
        if not fsts & r.FSTS_EVENT_MASK:
            self._raise_event("FECTL")

    def _devtlb_invalidate(self, sid: int, pasid: int, start: int, size: int) -> None:
        """A device-TLB invalidation the Env could not deliver never completes: remembered
        for the next wait descriptor (§6.5.2.10, ``_time_out``)."""
        if not self.env.atc_invalidate(sid, pasid, start, size) and self.ite_sid is None:
            self.ite_sid = sid

    def _time_out(self) -> None:
        """§6.5.2.10 Invalidation Time-out Error, at the wait descriptor that would have waited
        for the lost completion: the wait is aborted (no status write, no interrupt), IQH moves
        past it, FSTS.ITE and IQERCD.ITESID are set, a fault event is raised as for IQE, and
        no descriptor is fetched until software clears ITE."""
        sid, self.ite_sid = self.ite_sid or 0, None
        log.debug("invalidation time-out error, SID %#x", sid)
        fsts = self.regs["FSTS"]
        self.regs["IQERCD"] = (self.regs["IQERCD"] & ~r.IQERCD.ITESID.mask) | \
            r.IQERCD.ITESID.prep(sid)
        self.regs["FSTS"] = fsts | r.FSTS.ITE.mask
        if not fsts & r.FSTS_EVENT_MASK:
            self._raise_event("FECTL")

    def _execute(self, t: DescType, d: Any) -> bool:
        if t is DescType.WAIT and self.ite_sid is not None:
            self._time_out()
            return True
        if t is DescType.CONTEXT_CACHE:
            self._invalidate_context(d.G, d.DID, d.SID, d.FM)
        elif t is DescType.IOTLB:
            self._iotlb_flush(d.G, d.DID, d.ADDR << 12, d.AM)
        elif t is DescType.DEVICE_TLB:
            start, size = vtd_devtlb_range(d.ADDR << 12, d.S)
            self._devtlb_invalidate(d.SID, NO_PASID, start, size)
        elif t is DescType.IEC:
            pass  # no interrupt remapping table is cached
        elif t is DescType.WAIT:
            self._wait(d)
        elif t is DescType.PASID_IOTLB:
            if d.G == dsc.PIOTLB_G_PAGE:
                start, size = vtd_iotlb_range(d.ADDR << 12, d.AM)
                self.hostmap.flush_pasid(d.DID, d.PASID, start, size)
            else:
                self.hostmap.flush_pasid(d.DID, d.PASID, keep_global=True)
        elif t is DescType.PASID_CACHE:
            self._invalidate_pasid_cache(d.G, d.DID, d.PASID)
        elif t is DescType.PASID_DEVICE_TLB:
            start, size = vtd_devtlb_range(d.ADDR << 12, d.S)
            self._devtlb_invalidate(d.SID, NO_PASID if d.G else d.PASID, start, size)
        elif t is DescType.PAGE_GROUP_RESPONSE:
            self._send_page_response(
                d.RID, d.PASID if d.PP else None, d.PRGI, d.RC,
                (d.PRIV0, d.PRIV1) if d.PDP else None)
        return False

    def _wait(self, d: dsc.WaitDesc) -> None:
        """§6.5.2.8: everything before has completed (execution is in order and
        synchronous, so FN and PD need nothing more); then the status write and the
        completion interrupt, in that order, either or both."""
        if d.SW and not self.env.memory.write_u32(d.STADDR << 2, d.STDATA):
            log.debug("wait descriptor status write to %#x: not guest memory", d.STADDR << 2)
        if d.IF and not self.regs["ICS"] & r.ICS.IWC.mask:
            self.regs["ICS"] = r.ICS.IWC.mask
            self._raise_event("IECTL")

    # -- context cache, PASID cache and IOTLB invalidation (§6.5) -----------------------------

    def _register_invalidation_allowed(self) -> bool:
        return not GSTS.QIES.get(self.regs["GSTS"]) and (
            RTADDR.TTM.get(self.active_rtaddr) == r.TTM_LEGACY)

    def _ccmd_written(self, old: int, new: int) -> None:
        if not CCMD.ICC.get(new):
            return
        caig = r.CC_GRAN_ERROR
        if self._register_invalidation_allowed():
            caig = self._invalidate_context(
                CCMD.CIRG.get(new), CCMD.DID.get(new), CCMD.SID.get(new), CCMD.FM.get(new))
        self.regs["CCMD"] = (new & ~(CCMD.ICC.mask | CCMD.CAIG.mask)) | CCMD.CAIG.prep(caig)

    def _invalidate_context(self, granularity: int, did: int, sid: int, fm: int) -> int:
        """Invalidate the context cache (§6.5.1.1, §6.5.2.1); returns the granularity
        performed.  Scalable-mode context entries carry no domain id, so a domain-selective
        request drops them all.  The PASID-cache entries of the devices concerned go too, and
        their stage-1 bindings are replayed from the (possibly new) PASID tables."""
        if granularity == r.CC_GRAN_ERROR:
            return granularity
        # FM masks the function number's top 0-3 bits (§6.5.1.1).
        mask = 0xFFFF & ~((0b111 << (3 - fm)) & 0b111)

        def hit(s: int, entry: Setup | ScalableContext) -> bool:
            if granularity == r.CC_GRAN_GLOBAL:
                return True
            if granularity == r.CC_GRAN_DOMAIN:
                return not isinstance(entry, Setup) or entry.did == did
            return s & mask == sid & mask

        sids = {s for s, entry in self.context_cache.items() if hit(s, entry)}
        for s in sids:
            del self.context_cache[s]
        if granularity == r.CC_GRAN_GLOBAL:
            self.pasid_cache.clear()
        else:
            for key in [k for k in self.pasid_cache if k[0] in sids]:
                del self.pasid_cache[key]
        self._replay(lambda s, _pasid, _did: granularity == r.CC_GRAN_GLOBAL or s in sids
                     or (granularity == r.CC_GRAN_DEVICE and s & mask == sid & mask))
        self.hostmap.drop_shadows(None, None)
        return granularity

    def _invalidate_pasid_cache(self, granularity: int, did: int, pasid: int) -> None:
        """§6.5.2.3: drop PASID-cache entries, then replay the bindings they carried and
        bind the PASID's first stage at once for known devices (PASID-selective)."""
        def hit(entry: Setup, p: int) -> bool:
            if granularity == dsc.PC_G_GLOBAL:
                return True
            return entry.did == did and (granularity == dsc.PC_G_DOMAIN or p == pasid)

        for key in [k for k, e in self.pasid_cache.items() if hit(e, k[1])]:
            del self.pasid_cache[key]
        glob = granularity == dsc.PC_G_GLOBAL
        self._replay(lambda _s, p, d: glob or (d == did and (
            granularity == dsc.PC_G_DOMAIN or p == pasid)))
        self.hostmap.drop_shadows(None if glob else did,
                                  pasid if granularity == dsc.PC_G_PASID else None)
        if granularity == dsc.PC_G_PASID and pasid and self.hostmap.bind_first_stage:
            known = [s for s, e in self.context_cache.items() if isinstance(e, ScalableContext)]
            for sid in known[:EAGER_BIND_DEVICES]:
                got = self._setup(sid, pasid)
                if not isinstance(got, ConfigFault) and got[0].did == did \
                        and got[0].fs is not None:
                    self.hostmap.route(got[0], pasid, pasid, sid, False)

    def _replay(self, affected: Callable[[int, int, int | None], bool]) -> None:
        """Re-read the PASID entries behind affected stage-1 bindings (seed 004,
        "replay guest pasid bindings"): rebind what changed, unbind what went away."""
        for dom, pasid, sid in self.hostmap.bindings():
            if not affected(sid, pasid, dom.did):
                continue
            self.hostmap.unbind(dom, pasid)
            if not GSTS.TES.get(self.regs["GSTS"]):
                continue
            got = self._setup(sid, pasid)
            if not isinstance(got, ConfigFault) and got[0].fs is not None:
                self.hostmap.route(got[0], pasid, pasid, sid, False)

    def _iotlb_written(self, old: int, new: int) -> None:
        if not IOTLB.IVT.get(new):
            return
        iaig = r.IOTLB_GRAN_ERROR
        if self._register_invalidation_allowed():
            iaig = self._invalidate_iotlb(IOTLB.IIRG.get(new), IOTLB.DID.get(new),
                                          self.regs["IVA"])
        self.regs["IOTLB"] = (new & ~(IOTLB.IVT.mask | IOTLB.IAIG.mask)) | IOTLB.IAIG.prep(iaig)

    def _invalidate_iotlb(self, granularity: int, did: int, iva: int) -> int:
        """Register-based IOTLB invalidation (§6.5.1.2); returns the granularity performed.
        A page-selective request whose IVA.AM exceeds MAMV is refused."""
        if granularity == r.IOTLB_GRAN_PAGE and IVA.AM.get(iva) > r.MAMV:
            return r.IOTLB_GRAN_ERROR
        self._iotlb_flush(granularity, did, IVA.ADDR.get(iva) << 12, IVA.AM.get(iva))
        return granularity

    def _iotlb_flush(self, granularity: int, did: int, address: int, am: int) -> None:
        if granularity == r.IOTLB_GRAN_GLOBAL:
            self.hostmap.flush_iotlb(None)
        elif granularity == r.IOTLB_GRAN_DOMAIN:
            self.hostmap.flush_iotlb(did)
        elif granularity == r.IOTLB_GRAN_PAGE:
            start, size = vtd_iotlb_range(address, am)
            self.hostmap.flush_iotlb(did, start, size)

    # -- fault and completion events (chapter 7, §11.4) ----------------------------------------

    def _raise_event(self, ctl: str) -> None:
        """Signal an event: pend it in ctl.IP while ctl.IM is set, else send its MSI."""
        if self.regs.get(ctl, "IM"):
            self.regs.set_field(ctl, "IP", 1)
        else:
            self._send_msi(ctl)

    def _send_msi(self, ctl: str) -> None:
        vector, data, addr, uaddr = _EVENTS[ctl]
        address = (self.regs[uaddr] << 32) | (self.regs[addr] & ~0x3)
        self.env.msi(self.irq_names.index(vector), address, self.regs[data] & 0xFFFF)

    def _ctl_written(self, ctl: str) -> None:
        # Unmasking with an event pending sends it and clears IP.
        if not self.regs.get(ctl, "IM") and self.regs.get(ctl, "IP"):
            self.regs.set_field(ctl, "IP", 0)
            self._send_msi(ctl)

    def _clear_ip_when_idle(self, ctl: str, pending: int) -> None:
        # Software servicing every status condition withdraws the pending event.
        if not pending:
            self.regs.set_field(ctl, "IP", 0)

    def _fsts_written(self, old: int, new: int) -> None:
        self._clear_ip_when_idle("FECTL", new & r.FSTS_EVENT_MASK)
        if (r.FSTS.IQE.get(old) and not r.FSTS.IQE.get(new)) or (
                r.FSTS.ITE.get(old) and not r.FSTS.ITE.get(new)):
            self._run_queue()  # software fixed the descriptor or resubmitted: fetching resumes

    def _frcd_written(self, old: int, new: int) -> None:
        pending = any(r.FRCD_F.get(self.regs[reg.name]) for reg in r.FRCD_HI)
        self.regs.set_field("FSTS", "PPF", int(pending))
        self._clear_ip_when_idle("FECTL", self.regs["FSTS"] & r.FSTS_EVENT_MASK)

    def _ics_written(self, old: int, new: int) -> None:
        self._clear_ip_when_idle("IECTL", new)

    def _prs_written(self, old: int, new: int) -> None:
        self._clear_ip_when_idle("PECTL", new)

    # -- page requests (§7.4-§7.7) -------------------------------------------------------------

    def page_request(self, requester: int, pasid: int | None, flags: int, address: int,
                     group: int) -> int:
        """A device's page request (protocol request PAGE_REQUEST; ``flags`` bit 0 READ,
        1 WRITE, 2 EXECUTE, 3 PRIVILEGED, 4 LAST).  Always accepted (status 0): what the
        hardware did is ``self.last_page_request`` (prq.PageRequestResult)."""
        self.last_page_request = self._page_request(requester, pasid, flags, address, group)
        return 0

    def _page_request(self, requester: int, pasid: int | None, flags: int, address: int,
                      group: int) -> PageRequestResult:
        read, write = bool(flags & 1), bool(flags & 2)
        execute, priv, last = bool(flags & 4), bool(flags & 8), bool(flags & 16)
        group &= 0x1FF

        def refuse(reason: FR | None, fpd: bool = False) -> PageRequestResult:
            if reason is not None and not (fpd and reason not in NOT_QUALIFIED):
                self.faults.record(FaultInfo(
                    requester, address, int(reason), write=write, page_request=True,
                    privileged=priv, execute=execute, pasid=pasid))
            if not last:
                return PageRequestResult.DROPPED
            self._send_page_response(requester, pasid, group, dsc.RC_INVALID_REQUEST)
            return PageRequestResult.AUTO_INVALID

        if not (self.features.pri and GSTS.TES.get(self.regs["GSTS"])):
            return refuse(None)
        if RTADDR.TTM.get(self.active_rtaddr) != r.TTM_SCALABLE:
            return refuse(FR.SM_PAGE_REQUEST_IN_LEGACY)
        sc = self.context_cache.get(requester)
        if sc is None:
            got = scalable_context(self.env.memory, RTADDR.RTA.get(self.active_rtaddr) << 12,
                                   requester, self.unit)
            if isinstance(got, ConfigFault):
                return refuse(got.reason, got.fpd)
            self.context_cache[requester] = sc = got
        assert isinstance(sc, ScalableContext)
        if not sc.entry.PRE:
            return refuse(FR.SM_PRE_CLEAR, sc.fpd)
        if pasid is not None and not sc.entry.PASIDE:
            return refuse(FR.SM_PASID_DISABLED, sc.fpd)
        request = PageRequest(
            PM=int(priv), EXE=int(execute), PASID=pasid or 0, RID=requester, PDP=0,
            PP=int(pasid is not None), TYPE=TYPE_PAGE_REQUEST, ADDR=address >> 12,
            PRGI=group, LPIG=int(last), WRR=int(write), RDR=int(read), PRIV0=0, PRIV1=0)
        if self.prq.push(self.env.memory, request):
            return PageRequestResult.QUEUED
        if not last:
            return PageRequestResult.DROPPED
        self._send_page_response(requester, pasid, group, dsc.RC_SUCCESS)
        return PageRequestResult.AUTO_SUCCESS

    def _send_page_response(self, requester: int, pasid: int | None, group: int, code: int,
                            private_data: tuple[int, int] | None = None) -> None:
        """A page group response to the device (the back-end channel's PAGE_RESPONSE)."""
        self.page_responses.append(PageResponse(requester, pasid, group, code, private_data))
        if len(self.page_responses) > 4096:
            del self.page_responses[:2048]  # a record for tests and introspection, bounded
        self.env.page_response(requester, pasid, group, code)

    # -- virtual commands (§11.4, rev 3.3+ layout) -------------------------------------------

    def _vcmd_written(self, old: int, new: int) -> None:
        if VCRSP.IP.get(self.regs["VCRSP"]):
            self.regs["VCMD"] = old  # a command is in progress: the write is dropped
            return
        self.regs["VCRSP"] = VCRSP.IP.prep(1)
        done = self._run_vcmd(r.VCMD.CMD.get(new), r.VCMD.OA.get(new))
        if done is not None:
            sc, result = done
            self.regs["VCRSP"] = VCRSP.SC.prep(sc) | VCRSP.RSLT.prep(result)

    def _run_vcmd(self, cmd: int, operand: int) -> tuple[int, int] | None:
        """Execute a virtual command: (VCRSP.SC, VCRSP.RSLT), or None while in progress."""
        if cmd == r.VCMD_NULL:
            return r.VCRSP_SC_OK, 0
        if cmd == r.VCMD_ALLOC_PASID:
            pasid = self.env.host.alloc_pasid()
            if pasid is None or pasid >> max(self.features.pasid_bits, 1):
                if pasid is not None:
                    self.env.host.free_pasid(pasid)
                return r.VCRSP_SC_NO_PASID, 0
            return r.VCRSP_SC_OK, pasid
        if cmd == r.VCMD_FREE_PASID:
            pasid = operand & 0xFFFFF
            if operand >> 20 or not self.env.host.free_pasid(pasid):
                return r.VCRSP_SC_NO_PASID, 0
            return r.VCRSP_SC_OK, 0
        return r.VCRSP_SC_UNDEFINED, 0
