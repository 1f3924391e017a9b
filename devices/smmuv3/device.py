"""The vSMMUv3 device (Arm IHI 0070): registers, queues, configuration, translation, PRI.

The pieces, one module each: ``regs`` (the register file, chapter 6), ``queues`` (queue
geometry, §3.5), ``commands`` + ``cmdq`` (the command queue, chapter 4), ``ste`` / ``cd``
(stream table and context descriptors, chapter 5), ``config`` (the configuration cache and
the host contexts built from it), ``translation`` (a transaction with SMMUEN = 1),
``events`` (event records, chapter 7), ``priq`` (page requests, chapter 8).  This module
holds the register behaviour and ties the rest together.

Handshakes (all synchronous: every update has taken effect when the write returns):
- CR0 -> CR0ACK: the value written, minus reserved bits and minus the fields of features the
  ID registers do not advertise (VMW, DPT_WALK_EN) -- those are RES0 for this instance.
  Turning SMMUEN on or off drops the configuration cache and the host contexts (any cache may
  be dropped at any time; it keeps a re-enabled SMMU from using configuration read before).
- GBPA: a write with UPDATE=1 stores the other fields and UPDATE reads back 0; a write with
  UPDATE=0 is ignored (software must set UPDATE for a change to happen).
- IRQ_CTRL -> IRQ_CTRLACK at once.
- GERROR/GERRORN (chapter 7, global errors): error n is active while the two bits differ.
  The model toggles GERROR[n] only when n is not already active; software acknowledges by
  toggling GERRORN[n].  Toggling GERRORN for an inactive error is CONSTRAINED UNPREDICTABLE;
  we store it like any write (the error then reads as active), as QEMU does.  Acknowledging
  CMDQ_ERR resumes command consumption.
- *_BASE: LOG2SIZE above the IDR1 maximum is stored as the maximum (§6.3 allows either).
- CMDQ_CONS, EVENTQ_PROD and PRIQ_PROD are written by software only while their queue is
  disabled (§6.3.27, §6.3.30, §6.3.34: "RW when the queue is disabled"); a write while the
  queue is enabled is ignored (a CONSTRAINED UNPREDICTABLE choice: QEMU accepts it).
- CMDQ_PROD: the commands published are consumed before the write returns (``cmdq``).

Event queue (§7.2, §7.4): a record is written at PROD when the queue is writable (EVENTQEN
= 1 and no active EVENTQ_ABT_ERR) and not full; a full queue discards it and, unless an
overflow is already pending (OVFLG != OVACKFLG), toggles EVENTQ_PROD.OVFLG.  QEMU raises
GERROR.EVENTQ_ABT_ERR instead (smmuv3.md §8 item 5); we follow the spec.  A record that
cannot be written (queue not in guest RAM) activates EVENTQ_ABT_ERR and PROD does not move
(a synchronous abort, §7.2.2).  Each record written raises the EVTQ interrupt.

PRI queue (chapter 8): ``page_request`` is the device's page request message.  With
PRIQEN = 0 (SMMUEN = 0 included) or PRIQ_ABT_ERR active every request is answered at once
with Response Failure (§8.2); while an overflow is pending, or when the request finds the
queue full (which starts one), requests are discarded and those with Last = 1 answered with
Success — with the PASID if STE.PPAR says so, or Failure when the STE cannot be used (§8.1).
Stop markers (a PASID, Last = 1, no R/W) get no answer.  Responses go to the device through
``send_pri_response`` (the back-end channel's PAGE_RESPONSE).

Interrupts (§3.18): with the enable bit of IRQ_CTRL set, an interrupt is an MSI when the
matching *_IRQ_CFG0.ADDR is non-zero, otherwise a pulse of the wired line (vector order
``irq_names``).  Wired lines stay usable because the protocol delivers them as eventfds.
An MSI the Env reports aborted (protocol.md §1 "Interrupts": not guest RAM and no route took
it) activates GERROR.MSI_EVENTQ/PRIQ/GERROR_ABT_ERR (§7.5); MSI_GERROR_ABT_ERR itself
triggers no GERROR interrupt (§7.5.1).

ID register choices (IHI 0070 §6.3 SMMU_IDR0..5; QEMU values in reference/smmuv3.md §1):
- IDR0: S1P/S2P from ``stage``; TTF=AArch64; COHACC=1; ASID16=1; VMID16=1; TTENDIAN=LE;
  ST_LEVEL=2-level; TERM_MODEL=1 and STALL_MODEL=1 (no stall); HTTU=0; BTM=0; SEV=0;
  MSI=1 (unlike QEMU: so Linux may use MSIPOLL); ATS=1 because PRI=1 requires it and
  TRANSLATE/ATC_INVALIDATE are the ATS path of the protocol; NS1ATS=1 (split-stage ATS,
  STE.EATS=0b10, not supported); CD2L=1 with stage 1.
  With ``stage=s2`` there is no stage 1 and so no context descriptors: CD2L=0, SSIDSIZE=0.
- IDR1: SIDSIZE = bits needed for the highest StreamID of ``sids``; SSIDSIZE from
  ``ssidsize``; CMDQS=EVENTQS=PRIQS=19 (the architectural maximum).
- IDR3: HAD=1, RIL=1, BBML=2 (as QEMU); hence AIDR says SMMUv3.2 (QEMU says v3.1).
- IDR5: OAS from ``oas``; GRAN4K/16K/64K=1; VAX=0 (48-bit VA); STALL_MAX=0.  OAS=52 is
  reachable with 64 KiB pages only (no LPA2 / DS is advertised).

Bypass (SMMUEN=0, GBPA.ABORT=0): the output address is the input address, a 4 KiB block with
read, write and execute.  An input address at or above 2^OAS is not in the physical address
space the SMMU can emit, so the transaction is terminated: we answer kind 4 (address size)
with code 0 and stage 0 -- no event exists for it because nothing is recorded while the SMMU
is disabled (QEMU passes such addresses through unchecked).
"""

