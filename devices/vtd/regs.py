"""The VT-d remapping-hardware register file, declared once as data.

Intel VT-d Architecture Specification rev 5.10, chapter 11 ("Register Descriptions"): §11.2
(access rules: 32-bit registers take 4-byte accesses, 64-bit ones 8-byte or two 4-byte
halves), §11.4 (one subsection per register; the names and fields below are the spec's).
Digest with the offsets and the QEMU values: reference/vtd.md §1.

Every bit a declaration does not name is reserved (reads zero, ignores writes): the spec's
RsvdZ bits and the fields rev 5.10 retired (CAP.AFL, CAP bit 23, GCMD.SFL/EAFL, FSTS.AFO/APF,
ECAP bits 5/24/28) are simply not named.

Placement (our choice, fixed so that the declarations are static data):
- ECAP.IRO = 0xF puts IVA/IOTLB at 0xF0/0xF8, as QEMU does.
- CAP.FRO = 0x22 puts the fault recording registers at 0x220, as QEMU does, but with
  CAP.NFR = 7 (eight records, 0x220-0x29F) where QEMU has one.  The range stays clear of the
  MTRR registers (0x100-0x21F), perfmon (0x300) and the enhanced command interface (0x400).
- The virtual command interface uses the rev 3.3+ layout (VCMD 0xE00, VCRSP 0xE10,
  VCCAP 0xE30; operands and results at bit 16), not the rev 3.1 layout of QEMU's 2020 vSVA
  RFC.  VCCAP bits follow rev 5.10 (NS 0, PAS 1, FPS 2); old Linux tested PAS at bit 0.
- The window is 0x1000 bytes.

Registers of features the unit does not report (ECAP.QI, ECAP.IR, ECAP.PRS, ECAP.VCS,
CAP.PLMR/PHMR) are RsvdZ, as the spec says for each; ``declare`` builds the file for one
CAP/ECAP pair.

Where QEMU's ``intel_iommu`` deviates, this file follows the spec:
- PECTL.IM resets to 1 (QEMU resets PECTL to 0).
- FEUADDR/IEUADDR/PEUADDR are read-write (QEMU: FEUADDR read-only 0).  Without ECAP.EIM the
  spec allows either; read-write is never wrong.
- FEDATA, IEDATA and PEDATA keep bits 31:16 reserved (QEMU stores all 32 bits of IEDATA).
- IQERCD is implemented (QEMU lacks it, so it always reads "no information").
"""

from __future__ import annotations

import dataclasses

from devices.regs import ALL, Field, Register, bit, strict

WINDOW = 0x1000

IRO = 0xF
"""ECAP.IRO: IVA at IRO*16, IOTLB at IRO*16 + 8."""
FRO = 0x22
"""CAP.FRO: FRCD[0] at FRO*16."""
NFR = 7
"""CAP.NFR: number of fault recording registers minus one."""
NUM_FAULT_RECORDS = NFR + 1
MAMV = 18
"""CAP.MAMV: largest IVA.AM (2^18 pages = 1 GiB), as QEMU reports."""

IVA_OFFSET = IRO * 16
IOTLB_OFFSET = IRO * 16 + 8
FRCD_OFFSET = FRO * 16

VER_MAJOR = 1
VER_MINOR = 0


def _reg(
    name: str,
    offset: int,
    width: int,
    fields: tuple[Field, ...],
    *,
    reset: int = 0,
    ro: int = 0,
    w1c: int = 0,
    wo: int = 0,
    doc: str = "",
) -> Register:
    """A register whose unnamed bits are reserved."""
    return strict(name, offset, width, fields, reset=reset, ro=ro, w1c=w1c, wo=wo, doc=doc)


# Version.
VER = _reg("VER", 0x000, 32, (Field("MAX", 7, 4), Field("MIN", 3, 0)), ro=ALL,
           reset=(VER_MAJOR << 4) | VER_MINOR)

# Capabilities; the reset value is the device's, filled in by ``declare``.
CAP = _reg("CAP", 0x008, 64, (
    Field("ND", 2, 0), bit("RWBF", 4), bit("PLMR", 5), bit("PHMR", 6), bit("CM", 7),
    Field("SAGAW", 12, 8), Field("MGAW", 21, 16), bit("ZLR", 22), Field("FRO", 33, 24),
    Field("SSLPS", 37, 34), bit("PSI", 39), Field("NFR", 47, 40), Field("MAMV", 53, 48),
    bit("DWD", 54), bit("DRD", 55), bit("FS1GP", 56), bit("PI", 59), bit("FS5LP", 60),
    bit("ECMDS", 61), bit("ESIRTPS", 62), bit("ESRTPS", 63),
), ro=ALL)

