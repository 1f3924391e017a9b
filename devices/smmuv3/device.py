"""The vSMMUv3 device: register file, handshakes and global bypass (Arm IHI 0070).

What this module does today: the guest-visible register interface of chapter 6 (§6.2,
§6.3) with the handshakes that need no queue work, and the translation of transactions
while the SMMU is disabled (§6.3 SMMU_GBPA).  Queue processing (§3.5, chapter 4),
the stream and context-descriptor tables (§3.3, chapter 5) and translation with SMMUEN=1
belong to the vSMMUv3 queue/table work; the seams for it are ``_process_cmdq``,
``_eventq_cons_written``, ``_priq_cons_written`` and the SMMUEN=1 branch of ``translate``.

Handshakes (all synchronous: every update has taken effect when the write returns):
- CR0 -> CR0ACK: the value written, minus reserved bits and minus the fields of features the
  ID registers do not advertise (VMW, DPT_WALK_EN) -- those are RES0 for this instance.
- GBPA: a write with UPDATE=1 stores the other fields and UPDATE reads back 0; a write with
  UPDATE=0 is ignored (software must set UPDATE for a change to happen).
- IRQ_CTRL -> IRQ_CTRLACK at once.
- GERROR/GERRORN (chapter 7, global errors): error n is active while the two bits differ.
  The model toggles GERROR[n] only when n is not already active; software acknowledges by
  toggling GERRORN[n].  Toggling GERRORN for an inactive error is CONSTRAINED UNPREDICTABLE;
  we store it like any write (the error then reads as active), as QEMU does.
- *_BASE: LOG2SIZE above the IDR1 maximum is stored as the maximum (§6.3 allows either).

Interrupts (§3.18): with the enable bit of IRQ_CTRL set, an interrupt is an MSI when the
matching *_IRQ_CFG0.ADDR is non-zero, otherwise a pulse of the wired line (vector order
``irq_names``).  Wired lines stay usable because the protocol delivers them as eventfds.

ID register choices (IHI 0070 §6.3 SMMU_IDR0..5; QEMU values in reference/smmuv3.md §1):
- IDR0: S1P/S2P from ``stage``; TTF=AArch64; COHACC=1; ASID16=1; VMID16=1; TTENDIAN=LE;
  ST_LEVEL=2-level; TERM_MODEL=1 and STALL_MODEL=1 (no stall); HTTU=0; BTM=0; SEV=0;
  MSI=1 (unlike QEMU: so Linux may use MSIPOLL; the CMD_SYNC MSI write is queue work);
  ATS=1 because PRI=1 requires it and TRANSLATE/ATC_INVALIDATE are the ATS path of the
  protocol; NS1ATS=1 (split-stage ATS, STE.EATS=0b10, not supported); CD2L=1 with stage 1.
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

IRQ_EVTQ = 0
IRQ_PRIQ = 1
IRQ_CMD_SYNC = 2
IRQ_GERROR = 3

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
        self._cr0_res0 = self._unimplemented_cr0_bits()
        self.regs.on_write.update({
            "CR0": self._cr0_written,
            "GBPA": self._gbpa_written,
            "IRQ_CTRL": self._irq_ctrl_written,
            "GERRORN": self._gerrorn_written,
            "CMDQ_BASE": self._queue_base_written(r.CMDQ_BASE, r.IDR1.CMDQS),
            "EVENTQ_BASE": self._queue_base_written(r.EVENTQ_BASE, r.IDR1.EVENTQS),
            "PRIQ_BASE": self._queue_base_written(r.PRIQ_BASE, r.IDR1.PRIQS),
            "CMDQ_PROD": lambda old, new: self._process_cmdq(),
            "EVENTQ_CONS": lambda old, new: self._eventq_cons_written(),
            "PRIQ_CONS": lambda old, new: self._priq_cons_written(),
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
        """Every register back to its reset value, ID registers included."""
        self.regs.reset()

    def translate(self, req: DmaRequest) -> DmaTarget | DmaFault:
        if not self.regs.get("CR0ACK", "SMMUEN"):
            return self._translate_disabled(req)
        # Stream-table translation (STE, CD, walks, event records) is the vSMMUv3 table
        # issue's work; until then an enabled SMMU finds no usable configuration.
        return DmaFault(FaultKind.BAD_CONFIG, 0, req.iova, 0)

    # --- state the rest of the model reads ----------------------------------------------

    @property
    def gerror_active(self) -> int:
        """Bit n set while global error n is active: GERROR[n] != GERRORN[n]."""
        return self.regs["GERROR"] ^ self.regs["GERRORN"]

    # --- translation while disabled (§6.3 SMMU_GBPA) ------------------------------------

    def _translate_disabled(self, req: DmaRequest) -> DmaTarget | DmaFault:
        if self.regs.get("GBPA", "ABORT"):
            return DmaFault(FaultKind.BLOCKED, 0, req.iova, 0)
        if req.iova >> self.oas:
            return DmaFault(FaultKind.ADDRESS_SIZE, 0, req.iova, 0)
        return DmaTarget(gpa=req.iova, size=4096, perms=Perm.R | Perm.W | Perm.X)

    # --- global errors and interrupts (chapter 7; §3.18) --------------------------------

    def _raise_gerror(self, err: Field) -> None:
        """Activate global error ``err`` (a GERROR field) unless it is active already."""
        if self.gerror_active & err.mask:
            return
        self.regs["GERROR"] ^= err.mask
        self._signal("GERROR_IRQEN", IRQ_GERROR, "GERROR_IRQ_CFG0", "GERROR_IRQ_CFG1")

    def _signal(self, enable: str, vector: int, cfg0: str, cfg1: str) -> None:
        """Send one interrupt if IRQ_CTRLACK.``enable`` is set: MSI if CFG0.ADDR is set,
        else the wired line ``vector``.  The MSI write's success is not observable through
        Env, so MSI_*_ABT_ERR is never raised here."""
        if not self.regs.get("IRQ_CTRLACK", enable):
            return
        address = self.regs[cfg0] & self.regs.register(cfg0).field("ADDR").mask
        if address:
            self.env.msi(vector, address, self.regs[cfg1])
        else:
            self.env.irq(vector)

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
        self.regs["CR0"] = value
        self.regs["CR0ACK"] = value
        # Enabling the command queue may find commands already published (QEMU does this).
        self._process_cmdq()

    def _gbpa_written(self, old: int, new: int) -> None:
        update = r.GBPA.UPDATE.mask
        self.regs["GBPA"] = new & ~update if new & update else old

    def _irq_ctrl_written(self, old: int, new: int) -> None:
        self.regs["IRQ_CTRLACK"] = new

    def _gerrorn_written(self, old: int, new: int) -> None:
        # Acknowledging CMDQ_ERR lets command consumption resume (chapter 7).
        self._process_cmdq()

    def _queue_base_written(self, reg: Register, limit: Field) -> WriteHook:
        log2size = reg.field("LOG2SIZE")
        name = reg.name

        def hook(old: int, new: int) -> None:
            maximum = limit.get(self.regs["IDR1"])
            if log2size.get(new) > maximum:
                self.regs[name] = (new & ~log2size.mask) | log2size.prep(maximum)

        return hook

    # --- seams for the queue work (§3.5, chapter 4) -------------------------------------

    def _process_cmdq(self) -> None:
        """Consume commands from CMDQ_CONS up to CMDQ_PROD.

        Called after writes to CMDQ_PROD, CR0 (CMDQEN may have turned on) and GERRORN
        (CMDQ_ERR may have been acknowledged).  Does nothing yet: command processing is the
        vSMMUv3 queue issue's work (it runs only with CR0ACK.CMDQEN=1 and CMDQ_ERR inactive).
        """

    def _eventq_cons_written(self) -> None:
        """The guest consumed events (and may have acknowledged an overflow through
        OVACKFLG).  Does nothing yet: the event queue is the vSMMUv3 queue issue's work."""

    def _priq_cons_written(self) -> None:
        """The guest consumed page requests.  Does nothing yet: the PRI queue is later work."""


def _choice(config: dict[str, Any], name: str, default: Any, choices: tuple[Any, ...]) -> Any:
    value = config.get(name, default)
    if value not in choices:
        raise ValueError(f"smmuv3 option {name}={value!r}: expected one of {choices}")
    return value
