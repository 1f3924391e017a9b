"""From a request's source-id and PASID to its translation setup: the root, context and PASID
table walk.

VT-d rev 5.10 §3.4 (root/context/PASID structures, legacy and scalable mode), §3.5-§3.8
(which stage translates: TT, PGTT), §9.1-§9.6 (entry formats and their reserved bits), §7.1.3
(the fault reason for every way this walk fails).  Digest: reference/vtd.md §3a-§3b, §4a.

Everything here is a pure function of guest memory and the unit's capabilities; the caching
(context cache, PASID cache) is the device's.  Problems are returned as ``ConfigFault`` values
carrying the fault reason and whether an entry read so far had FPD set.

Checks beyond QEMU's (each the spec's rule):
- PGTT must name a translation type the unit reports (FS: ECAP.FSTS, SS: ECAP.SSTS, nested:
  ECAP.NEST, pass-through: ECAP.PT) else 0x5B; QEMU 7.2 walked PGTT 1 and 3 as second stage.
- Fields for capabilities the unit lacks are reserved: SRE without ECAP.SRS, ERE (ECAP.ERS is
  0), EAFE without ECAP.EAFS, SSADE without ECAP.SSADS, RID_PASID/RID_PRIV without
  ECAP.RPS/RPRIVS.
- A PASID beyond the directory (2^(PDTS+7) directory entries of 64 PASIDs) is 0x46, a request
  with PASID while PASIDE = 0 is 0x45.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from devices.model import MemoryPort
from devices.pagetable import VtdSecondStage, X86FirstStage

from . import context as ctxmod
from . import pasid as pasidmod
from .context import (
    CONTEXT_ENTRY,
    ROOT_ENTRY,
    SM_CONTEXT_ENTRY,
    SM_ROOT_ENTRY,
    ContextEntry,
    ScalableContextEntry,
)
from .faults import FR
from .pasid import PASID_DIR_ENTRY, PASID_ENTRY, PasidEntry, Pgtt


class Unit(NamedTuple):
    """The capability facts the walk depends on (from CAP/ECAP)."""

    aw_bits: int
    """MGAW + 1; also the host address width of second-stage and first-stage outputs."""
    sagaw: int
    sp_1g: bool
    dt: bool
    pt: bool
    snoop: bool
    nest: bool
    fsts: bool
    ssts: bool
    fs5lp: bool
    fs1gp: bool
    srs: bool
    pasid_bits: int


class Kind(enum.Enum):
    PASS_THROUGH = "pass-through"
    SECOND_STAGE = "second-stage"
    FIRST_STAGE = "first-stage"
    NESTED = "nested"


@dataclass(frozen=True, slots=True)
class Setup:
    """How requests of one (source-id, PASID) are translated."""

    kind: Kind
    did: int
    fpd: bool
    scalable: bool
    ss: VtdSecondStage | None = None
    fs: X86FirstStage | None = None


class ConfigFault(NamedTuple):
    reason: FR
    fpd: bool = False


@dataclass(frozen=True, slots=True)
class ScalableContext:
    """A decoded scalable-mode context entry (what the context cache holds)."""

    entry: ScalableContextEntry
    fpd: bool

    @property
    def max_pasid(self) -> int:
        return ctxmod.pasid_dir_entries(self.entry.PDTS) * pasidmod.PASIDS_PER_TABLE


def _read(mem: MemoryPort, gpa: int, size: int) -> bytes | None:
    return mem.read(gpa, size)


def second_stage(unit: Unit, root: int, aw: int, *, ssee: bool = False, ad: bool = False,
                 ) -> VtdSecondStage | None:
    """The second-stage walker of an AW field, or None if AW is not in SAGAW."""
    levels = ctxmod.AW_LEVELS.get(aw)
    if levels is None or not unit.sagaw & (1 << aw):
        return None
    return VtdSecondStage(root, levels, host_width(unit), sp_1g=unit.sp_1g, ssee=ssee, ad=ad,
                          snp=unit.snoop, input_bits=unit.aw_bits)


def host_width(unit: Unit) -> int:
    """HAW, the output address width of a walk: the unit's address width, but never more
    than the 52 bits a physical address has (a 57-bit MGAW is about inputs)."""
    return min(unit.aw_bits, 52)


# -- legacy mode (§3.4.2) ----------------------------------------------------------------------


def legacy_context(mem: MemoryPort, rta: int, sid: int, unit: Unit) -> Setup | ConfigFault:
    raw = _read(mem, rta + (sid >> 8) * ctxmod.ROOT_ENTRY_SIZE, ctxmod.ROOT_ENTRY_SIZE)
    if raw is None:
        return ConfigFault(FR.ROOT_ACCESS)
    words = ROOT_ENTRY.words(raw)
    root = ROOT_ENTRY.from_words(words)
    if not root.P:
        return ConfigFault(FR.ROOT_NOT_PRESENT)
    if ROOT_ENTRY.reserved(words) or root.CTP >> (unit.aw_bits - 12):
        return ConfigFault(FR.ROOT_RESERVED)
    raw = _read(mem, ctxmod.context_table_slot(root.CTP, sid & 0xFF, False),
                ctxmod.CONTEXT_ENTRY_SIZE)
    if raw is None:
        return ConfigFault(FR.CONTEXT_ACCESS)
    words = CONTEXT_ENTRY.words(raw)
    ce: ContextEntry = CONTEXT_ENTRY.from_words(words)
    if not ce.P:
        return ConfigFault(FR.CONTEXT_NOT_PRESENT)
    fpd = bool(ce.FPD)
    if CONTEXT_ENTRY.reserved(words):
        return ConfigFault(FR.CONTEXT_RESERVED, fpd)
    if ce.TT == ctxmod.TT_PASS_THROUGH:
        if not unit.pt:
            return ConfigFault(FR.CONTEXT_INVALID, fpd)
        return Setup(Kind.PASS_THROUGH, ce.DID, fpd, False)
    if ce.TT == 0b11 or (ce.TT == ctxmod.TT_DEVICE_TLB and not unit.dt):
        return ConfigFault(FR.CONTEXT_INVALID, fpd)
    if ce.SSPTPTR >> (unit.aw_bits - 12):
        return ConfigFault(FR.CONTEXT_RESERVED, fpd)
    ss = second_stage(unit, ce.SSPTPTR << 12, ce.AW)
    if ss is None:
        return ConfigFault(FR.CONTEXT_INVALID, fpd)
    return Setup(Kind.SECOND_STAGE, ce.DID, fpd, False, ss=ss)


# -- scalable mode (§3.4.3) --------------------------------------------------------------------


def scalable_context(mem: MemoryPort, rta: int, sid: int, unit: Unit,
                     ) -> ScalableContext | ConfigFault:
    raw = _read(mem, rta + (sid >> 8) * ctxmod.ROOT_ENTRY_SIZE, ctxmod.ROOT_ENTRY_SIZE)
    if raw is None:
        return ConfigFault(FR.SM_ROOT_ACCESS)
    words = SM_ROOT_ENTRY.words(raw)
    root = SM_ROOT_ENTRY.from_words(words)
    devfn = sid & 0xFF
    upper = devfn >= 0x80
    present, ctp = (root.UP, root.UCTP) if upper else (root.LP, root.LCTP)
    if not present:
        return ConfigFault(FR.SM_ROOT_NOT_PRESENT)
    half_rsvd = SM_ROOT_ENTRY.rsvd[1 if upper else 0]
    if words[1 if upper else 0] & half_rsvd or ctp >> (unit.aw_bits - 12):
        return ConfigFault(FR.SM_ROOT_RESERVED)
    raw = _read(mem, ctxmod.context_table_slot(ctp, devfn, True), ctxmod.SM_CONTEXT_ENTRY_SIZE)
    if raw is None:
        return ConfigFault(FR.SM_CONTEXT_ACCESS)
    words = SM_CONTEXT_ENTRY.words(raw)
    ce: ScalableContextEntry = SM_CONTEXT_ENTRY.from_words(words)
    if not ce.P:
        return ConfigFault(FR.SM_CONTEXT_NOT_PRESENT)
    fpd = bool(ce.FPD)
    # RID_PASID and RID_PRIV are honoured only with ECAP.RPS / RPRIVS, which this unit lacks.
    if SM_CONTEXT_ENTRY.reserved(words) or ce.RID_PASID or ce.RID_PRIV \
            or ce.PASIDDIRPTR >> (unit.aw_bits - 12):
        return ConfigFault(FR.SM_CONTEXT_RESERVED, fpd)
    if (ce.DTE or ce.PRE) and not unit.dt:
        return ConfigFault(FR.SM_CONTEXT_INVALID, fpd)
    return ScalableContext(ce, fpd)


def scalable_pasid(mem: MemoryPort, sc: ScalableContext, pasid: int | None, unit: Unit,
                   ) -> tuple[Setup, PasidEntry] | ConfigFault:
    """The PASID entry of a request (``pasid`` None: the RID_PASID entry, PASID 0)."""
    fpd = sc.fpd
    if pasid is None:
        pasid = sc.entry.RID_PASID
    elif not sc.entry.PASIDE:
        return ConfigFault(FR.SM_PASID_DISABLED, fpd)
    if pasid >= sc.max_pasid or pasid >> unit.pasid_bits:
        return ConfigFault(FR.SM_PASID_TOO_LARGE, fpd)
    raw = _read(mem, pasidmod.dir_slot(sc.entry.PASIDDIRPTR << 12, pasid),
                pasidmod.PASID_DIR_ENTRY_SIZE)
    if raw is None:
        return ConfigFault(FR.SM_PASID_DIR_ACCESS, fpd)
    words = PASID_DIR_ENTRY.words(raw)
    de = PASID_DIR_ENTRY.from_words(words)
    if not de.P:
        return ConfigFault(FR.SM_PASID_DIR_NOT_PRESENT, fpd)
    fpd = fpd or bool(de.FPD)
    if PASID_DIR_ENTRY.reserved(words) or de.PTP >> (unit.aw_bits - 12):
        return ConfigFault(FR.SM_PASID_DIR_RESERVED, fpd)
    raw = _read(mem, pasidmod.table_slot(de.PTP << 12, pasid), pasidmod.PASID_ENTRY_SIZE)
    if raw is None:
        return ConfigFault(FR.SM_PASID_ACCESS, fpd)
    words = PASID_ENTRY.words(raw)
    pe: PasidEntry = PASID_ENTRY.from_words(words)
    if not pe.P:
        return ConfigFault(FR.SM_PASID_NOT_PRESENT, fpd)
    fpd = fpd or bool(pe.FPD)
    if PASID_ENTRY.reserved(words) or pe.ERE or pe.EAFE or pe.SSADE \
            or (pe.SRE and not unit.srs):
        return ConfigFault(FR.SM_PASID_RESERVED, fpd)
    setup = _pasid_setup(pe, fpd, unit)
    if isinstance(setup, FR):
        return ConfigFault(setup, fpd)
    return setup, pe


def _pasid_setup(pe: PasidEntry, fpd: bool, unit: Unit) -> Setup | FR:
    try:
        pgtt = Pgtt(pe.PGTT)
    except ValueError:
        return FR.SM_PASID_INVALID
    supported = {Pgtt.FIRST_STAGE: unit.fsts, Pgtt.SECOND_STAGE: unit.ssts,
                 Pgtt.NESTED: unit.nest, Pgtt.PASS_THROUGH: unit.pt}[pgtt]
    if not supported:
        return FR.SM_PASID_INVALID
    if pgtt is Pgtt.PASS_THROUGH:
        return Setup(Kind.PASS_THROUGH, pe.DID, fpd, True)
    ss = None
    if pgtt in (Pgtt.SECOND_STAGE, Pgtt.NESTED):
        if pe.SSPTPTR >> (unit.aw_bits - 12):
            return FR.SS_ROOT_INVALID
        ss = second_stage(unit, pe.SSPTPTR << 12, pe.AW, ssee=bool(pe.SSEE))
        if ss is None:
            return FR.SM_PASID_INVALID
        if pgtt is Pgtt.SECOND_STAGE:
            return Setup(Kind.SECOND_STAGE, pe.DID, fpd, True, ss=ss)
    if pe.FSPM not in (pasidmod.FSPM_4_LEVEL, pasidmod.FSPM_5_LEVEL) or (
            pe.FSPM == pasidmod.FSPM_5_LEVEL and not unit.fs5lp):
        return FR.SM_PASID_INVALID
    if pe.FSPTPTR >> (unit.aw_bits - 12):
        return FR.SM_PASID_RESERVED
    fs = X86FirstStage(pe.FSPTPTR << 12, 5 if pe.FSPM else 4, host_width(unit),
                       page_1g=unit.fs1gp, nxe=bool(pe.NXE), sre=bool(pe.SRE),
                       wpe=bool(pe.WPE), smep=bool(pe.SMEP))
    kind = Kind.NESTED if pgtt is Pgtt.NESTED else Kind.FIRST_STAGE
    return Setup(kind, pe.DID, fpd, True, ss=ss, fs=fs)