# SAGAW bits: which second-stage table depths the unit walks.
SAGAW_39 = 1 << 1
SAGAW_48 = 1 << 2
SAGAW_57 = 1 << 3
# SSLPS bits: second-stage large pages.
SSLPS_2M = 1 << 0
SSLPS_1G = 1 << 1

# Extended capabilities.
ECAP = _reg("ECAP", 0x010, 64, (
    bit("C", 0), bit("QI", 1), bit("DT", 2), bit("IR", 3), bit("EIM", 4), bit("PT", 6),
    bit("SC", 7), Field("IRO", 17, 8), Field("MHMV", 23, 20), bit("MTS", 25),
    bit("NEST", 26), bit("PRS", 29), bit("ERS", 30), bit("SRS", 31), bit("NWFS", 33),
    bit("EAFS", 34), Field("PSS", 39, 35), bit("PASID", 40), bit("DIT", 41), bit("PDS", 42),
    bit("SMTS", 43), bit("VCS", 44), bit("SSADS", 45), bit("SSTS", 46), bit("FSTS", 47),
    bit("SMPWCS", 48), bit("RPS", 49), bit("TDXCS", 50), bit("PMS", 51), bit("ADMS", 52),
    bit("RPRIVS", 53), bit("HPTS", 55), bit("PTRS", 56), bit("SSIRWS", 57), bit("SMS", 58),
    bit("HPT1GPS", 59), bit("RDTS", 60), bit("EIMER", 61), bit("IRREQ", 62),
), ro=ALL)

# GCMD is write-only; GSTS reports each command's state in the same bit.
_GCMD_BITS = (("TE", "TES", 31), ("SRTP", "RTPS", 30), ("WBF", "WBFS", 27),
              ("QIE", "QIES", 26), ("IRE", "IRES", 25), ("SIRTP", "IRTPS", 24),
              ("CFI", "CFIS", 23))
GCMD = _reg("GCMD", 0x018, 32, tuple(bit(c, n) for c, _, n in _GCMD_BITS), wo=ALL)
GSTS = _reg("GSTS", 0x01C, 32, tuple(bit(s, n) for _, s, n in _GCMD_BITS), ro=ALL)
GCMD_ONE_SHOT = GCMD.SRTP.mask | GCMD.WBF.mask | GCMD.SIRTP.mask
"""Commands that act each time they are written as 1 (their GSTS bit is not their state)."""
GSTS_PERSISTENT_MASK = 0x96FF_FFFF
"""The spec's recipe: GCMD = (GSTS & this) | command, dropping the one-shot bits."""

# Root table address; TTM selects legacy or scalable mode.
RTADDR = _reg("RTADDR", 0x020, 64, (Field("RTA", 63, 12), Field("TTM", 11, 10)))
TTM_LEGACY = 0b00
TTM_SCALABLE = 0b01
TTM_ABORT_DMA = 0b11

# Context command: software sets ICC, hardware clears it; CAIG reports what was done.
_CAIG, _CC_FM, _CC_SID = Field("CAIG", 60, 59), Field("FM", 33, 32), Field("SID", 31, 16)
CCMD = _reg("CCMD", 0x028, 64, (
    bit("ICC", 63), Field("CIRG", 62, 61), _CAIG, _CC_FM, _CC_SID, Field("DID", 15, 0),
), ro=_CAIG.mask, wo=_CC_FM.mask | _CC_SID.mask)
CC_GRAN_ERROR = 0b00
CC_GRAN_GLOBAL = 0b01
CC_GRAN_DOMAIN = 0b10
CC_GRAN_DEVICE = 0b11

# Fault status and the fault event registers.
_PPF, _FRI = bit("PPF", 1), Field("FRI", 15, 8)
FSTS = _reg("FSTS", 0x034, 32, (
    bit("PFO", 0), _PPF, bit("IQE", 4), bit("ICE", 5), bit("ITE", 6), _FRI,
), ro=_PPF.mask | _FRI.mask, w1c=0x71)
FSTS_EVENT_MASK = FSTS.PFO.mask | FSTS.PPF.mask | FSTS.IQE.mask | FSTS.ICE.mask | FSTS.ITE.mask
"""Status bits whose clearing by software also clears FECTL.IP."""

