"""Fault reasons and the fault recording registers.

VT-d rev 5.10 chapter 7: §7.1 (fault categories; the "qualified" faults that FPD
suppresses), §7.2 (primary fault logging into the fault recording registers, FSTS.PPF/PFO/FRI),
§7.3 (fault events), Appendix A / §7.1.3 tables (the fault reason codes, legacy 0x1-0xD and
scalable mode 0x30-0x90), §11.4.14 (FRCD_REG).  Digest: reference/vtd.md §4a-§4b.

Each reason carries the ``FaultKind`` the protocol reports (protocol.md "DMA and TRANSLATE")
and whether FPD may suppress its recording.  Access errors on the root, context and PASID
structures are never suppressed: no entry with an FPD bit was read to ask.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

from devices.model import FaultKind
from devices.regs import RegisterFile

from .regs import FRCD_F, FRCD_HI, FRCD_LO, FSTS, FSTS_EVENT_MASK, NUM_FAULT_RECORDS

_K = FaultKind


class FR(enum.IntEnum):
    """Fault reasons this model raises, by the spec's numbers."""

    # Legacy mode (§7.1.3, "LRT/LCT/LSL" conditions).
    ROOT_NOT_PRESENT = 0x1
    CONTEXT_NOT_PRESENT = 0x2
    CONTEXT_INVALID = 0x3
    ADDRESS_BEYOND_MGAW = 0x4
    WRITE = 0x5
    READ = 0x6
    PAGING_ENTRY_ACCESS = 0x7
    ROOT_ACCESS = 0x8
    CONTEXT_ACCESS = 0x9
    ROOT_RESERVED = 0xA
    CONTEXT_RESERVED = 0xB
    PAGING_ENTRY_RESERVED = 0xC
    # Scalable mode and root-table-address conditions.
    SM_RTA_INVALID = 0x30
    SM_PASID_IN_LEGACY = 0x31
    SM_PAGE_REQUEST_IN_LEGACY = 0x32
    SM_ROOT_ACCESS = 0x38
    SM_ROOT_NOT_PRESENT = 0x39
    SM_ROOT_RESERVED = 0x3A
    SM_CONTEXT_ACCESS = 0x40
    SM_CONTEXT_NOT_PRESENT = 0x41
    SM_CONTEXT_RESERVED = 0x42
    SM_CONTEXT_INVALID = 0x43
    SM_PASID_DISABLED = 0x45
    SM_PASID_TOO_LARGE = 0x46
    SM_PRE_CLEAR = 0x47
    SM_PASID_DIR_ACCESS = 0x50
    SM_PASID_DIR_NOT_PRESENT = 0x51
    SM_PASID_DIR_RESERVED = 0x52
    SM_PASID_ACCESS = 0x58
    SM_PASID_NOT_PRESENT = 0x59
    SM_PASID_RESERVED = 0x5A
    SM_PASID_INVALID = 0x5B
    SM_ERE_CLEAR = 0x5C
    SM_SRE_CLEAR = 0x5D
    FS_ACCESS = 0x70
    FS_NOT_PRESENT = 0x71
    FS_RESERVED = 0x72
    FS_ROOT_ACCESS = 0x73
    NESTED_FS_BEYOND_MGAW = 0x74
    NESTED_FS_ROOT_READ = 0x75
    NESTED_FS_READ = 0x76
    NESTED_FS_WRITE = 0x77
    SS_ACCESS = 0x78
    SS_NOT_PRESENT = 0x79
    SS_RESERVED = 0x7A
    SS_ROOT_INVALID = 0x7B
    FS_NON_CANONICAL = 0x80
    FS_USER = 0x81
    FS_EXECUTE = 0x82
    SM_BEYOND_HAW = 0x83
    SS_BEYOND_AGAW = 0x84
    SM_WRITE = 0x85
    SM_READ = 0x86
    FS_AD_UPDATE = 0x90


_STRUCTURE = {
    FR.ROOT_NOT_PRESENT, FR.CONTEXT_NOT_PRESENT, FR.CONTEXT_INVALID, FR.ROOT_RESERVED,
    FR.CONTEXT_RESERVED, FR.SM_RTA_INVALID, FR.SM_PASID_IN_LEGACY,
    FR.SM_PAGE_REQUEST_IN_LEGACY, FR.SM_ROOT_NOT_PRESENT, FR.SM_ROOT_RESERVED,
    FR.SM_CONTEXT_NOT_PRESENT, FR.SM_CONTEXT_RESERVED, FR.SM_CONTEXT_INVALID,
    FR.SM_PASID_DISABLED, FR.SM_PASID_TOO_LARGE, FR.SM_PRE_CLEAR, FR.SM_PASID_DIR_NOT_PRESENT,
    FR.SM_PASID_DIR_RESERVED, FR.SM_PASID_NOT_PRESENT, FR.SM_PASID_RESERVED,
    FR.SM_PASID_INVALID, FR.SM_ERE_CLEAR, FR.SM_SRE_CLEAR, FR.SS_ROOT_INVALID,
}
_STRUCTURE_FETCH = {FR.ROOT_ACCESS, FR.CONTEXT_ACCESS, FR.SM_ROOT_ACCESS,
                    FR.SM_CONTEXT_ACCESS, FR.SM_PASID_DIR_ACCESS, FR.SM_PASID_ACCESS}