from __future__ import annotations

import errno
import logging
from typing import Any, ClassVar

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
from devices.regs import Field, Register, RegisterFile, WriteHook
from devices.smmuv3 import regs as r

from .caps import Caps
from .cmdq import CommandProcessor
from .commands import PRI_RESP_FAILURE, PRI_RESP_SUCCESS, Features
from .config import ConfigCache, ContextPool
from .events import EVENT_SIZE
from .events import encode as encode_event
from .priq import PRG_INDEX_MAX, PRIQ_ENTRY, PRIQ_ENTRY_SIZE
from .queues import Queue
from .translation import Abort, StreamTable, Translator

log = logging.getLogger(__name__)

_MSI_ABT_ERR = {
    r.IRQ_EVTQ: r.GERROR.MSI_EVENTQ_ABT_ERR,
    r.IRQ_PRIQ: r.GERROR.MSI_PRIQ_ABT_ERR,
    r.IRQ_GERROR: r.GERROR.MSI_GERROR_ABT_ERR,
}
"""The GERROR error an aborted MSI of each queue interrupt activates (CMD_SYNC's is in
cmdq.py)."""

IRQ_EVTQ = r.IRQ_EVTQ
IRQ_PRIQ = r.IRQ_PRIQ
IRQ_CMD_SYNC = r.IRQ_CMD_SYNC
IRQ_GERROR = r.IRQ_GERROR

# PAGE_REQUEST flags (protocols/protocol.md §2, request 130)
PRI_READ = 1 << 0
PRI_WRITE = 1 << 1
PRI_EXECUTE = 1 << 2
PRI_PRIVILEGED = 1 << 3
PRI_LAST = 1 << 4

STAGES = ("s1", "s2", "nested")
S1_MODES = ("nested", "shadow")
OAS_CHOICES = tuple(r.IDR5_OAS_BITS)
SSIDSIZE_MAX = 20
SID_MAX = (1 << 32) - 1