_IM_IP = (bit("IM", 31), bit("IP", 30))
_IP_RO = 1 << 30
_IM_RESET = 1 << 31
FECTL = _reg("FECTL", 0x038, 32, _IM_IP, reset=_IM_RESET, ro=_IP_RO)
FEDATA = _reg("FEDATA", 0x03C, 32, (Field("IMD", 15, 0),))
FEADDR = _reg("FEADDR", 0x040, 32, (Field("MA", 31, 2),))
FEUADDR = _reg("FEUADDR", 0x044, 32, (Field("MUA", 31, 0),))

# Protected memory: only with protected memory regions (CAP.PLMR/PHMR).
_PMEN_PRS = bit("PRS", 0)
PMEN = _reg("PMEN", 0x064, 32, (bit("EPM", 31), _PMEN_PRS), ro=_PMEN_PRS.mask)

# Queued invalidation.
IQH = _reg("IQH", 0x080, 64, (Field("QH", 18, 4),), ro=ALL)
IQT = _reg("IQT", 0x088, 64, (Field("QT", 18, 4),))
IQA = _reg("IQA", 0x090, 64, (Field("IQA", 63, 12), bit("DW", 11), Field("QS", 2, 0)))
ICS = _reg("ICS", 0x09C, 32, (bit("IWC", 0),), w1c=1)
IECTL = _reg("IECTL", 0x0A0, 32, _IM_IP, reset=_IM_RESET, ro=_IP_RO)
IEDATA = _reg("IEDATA", 0x0A4, 32, (Field("IMD", 15, 0),))
IEADDR = _reg("IEADDR", 0x0A8, 32, (Field("MA", 31, 2),))
IEUADDR = _reg("IEUADDR", 0x0AC, 32, (Field("MUA", 31, 0),))
IQERCD = _reg("IQERCD", 0x0B0, 64, (
    Field("ICESID", 63, 48), Field("ITESID", 47, 32), Field("IQEI", 3, 0),
), ro=ALL)
# IQERCD.IQEI values (reference/vtd.md §2c).
IQEI_NO_INFO = 0
IQEI_TAIL = 1
IQEI_FETCH = 2
IQEI_TYPE = 3
IQEI_RESERVED = 4
IQEI_WIDTH = 5
IQEI_TAIL_ALIGN = 6
IQEI_TTM = 7

# Interrupt remapping table address.
IRTA = _reg("IRTA", 0x0B8, 64, (Field("IRTA", 63, 12), bit("EIME", 11), Field("S", 3, 0)))

# Page request queue.
PQH = _reg("PQH", 0x0C0, 64, (Field("PQH", 18, 5),))
PQT = _reg("PQT", 0x0C8, 64, (Field("PQT", 18, 5),))
PQA = _reg("PQA", 0x0D0, 64, (Field("PQA", 63, 12), Field("PQS", 2, 0)))
PRS = _reg("PRS", 0x0DC, 32, (bit("PRO", 1), bit("PPR", 0)), w1c=0x3)
PECTL = _reg("PECTL", 0x0E0, 32, _IM_IP, reset=_IM_RESET, ro=_IP_RO)
PEDATA = _reg("PEDATA", 0x0E4, 32, (Field("IMD", 15, 0),))
PEADDR = _reg("PEADDR", 0x0E8, 32, (Field("MA", 31, 2),))
PEUADDR = _reg("PEUADDR", 0x0EC, 32, (Field("MUA", 31, 0),))

# IOTLB invalidation: IVA is write-only; IVT set by software, cleared by hardware.
IVA = _reg("IVA", IVA_OFFSET, 64, (Field("ADDR", 63, 12), bit("IH", 6), Field("AM", 5, 0)),
           wo=ALL)
_IAIG = Field("IAIG", 58, 57)
IOTLB = _reg("IOTLB", IOTLB_OFFSET, 64, (
    bit("IVT", 63), Field("IIRG", 61, 60), _IAIG, bit("DR", 49), bit("DW", 48),
    Field("DID", 47, 32),
), ro=_IAIG.mask)
IOTLB_GRAN_ERROR = 0b00
IOTLB_GRAN_GLOBAL = 0b01
IOTLB_GRAN_DOMAIN = 0b10
IOTLB_GRAN_PAGE = 0b11