NOT_QUALIFIED = frozenset(_STRUCTURE_FETCH | {
    FR.ROOT_NOT_PRESENT, FR.ROOT_RESERVED, FR.SM_RTA_INVALID, FR.SM_ROOT_NOT_PRESENT,
    FR.SM_ROOT_RESERVED, FR.CONTEXT_NOT_PRESENT, FR.SM_CONTEXT_NOT_PRESENT,
    FR.SM_PASID_IN_LEGACY, FR.SM_PAGE_REQUEST_IN_LEGACY,
})
"""Reasons FPD cannot suppress: decided before any entry with an FPD bit was read."""


def config_kind(fr: FR) -> tuple[FaultKind, int]:
    """(kind, stage) of a fault found while reading root/context/PASID structures."""
    if fr in _STRUCTURE_FETCH:
        return _K.EXTERNAL_ABORT, 0
    if fr in (FR.ADDRESS_BEYOND_MGAW, FR.SM_BEYOND_HAW, FR.SS_BEYOND_AGAW):
        return _K.ADDRESS_SIZE, 0
    return _K.BAD_CONFIG, 0


class FaultInfo(NamedTuple):
    """What one recorded fault says (§7.2.1)."""

    sid: int
    address: int
    reason: int
    write: bool = False
    page_request: bool = False
    privileged: bool = False
    execute: bool = False
    pasid: int | None = None


_LO_FI = FRCD_LO[0].field("FI")
_HI = FRCD_HI[0]


def frcd_words(info: FaultInfo) -> tuple[int, int]:
    """The two 64-bit halves of a fault recording register (§11.4.14), with F set."""
    lo = _LO_FI.prep(info.address >> 12)
    # (T1, T2): (0, 0) write, (1, 0) read, (0, 1) page request.
    t1 = 0 if info.write or info.page_request else 1
    hi = (_HI.F.prep(1) | _HI.T1.prep(t1) | _HI.T2.prep(int(info.page_request))
          | _HI.FR.prep(info.reason) | _HI.PRIV.prep(int(info.privileged))
          | _HI.EXE.prep(int(info.execute)) | _HI.SID.prep(info.sid))
    if info.pasid is not None:
        hi |= _HI.PP.prep(1) | _HI.PV.prep(info.pasid)
    return lo, hi


class FaultRecorder:
    """Primary fault logging (§7.2.1) into the fault recording registers.

    Records go to the registers in turn, wrapping after the last one (CAP.NFR + 1 of them).
    A fault is dropped while FSTS.PFO is set, and when the next register still holds an
    unserviced record (F = 1), which sets PFO.  Each record sets FSTS.PPF (and FRI, when PPF
    was clear); a fault event is raised when PFO or PPF becomes set while no other fault
    status was pending (§7.3).  Unlike QEMU, records are never collapsed by source-id: every
    recorded fault is in a register of its own.
    """

    def __init__(self, regs: RegisterFile, raise_event: Callable[[], None]) -> None:
        self.regs = regs
        self.raise_event = raise_event
        self.index = 0

    def reset(self) -> None:
        self.index = 0

    def record(self, info: FaultInfo) -> bool:
        """Log one fault; whether a record was written."""
        regs = self.regs
        fsts = regs["FSTS"]
        quiet = not fsts & FSTS_EVENT_MASK
        if FSTS.PFO.get(fsts):
            return False
        hi_name = FRCD_HI[self.index].name
        if FRCD_F.get(regs[hi_name]):
            regs["FSTS"] = fsts | FSTS.PFO.mask
            if quiet:
                self.raise_event()
            return False
        lo, hi = frcd_words(info)
        regs[FRCD_LO[self.index].name] = lo
        regs[hi_name] = hi
        if not FSTS.PPF.get(fsts):
            fsts = (fsts & ~FSTS.FRI.mask) | FSTS.FRI.prep(self.index)
        regs["FSTS"] = fsts | FSTS.PPF.mask
        self.index = (self.index + 1) % NUM_FAULT_RECORDS
        if quiet:
            self.raise_event()
        return True