def parse_sid_range(text: str) -> tuple[int, int]:
    """``"A-B"`` (decimal or 0x-hex, inclusive) or a single ``"A"`` -> ``(lo, hi)``.

    Raises ``ValueError`` on a malformed or empty range: the operator's mistake.
    """
    lo_text, sep, hi_text = text.partition("-")
    lo = int(lo_text.strip(), 0)
    hi = int(hi_text.strip(), 0) if sep else lo
    return _check_sid_range((lo, hi))


def _check_sid_range(value: Any) -> tuple[int, int]:
    lo, hi = (int(v) for v in value)
    if not 0 <= lo <= hi <= SID_MAX:
        raise ValueError(f"StreamID range {lo:#x}-{hi:#x} is not within 0-{SID_MAX:#x}")
    return lo, hi


def id_register_values(stage: str, oas: int, ssidsize: int, sid_hi: int) -> dict[str, int]:
    """IDR0, IDR1, IDR3 and IDR5 for one set of options (choices in the module docstring)."""
    s1 = stage in ("s1", "nested")
    s2 = stage in ("s2", "nested")
    idr0 = (
        r.IDR0.S2P.prep(s2) | r.IDR0.S1P.prep(s1)
        | r.IDR0.TTF.prep(r.IDR0_TTF_AARCH64) | r.IDR0.COHACC.prep(1)
        | r.IDR0.ATS.prep(1) | r.IDR0.NS1ATS.prep(1) | r.IDR0.ASID16.prep(1)
        | r.IDR0.MSI.prep(1) | r.IDR0.PRI.prep(1) | r.IDR0.VMID16.prep(1)
        | r.IDR0.CD2L.prep(s1) | r.IDR0.TTENDIAN.prep(r.IDR0_TTENDIAN_LE)
        | r.IDR0.STALL_MODEL.prep(r.IDR0_STALL_MODEL_TERMINATE) | r.IDR0.TERM_MODEL.prep(1)
        | r.IDR0.ST_LEVEL.prep(r.IDR0_ST_LEVEL_2LVL)
    )
    idr1 = (
        r.IDR1.SIDSIZE.prep(sid_hi.bit_length())
        | r.IDR1.SSIDSIZE.prep(ssidsize if s1 else 0)
        | r.IDR1.PRIQS.prep(r.QUEUE_LOG2SIZE_MAX)
        | r.IDR1.EVENTQS.prep(r.QUEUE_LOG2SIZE_MAX)
        | r.IDR1.CMDQS.prep(r.QUEUE_LOG2SIZE_MAX)
    )
    idr3 = r.IDR3.HAD.prep(1) | r.IDR3.RIL.prep(1) | r.IDR3.BBML.prep(r.IDR3_BBML_2)
    idr5 = (
        r.IDR5.OAS.prep(r.IDR5_OAS_BITS[oas]) | r.IDR5.GRAN4K.prep(1)
        | r.IDR5.GRAN16K.prep(1) | r.IDR5.GRAN64K.prep(1)
        | r.IDR5.VAX.prep(r.IDR5_VAX_48_BIT)
    )
    return {"IDR0": idr0, "IDR1": idr1, "IDR3": idr3, "IDR5": idr5}