# Fault recording: each 128-bit record is two 64-bit registers; F (bit 127) is RW1CS.
_FRCD_LO_FIELDS = (Field("FI", 63, 12),)
_FRCD_HI_FIELDS = (
    bit("F", 63), bit("T1", 62), Field("AT", 61, 60), Field("PV", 59, 40), Field("FR", 39, 32),
    bit("PP", 31), bit("EXE", 30), bit("PRIV", 29), bit("T2", 28), Field("SID", 15, 0),
)
_F = 1 << 63
FRCD_LO = tuple(
    _reg(f"FRCD{n}_LO", FRCD_OFFSET + 16 * n, 64, _FRCD_LO_FIELDS, ro=ALL)
    for n in range(NUM_FAULT_RECORDS)
)
FRCD_HI = tuple(
    _reg(f"FRCD{n}_HI", FRCD_OFFSET + 16 * n + 8, 64, _FRCD_HI_FIELDS,
         ro=((1 << 64) - 1) & ~_F, w1c=_F)
    for n in range(NUM_FAULT_RECORDS)
)
FRCD_F = FRCD_HI[0].F
"""FRCD{n}_HI.F, the same field in every record."""

# Virtual command interface (rev 3.3+ layout), emulation only.
VCCAP = _reg("VCCAP", 0xE30, 64, (bit("FPS", 2), bit("PAS", 1), bit("NS", 0)), ro=ALL)
VCMD = _reg("VCMD", 0xE00, 64, (Field("OA", 63, 16), Field("CMD", 7, 0)))
VCRSP = _reg("VCRSP", 0xE10, 64, (Field("RSLT", 63, 16), Field("SC", 7, 1), bit("IP", 0)),
             ro=ALL)
VCMD_NULL = 0
VCMD_ALLOC_PASID = 1
VCMD_FREE_PASID = 2
VCRSP_SC_OK = 0
VCRSP_SC_UNDEFINED = 1
VCRSP_SC_NO_PASID = 16

REGISTERS: tuple[Register, ...] = (
    VER, CAP, ECAP, GCMD, GSTS, RTADDR, CCMD, FSTS, FECTL, FEDATA, FEADDR, FEUADDR, PMEN,
    IQH, IQT, IQA, ICS, IECTL, IEDATA, IEADDR, IEUADDR, IQERCD, IRTA,
    PQH, PQT, PQA, PRS, PECTL, PEDATA, PEADDR, PEUADDR, IVA, IOTLB,
    *(r for pair in zip(FRCD_LO, FRCD_HI, strict=True) for r in pair),
    VCMD, VCRSP, VCCAP,
)
"""Every register, with CAP and ECAP reset to 0 (``declare`` fills them in)."""

FEATURE_GATES: dict[str, tuple[Register, str]] = {
    **{name: (ECAP, "QI") for name in (
        "IQH", "IQT", "IQA", "ICS", "IECTL", "IEDATA", "IEADDR", "IEUADDR", "IQERCD")},
    "IRTA": (ECAP, "IR"),
    **{name: (ECAP, "PRS") for name in (
        "PQH", "PQT", "PQA", "PRS", "PECTL", "PEDATA", "PEADDR", "PEUADDR")},
    **{name: (ECAP, "VCS") for name in ("VCMD", "VCRSP", "VCCAP")},
    "PMEN": (CAP, "PLMR"),  # this unit reports neither PLMR nor PHMR
}
"""Register → the capability bit without which the spec makes it RsvdZ."""


def declare(cap: int, ecap: int) -> tuple[Register, ...]:
    """The register file of a unit reporting ``cap`` and ``ecap``."""
    caps = {"CAP": cap, "ECAP": ecap}
    out: list[Register] = []
    for reg in REGISTERS:
        if reg.name in caps:
            reg = dataclasses.replace(reg, reset=caps[reg.name], _by_name={})
        gate = FEATURE_GATES.get(reg.name)
        if gate is not None and not gate[0].field(gate[1]).get(caps[gate[0].name]):
            reg = dataclasses.replace(reg, reset=0, ro=0, w1c=0, wo=0, rsvd=ALL, fields=(),
                                      _by_name={})
        out.append(reg)
    return tuple(out)
