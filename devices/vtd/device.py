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
- ECAP.VCS (option ``vcmd``): the rev 3.3+ interface.  PASID allocation is later work, so
  VCCAP reports only NS (the null command) and every other command answers SC = 1
  ("undefined command") rather than leaving the guest polling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from devices.model import DmaFault, DmaRequest, DmaTarget, Env, FaultKind, IommuModel, Option, Perm
from devices.regs import Register, RegisterFile
from devices.vtd import regs as r
from devices.vtd.regs import CAP, CCMD, ECAP, GCMD, GSTS, IOTLB, IVA, RTADDR, VCRSP

log = logging.getLogger(__name__)

GPA_LIMIT = 1 << 52
"""Guest-physical addresses are below 2^52 (protocol.md); untranslated DMA beyond faults."""

_PAGE = 4096

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
        _bool("caching-mode", False, "CAP.CM: not-present entries may be cached"),
        Option("pasid-bits", "int", 0, "PASID width, 0 = no PASID (ECAP.PASID/PSS)",
               tuple(range(21))),
        _bool("device-iotlb", False, "ATS device-TLBs (ECAP.DT)"),
        _bool("pt", True, "pass-through translation type (ECAP.PT)"),
        _bool("snoop-control", False, "ECAP.SC"),
        _bool("intremap", False, "interrupt-remapping registers and commands (ECAP.IR)"),
        _bool("nesting", False, "nested first/second-stage translation (ECAP.NEST)"),
        _bool("pri", False, "page requests (ECAP.PRS/PDS; needs device-iotlb and PASID)"),
        _bool("vcmd", False, "virtual command interface (ECAP.VCS)"),
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
        )
        self.cap = self.features.cap()
        self.ecap = self.features.ecap()
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
        self.reset()

    # -- the IommuModel contract ------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        return self.regs.read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.regs.write(offset, size, value)

    def reset(self) -> None:
        self.regs.reset()
        if self.features.vcmd:
            self.regs.set_field("VCCAP", "NS", 1)
        self.active_rtaddr = 0
        self.active_irta = 0
        self.active_iqa = 0

    def translate(self, req: DmaRequest) -> DmaTarget | DmaFault:
        """Translate one page of DMA.

        With GSTS.TES = 0 remapping is off and requests pass untranslated, within the
        guest-physical space (below 2^52: beyond it there is no memory to reach, answered as
        an address-size fault, recorded nowhere since remapping is off).  With TES = 1 the
        root/context/PASID walk is later work: every request answers BAD_CONFIG for now.
        """
        if not GSTS.TES.get(self.regs["GSTS"]):
            if req.iova >= GPA_LIMIT:
                return DmaFault(FaultKind.ADDRESS_SIZE, 0, req.iova, 0)
            return DmaTarget(gpa=req.iova, size=_PAGE, perms=Perm.R | Perm.W | Perm.X)
        return DmaFault(FaultKind.BAD_CONFIG, 0, req.iova, 0)

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
            # With ESRTPS this also drops every cached context/PASID/IOTLB entry; there are
            # no caches yet.
            self.active_rtaddr = self.regs["RTADDR"]
            self._set_status("RTPS", 1)
        if ir and GCMD.SIRTP.get(cmd):
            self.active_irta = self.regs["IRTA"]
            self._set_status("IRTPS", 1)
        if GCMD.QIE.get(cmd) != GSTS.QIES.get(gsts):
            self._qie(bool(GCMD.QIE.get(cmd)))
        if ir:
            self._set_status("IRES", GCMD.IRE.get(cmd))
            self._set_status("CFIS", GCMD.CFI.get(cmd))
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
        else:
            log.debug("QIE disable refused: IQH %#x != IQT %#x",
                      self.regs["IQH"], self.regs["IQT"])

    def _iqt_written(self) -> None:
        """Run the invalidation queue from IQH up to IQT (§6.5.2).

        Called after every IQT write and when QIE enables the queue.  Queue processing is
        later work: for now descriptors stay unfetched and IQH does not move.
        """

    # -- register-based invalidation (§6.5.1, §11.4) ----------------------------------------

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
        """Invalidate the context cache; returns the granularity actually performed.

        There is no context cache yet, so every defined granularity is performed as asked.
        """
        return granularity

    def _iotlb_written(self, old: int, new: int) -> None:
        if not IOTLB.IVT.get(new):
            return
        iaig = r.IOTLB_GRAN_ERROR
        if self._register_invalidation_allowed():
            iaig = self._invalidate_iotlb(IOTLB.IIRG.get(new), IOTLB.DID.get(new),
                                          self.regs["IVA"])
        self.regs["IOTLB"] = (new & ~(IOTLB.IVT.mask | IOTLB.IAIG.mask)) | IOTLB.IAIG.prep(iaig)

    def _invalidate_iotlb(self, granularity: int, did: int, iva: int) -> int:
        """Invalidate the IOTLB; returns the granularity actually performed.

        There is no IOTLB yet; a page-selective request whose IVA.AM exceeds MAMV is refused.
        """
        if granularity == r.IOTLB_GRAN_PAGE and IVA.AM.get(iva) > r.MAMV:
            return r.IOTLB_GRAN_ERROR
        return granularity

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

    def _frcd_written(self, old: int, new: int) -> None:
        pending = any(r.FRCD_F.get(self.regs[reg.name]) for reg in r.FRCD_HI)
        self.regs.set_field("FSTS", "PPF", int(pending))
        self._fsts_written(0, self.regs["FSTS"])

    def _ics_written(self, old: int, new: int) -> None:
        self._clear_ip_when_idle("IECTL", new)

    def _prs_written(self, old: int, new: int) -> None:
        self._clear_ip_when_idle("PECTL", new)

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
        """Execute a virtual command: (VCRSP.SC, VCRSP.RSLT), or None while in progress.

        PASID allocation and free are later work; until then only the null command exists.
        """
        if cmd == r.VCMD_NULL:
            return r.VCRSP_SC_OK, 0
        return r.VCRSP_SC_UNDEFINED, 0