class SMMUv3(IommuModel):
    """An Arm SMMUv3 (IHI 0070) in one 128 KiB MMIO frame.

    Device code uses ``self.regs`` by name; the guest reaches it through ``mmio_read`` and
    ``mmio_write`` and the generic access rule of ``devices.regs``.
    """

    model: ClassVar[str] = "smmuv3"
    irq_names: ClassVar[tuple[str, ...]] = ("evtq", "priq", "cmdq-sync", "gerror")
    mmio_size: ClassVar[int] = r.FRAME_SIZE
    default_base: ClassVar[int] = 0x09050000
    options: ClassVar[tuple[Option, ...]] = (
        Option("id", "int", 0, "device id in GET_CONFIG and on the wire"),
        Option("base", "int", 0x09050000, "guest-physical base of the MMIO frame"),
        # No ``parse``: the daemon's generic "range" parser reads "A-B"; the 32-bit bound is
        # checked when the device is built.
        Option("sids", "range", (0, 0xFFFF), "StreamIDs translated, inclusive: A-B"),
        Option("stage", "str", "nested", "translation stages offered (IDR0.S1P/S2P)",
               choices=STAGES),
        Option("oas", "int", 44, "output address size in bits (IDR5.OAS)",
               choices=OAS_CHOICES),
        Option("ssidsize", "int", 0, "SubstreamID bits (IDR1.SSIDSIZE); 0: no PASIDs",
               choices=tuple(range(SSIDSIZE_MAX + 1))),
        Option("s1-mode", "str", "nested", "how a guest stage 1 reaches the host",
               choices=S1_MODES),
    )

    def __init__(self, config: dict[str, Any], env: Env) -> None:
        super().__init__(config, env)
        # The daemon may hand the range over as "sids" or as the generic "requesters".
        sids = config.get("sids", config.get("requesters", (0, 0xFFFF)))
        self.sid_range = _check_sid_range(sids)
        self.stage = _choice(config, "stage", "nested", STAGES)
        self.oas = _choice(config, "oas", 44, OAS_CHOICES)
        self.ssidsize = _choice(config, "ssidsize", 0, tuple(range(SSIDSIZE_MAX + 1)))
        self.s1_mode = _choice(config, "s1-mode", "nested", S1_MODES)
        idrs = id_register_values(self.stage, self.oas, self.ssidsize, self.sid_range[1])
        self.regs = RegisterFile(r.with_resets(r.REGISTERS, idrs), r.FRAME_SIZE)
        self.caps = Caps.from_idrs(idrs["IDR0"], idrs["IDR1"], idrs["IDR3"], idrs["IDR5"])
        self.command_features = Features(self.caps.s1p, self.caps.s2p, self.caps.ats,
                                         self.caps.pri)
        self.cache = ConfigCache()
        self.pool = ContextPool(lambda: self.env.host)
        self.translator = Translator(self.caps, env, self.cache, self.pool, self.s1_mode)
        self.cmdq = CommandProcessor(self)
        self.events_recorded = 0
        """Event records written since reset (introspection)."""
        self._cr0_res0 = self._unimplemented_cr0_bits()
        self.regs.on_write.update({
            "CR0": self._cr0_written,
            "GBPA": self._gbpa_written,
            "IRQ_CTRL": self._irq_ctrl_written,
            "GERRORN": self._gerrorn_written,
            "CMDQ_BASE": self._queue_base_written(r.CMDQ_BASE, r.IDR1.CMDQS),
            "EVENTQ_BASE": self._queue_base_written(r.EVENTQ_BASE, r.IDR1.EVENTQS),
            "PRIQ_BASE": self._queue_base_written(r.PRIQ_BASE, r.IDR1.PRIQS),
            "CMDQ_PROD": lambda old, new: self.cmdq.run(),
            "CMDQ_CONS": self._while_disabled("CMDQ_CONS", "CMDQEN"),
            "EVENTQ_PROD": self._while_disabled("EVENTQ_PROD", "EVENTQEN"),
            "PRIQ_PROD": self._while_disabled("PRIQ_PROD", "PRIQEN"),
        })

    @property
    def requester_ranges(self) -> list[tuple[int, int]]:
        return [self.sid_range]

    # --- IommuModel ---------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        return self.regs.read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.regs.write(offset, size, value)

    def reset(self) -> None:
        """Every register back to its reset value, ID registers included; every cached
        structure and host context dropped."""
        self.regs.reset()
        self._drop_configuration()
        self.cmdq.executed = 0
        self.cmdq.atc_inv_timed_out = False
        self.events_recorded = 0

    def translate(self, req: DmaRequest) -> DmaTarget | DmaFault:
        if not self.regs.get("CR0ACK", "SMMUEN"):
            return self._translate_disabled(req)
        result = self.translator.translate(req, self.stream_table())
        if isinstance(result, Abort):
            return self._terminate(req, result)
        return result

    # --- state the rest of the model reads ----------------------------------------------

    @property
    def gerror_active(self) -> int:
        """Bit n set while global error n is active: GERROR[n] != GERRORN[n]."""
        return self.regs["GERROR"] ^ self.regs["GERRORN"]

    @property
    def smmu_enabled(self) -> bool:
        return bool(self.regs.get("CR0ACK", "SMMUEN"))

    def stream_table(self) -> StreamTable:
        cfg = self.regs["STRTAB_BASE_CFG"]
        return StreamTable(
            r.STRTAB_BASE.ADDR.get(self.regs["STRTAB_BASE"]) << 6,
            r.STRTAB_BASE_CFG.LOG2SIZE.get(cfg), r.STRTAB_BASE_CFG.FMT.get(cfg),
            r.STRTAB_BASE_CFG.SPLIT.get(cfg), bool(self.regs.get("CR2", "RECINVSID")),
        )

    def log_guest_error(self, fmt: str, *args: object) -> None:
        log.debug("smmuv3: " + fmt, *args)

    # --- translation while disabled (§6.3 SMMU_GBPA) ------------------------------------

    def _translate_disabled(self, req: DmaRequest) -> DmaTarget | DmaFault:
        if self.regs.get("GBPA", "ABORT"):
            return DmaFault(FaultKind.BLOCKED, 0, req.iova, 0)
        if req.iova >> self.oas:
            return DmaFault(FaultKind.ADDRESS_SIZE, 0, req.iova, 0)
        return DmaTarget(gpa=req.iova, size=4096, perms=Perm.R | Perm.W | Perm.X)

    # --- terminated transactions and the event queue (§7.2-§7.4) ------------------------

    def _terminate(self, req: DmaRequest, abort: Abort) -> DmaFault:
        event = abort.event
        if event is not None and abort.record and req.record:
            pasid = req.pasid
            fields = {
                "StreamID": req.requester, "SSV": int(pasid is not None),
                "SubstreamID": 0 if pasid is None else pasid, "InputAddr": req.iova,
                "RnW": int(not req.write), "InD": int(req.execute and not req.write),
                "PnU": int(req.privileged),
            }
            fields.update(abort.fields)
            self.record_event(encode_event(event, **fields))
        return DmaFault(abort.kind, 0 if event is None else int(event), req.iova, abort.stage)

    def record_event(self, record: bytes) -> bool:
        """Write one event record if the queue is writable; whether it was written."""
        regs = self.regs
        if not regs.get("CR0ACK", "EVENTQEN"):
            return False
        if self.gerror_active & r.GERROR.EVENTQ_ABT_ERR.mask:
            return False
        base = regs["EVENTQ_BASE"]
        q = Queue.from_base(r.EVENTQ_BASE.ADDR.get(base) << 5,
                            r.EVENTQ_BASE.LOG2SIZE.get(base), EVENT_SIZE)
        prod_reg, cons_reg = regs["EVENTQ_PROD"], regs["EVENTQ_CONS"]
        prod, cons = q.ptr(prod_reg), q.ptr(cons_reg)
        if q.full(prod, cons):
            ovflg = r.EVENTQ_PROD.OVFLG
            if ovflg.get(prod_reg) == r.EVENTQ_CONS.OVACKFLG.get(cons_reg):
                regs["EVENTQ_PROD"] = prod_reg ^ ovflg.mask
            return False
        if not self.env.memory.write(q.address(prod), record):
            self.raise_gerror(r.GERROR.EVENTQ_ABT_ERR)
            return False
        regs["EVENTQ_PROD"] = (prod_reg & r.EVENTQ_PROD.OVFLG.mask) | q.next(prod)
        self.events_recorded += 1
        self._signal("EVENTQ_IRQEN", r.IRQ_EVTQ, "EVENTQ_IRQ_CFG0", "EVENTQ_IRQ_CFG1")
        return True

    # --- the PRI queue (chapter 8) ------------------------------------------------------

    def page_request(self, requester: int, pasid: int | None, flags: int, address: int,
                     group: int) -> int:
        """A PCIe page request from device ``requester`` (protocol PAGE_REQUEST): 0 when
        the SMMU took it (queued, discarded or answered itself), or a negative errno for a
        request no device can make."""
        if not self.sid_range[0] <= requester <= self.sid_range[1]:
            return -errno.ENODEV
        if group > PRG_INDEX_MAX or (pasid is not None and pasid >> 20):
            return -errno.EINVAL
        if not self.caps.ssidsize:
            pasid = None  # no substreams: the request arrives without a PASID
        read, write = bool(flags & PRI_READ), bool(flags & PRI_WRITE)
        last = bool(flags & PRI_LAST)
        stop_marker = pasid is not None and last and not read and not write
        regs = self.regs
        if (not self.smmu_enabled or not regs.get("CR0ACK", "PRIQEN")
                or self.gerror_active & r.GERROR.PRIQ_ABT_ERR.mask):
            if not stop_marker:
                self.send_pri_response(requester, None, group, PRI_RESP_FAILURE)
            return 0
        base = regs["PRIQ_BASE"]
        q = Queue.from_base(r.PRIQ_BASE.ADDR.get(base) << 5, r.PRIQ_BASE.LOG2SIZE.get(base),
                            PRIQ_ENTRY_SIZE)
        prod_reg, cons_reg = regs["PRIQ_PROD"], regs["PRIQ_CONS"]
        prod, cons = q.ptr(prod_reg), q.ptr(cons_reg)
        ovflg = r.PRIQ_PROD.OVFLG
        overflow = ovflg.get(prod_reg) != r.PRIQ_CONS.OVACKFLG.get(cons_reg)
        if not overflow and q.full(prod, cons):
            regs["PRIQ_PROD"] = prod_reg ^ ovflg.mask
            overflow = True
        if overflow:
            if last and not stop_marker:
                self._auto_respond_overflow(requester, pasid, group)
            return 0
        ssv = pasid is not None
        entry = PRIQ_ENTRY.build(
            StreamID=requester, SubstreamID=pasid or 0, SSV=int(ssv), Last=int(last),
            W=int(write), R=int(read), X=int(ssv and bool(flags & PRI_EXECUTE)),
            Priv=int(ssv and bool(flags & PRI_PRIVILEGED)), PRGIndex=group,
            Address=(address >> 12) & ((1 << 52) - 1),
        )
        if not self.env.memory.write(q.address(prod), entry):
            self.raise_gerror(r.GERROR.PRIQ_ABT_ERR)
            if not stop_marker:
                self.send_pri_response(requester, None, group, PRI_RESP_FAILURE)
            return 0
        regs["PRIQ_PROD"] = (prod_reg & ovflg.mask) | q.next(prod)
        self._signal("PRI_IRQEN", r.IRQ_PRIQ, "PRIQ_IRQ_CFG0", "PRIQ_IRQ_CFG1")
        return 0

    def _auto_respond_overflow(self, requester: int, pasid: int | None, group: int) -> None:
        """§8.1: Success, with the PASID when the STE's PPAR asks for it; Failure without a
        PASID when the STE cannot be checked (no event is recorded for that)."""
        if pasid is None:
            self.send_pri_response(requester, None, group, PRI_RESP_SUCCESS)
            return
        entry = self.cache.stream(requester)
        if entry is None:
            got = self.translator.load_stream(requester, self.stream_table())
            entry = None if isinstance(got, Abort) else got
        if entry is None:
            self.send_pri_response(requester, None, group, PRI_RESP_FAILURE)
        else:
            self.send_pri_response(requester, pasid if entry.ste.ppar else None, group,
                                   PRI_RESP_SUCCESS)

    def send_pri_response(self, requester: int, pasid: int | None, group: int,
                          resp: int) -> None:
        """A PRG response to the device (CMD_PRI_RESP or automatic), in CMD_PRI_RESP's Resp
        encoding: the back-end channel's PAGE_RESPONSE."""
        self.env.page_response(requester, pasid, group, resp)

    # --- global errors and interrupts (chapter 7; §3.18) --------------------------------

    def raise_gerror(self, err: Field) -> None:
        """Activate global error ``err`` (a GERROR field) unless it is active already; every
        error but MSI_GERROR_ABT_ERR triggers the GERROR interrupt (§7.5.1: another MSI to
        the same address might abort again)."""
        if self.gerror_active & err.mask:
            return
        self.regs["GERROR"] ^= err.mask
        if err is not r.GERROR.MSI_GERROR_ABT_ERR:
            self._signal("GERROR_IRQEN", r.IRQ_GERROR, "GERROR_IRQ_CFG0", "GERROR_IRQ_CFG1")

    def _signal(self, enable: str, vector: int, cfg0: str, cfg1: str) -> None:
        """Send one interrupt if IRQ_CTRLACK.``enable`` is set: MSI if CFG0.ADDR is set,
        else the wired line ``vector``.  An MSI write the Env reports aborted activates the
        queue's GERROR.MSI_*_ABT_ERR (§7.5)."""
        if not self.regs.get("IRQ_CTRLACK", enable):
            return
        address = self.regs[cfg0] & self.regs.register(cfg0).field("ADDR").mask
        if not address:
            self.env.irq(vector)
        elif not self.env.msi(vector, address, self.regs[cfg1]):
            self.raise_gerror(_MSI_ABT_ERR[vector])

    # --- write hooks --------------------------------------------------------------------

    def _unimplemented_cr0_bits(self) -> int:
        """CR0 fields that are RES0 because their feature is not advertised."""
        res0 = 0
        idr0, idr3 = self.regs["IDR0"], self.regs["IDR3"]
        if not r.IDR0.VMW.get(idr0):
            res0 |= r.CR0.VMW.mask
        if not r.IDR3.DPT.get(idr3):
            res0 |= r.CR0.DPT_WALK_EN.mask
        if not r.IDR0.ATS.get(idr0):
            res0 |= r.CR0.ATSCHK.mask
        if not r.IDR0.PRI.get(idr0):
            res0 |= r.CR0.PRIQEN.mask
        return res0

    def _cr0_written(self, old: int, new: int) -> None:
        value = new & ~self._cr0_res0
        was = self.regs["CR0ACK"]
        self.regs["CR0"] = value
        self.regs["CR0ACK"] = value
        if (was ^ value) & r.CR0.SMMUEN.mask:
            self._drop_configuration()
        # Enabling the command queue may find commands already published (QEMU does this).
        self.cmdq.run()

    def _drop_configuration(self) -> None:
        self.cache.clear()
        self.pool.free_all()

    def _gbpa_written(self, old: int, new: int) -> None:
        update = r.GBPA.UPDATE.mask
        self.regs["GBPA"] = new & ~update if new & update else old

    def _irq_ctrl_written(self, old: int, new: int) -> None:
        self.regs["IRQ_CTRLACK"] = new

    def _gerrorn_written(self, old: int, new: int) -> None:
        # Acknowledging CMDQ_ERR lets command consumption resume (chapter 7).
        self.cmdq.run()

    def _while_disabled(self, name: str, enable: str) -> WriteHook:
        def hook(old: int, new: int) -> None:
            if self.regs.get("CR0ACK", enable):
                self.regs[name] = old
        return hook

    def _queue_base_written(self, reg: Register, limit: Field) -> WriteHook:
        log2size = reg.field("LOG2SIZE")
        name = reg.name

        def hook(old: int, new: int) -> None:
            maximum = limit.get(self.regs["IDR1"])
            if log2size.get(new) > maximum:
                self.regs[name] = (new & ~log2size.mask) | log2size.prep(maximum)

        return hook


def _choice(config: dict[str, Any], name: str, default: Any, choices: tuple[Any, ...]) -> Any:
    value = config.get(name, default)
    if value not in choices:
        raise ValueError(f"smmuv3 option {name}={value!r}: expected one of {choices}")
    return value
