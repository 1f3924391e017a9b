"""The SMMUv3 register file, declared once as data (Arm IHI 0070, chapter 6).

Every register of the 128 KiB non-secure frame is declared below with the spec's names
(§6.2 register map, §6.3 register formats).  Each declaration is followed by the
enumerated values of its fields, as Linux's ``arm-smmu-v3.h`` does, so later code reads
``IDR0.ST_LEVEL.get(v) == IDR0_ST_LEVEL_2LVL`` and never shifts by hand.

Reserved bits: ``_reg`` marks every bit that no field names as reserved, so RES0 bits read
as zero and writes to them are dropped by the generic rule of ``devices.regs``.  Bits that
are RES0 only because a feature is not implemented (CR0.VMW without IDR0.VMW, ...) depend
on the instance's ID registers and are dropped by the device's write hooks instead.

Pages (§6.2): page 0 is 0x00000-0x0FFFF, page 1 is 0x10000-0x1FFFF.
In the architecture page 1 holds only EVENTQ_PROD/CONS (0x100A8/0x100AC) and PRIQ_PROD/CONS
(0x100C8/0x100CC); the matching page-0 offsets (0xA8/0xAC/0xC8/0xCC) are reserved.  QEMU
instead makes page 1 an alias of page 0 (it masks offset bit 16, a CONSTRAINED
UNPREDICTABLE choice there).  We follow the architecture: page 1 is *not* an alias, the
page-0 twins of the page-1 registers read as zero and ignore writes, and so does everything
else in page 1.  A driver that needs page-0-only registers (Linux's PAGE0_REGS_ONLY quirk for
Cavium CN99xx) is using an erratum this model does not have.

Widths: 64-bit registers may also be accessed as two 32-bit halves; 1- and 2-byte accesses
read as zero and their writes are ignored (§6.2; protocol.md "Devices, MMIO, RESET").
The secure bank (0x8000+), GATOS, MPAM and ECMDQ registers are not implemented (their
IDR bits are 0), so they read as zero like any undefined offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from devices.regs import ALL, Field, Register, bit, strict

PAGE1 = 0x10000
"""Offset of page 1 of the frame (§6.2)."""

FRAME_SIZE = 0x20000
"""The whole non-secure frame: two 64 KiB pages."""

QUEUE_LOG2SIZE_MAX = 19
"""The architectural maximum of IDR1.CMDQS/EVENTQS/PRIQS (§6.3, SMMU_IDR1)."""


def _reg(
    name: str,
    offset: int,
    width: int,
    *fields: Field,
    reset: int = 0,
    ro: int = 0,
    doc: str = "",
) -> Register:
    """A declaration whose bits outside every named field are reserved (RES0)."""
    return strict(name, offset, width, fields, reset=reset, ro=ro, doc=doc)


# --- ID registers (§6.3: SMMU_IDR0-5, IIDR, AIDR) -----------------------------------------
# Their reset values here are placeholders: a device derives IDR0/1/3/5 from its options and
# installs them with ``with_resets`` so that RESET restores them like any other register.

IDR0 = _reg(
    "IDR0", 0x000, 32,
    bit("S2P", 0), bit("S1P", 1), Field("TTF", 3, 2), bit("COHACC", 4), bit("BTM", 5),
    Field("HTTU", 7, 6), bit("DORMHINT", 8), bit("HYP", 9), bit("ATS", 10),
    bit("NS1ATS", 11), bit("ASID16", 12), bit("MSI", 13), bit("SEV", 14), bit("ATOS", 15),
    bit("PRI", 16), bit("VMW", 17), bit("VMID16", 18), bit("CD2L", 19), bit("VATOS", 20),
    Field("TTENDIAN", 22, 21), bit("ATSRECERR", 23), Field("STALL_MODEL", 25, 24),
    bit("TERM_MODEL", 26), Field("ST_LEVEL", 28, 27), bit("RME_IMPL", 30),
    ro=ALL,
)
IDR0_TTF_AARCH32_64 = 3
IDR0_TTF_AARCH64 = 2
IDR0_HTTU_NONE = 0
IDR0_HTTU_ACCESS = 1
IDR0_HTTU_ACCESS_DIRTY = 2
IDR0_TTENDIAN_MIXED = 0
IDR0_TTENDIAN_LE = 2
IDR0_TTENDIAN_BE = 3
IDR0_STALL_MODEL_STALL = 0
IDR0_STALL_MODEL_TERMINATE = 1  # stall not supported
IDR0_STALL_MODEL_FORCE = 2
IDR0_ST_LEVEL_LINEAR = 0
IDR0_ST_LEVEL_2LVL = 1

IDR1 = _reg(
    "IDR1", 0x004, 32,
    Field("SIDSIZE", 5, 0), Field("SSIDSIZE", 10, 6), Field("PRIQS", 15, 11),
    Field("EVENTQS", 20, 16), Field("CMDQS", 25, 21), bit("ATTR_PERMS_OVR", 26),
    bit("ATTR_TYPES_OVR", 27), bit("REL", 28), bit("QUEUES_PRESET", 29),
    bit("TABLES_PRESET", 30), bit("ECMDQ", 31),
    ro=ALL,
)

IDR2 = _reg("IDR2", 0x008, 32, Field("BA_VATOS", 9, 0), ro=ALL)

IDR3 = _reg(
    "IDR3", 0x00C, 32,
    bit("HAD", 2), bit("PBHA", 3), bit("XNX", 4), bit("PPS", 5), bit("MPAM", 7),
    bit("FWB", 8), bit("STT", 9), bit("RIL", 10), Field("BBML", 12, 11), bit("E0PD", 13),
    bit("PTWNNC", 14), bit("DPT", 15),
    ro=ALL,
)
IDR3_BBML_0 = 0
IDR3_BBML_1 = 1
IDR3_BBML_2 = 2

IDR4 = _reg("IDR4", 0x010, 32, Field("IMPDEF", 31, 0), ro=ALL)

IDR5 = _reg(
    "IDR5", 0x014, 32,
    Field("OAS", 2, 0), bit("GRAN4K", 4), bit("GRAN16K", 5), bit("GRAN64K", 6),
    Field("VAX", 11, 10), Field("STALL_MAX", 31, 16),
    ro=ALL,
)
IDR5_OAS_32_BIT = 0
IDR5_OAS_36_BIT = 1
IDR5_OAS_40_BIT = 2
IDR5_OAS_42_BIT = 3
IDR5_OAS_44_BIT = 4
IDR5_OAS_48_BIT = 5
IDR5_OAS_52_BIT = 6
IDR5_OAS_BITS: Mapping[int, int] = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5, 52: 6}
"""Output address size in bits -> IDR5.OAS encoding (also the CD.IPS / STE.S2PS encoding)."""
IDR5_VAX_48_BIT = 0
IDR5_VAX_52_BIT = 1

IIDR = _reg(
    "IIDR", 0x018, 32,
    Field("Implementer", 11, 0), Field("Revision", 15, 12), Field("Variant", 19, 16),
    Field("ProductID", 31, 20),
    ro=ALL,
)

AIDR = _reg("AIDR", 0x01C, 32, Field("ArchMinorRev", 3, 0), Field("ArchMajorRev", 7, 4),
            reset=0x2, ro=ALL, doc="SMMUv3.2: range invalidation (IDR3.RIL) and BBML are v3.2")
AIDR_SMMUV3_0 = 0x0
AIDR_SMMUV3_1 = 0x1
AIDR_SMMUV3_2 = 0x2

# --- Control and status (§6.3: SMMU_CR0 to SMMU_GERRORN) ----------------------------------

CR0 = _reg(
    "CR0", 0x020, 32,
    bit("SMMUEN", 0), bit("PRIQEN", 1), bit("EVENTQEN", 2), bit("CMDQEN", 3),
    bit("ATSCHK", 4), Field("VMW", 8, 6), bit("DPT_WALK_EN", 10),
)
CR0ACK = _reg(
    "CR0ACK", 0x024, 32, *CR0.fields, ro=ALL,
    doc="Reflects CR0 once a write has taken effect (at once, in this model)",
)

CR1 = _reg(
    "CR1", 0x028, 32,
    Field("QUEUE_IC", 1, 0), Field("QUEUE_OC", 3, 2), Field("QUEUE_SH", 5, 4),
    Field("TABLE_IC", 7, 6), Field("TABLE_OC", 9, 8), Field("TABLE_SH", 11, 10),
)
CR1_CACHE_NC = 0
CR1_CACHE_WB = 1
CR1_CACHE_WT = 2
CR1_SH_NSH = 0
CR1_SH_OSH = 2
CR1_SH_ISH = 3

CR2 = _reg("CR2", 0x02C, 32, bit("E2H", 0), bit("RECINVSID", 1), bit("PTM", 2))

STATUSR = _reg("STATUSR", 0x040, 32, bit("DORMANT", 0), ro=ALL)

GBPA = _reg(
    "GBPA", 0x044, 32,
    Field("MEMATTR", 3, 0), bit("MTCFG", 4), Field("ALLOCCFG", 11, 8), Field("SHCFG", 13, 12),
    Field("PRIVCFG", 17, 16), Field("INSTCFG", 19, 18), bit("ABORT", 20), bit("UPDATE", 31),
    # SHCFG resets to "use incoming" (§6.3 SMMU_GBPA); ABORT=0: bypass until a driver says not.
    reset=0x1000,
    doc="Global bypass attributes; a write takes effect only with UPDATE=1",
)
GBPA_SHCFG_NSH = 0
GBPA_SHCFG_INCOMING = 1
GBPA_SHCFG_OSH = 2
GBPA_SHCFG_ISH = 3
GBPA_PRIVCFG_INCOMING = 0
GBPA_PRIVCFG_UNPRIV = 2
GBPA_PRIVCFG_PRIV = 3
GBPA_INSTCFG_INCOMING = 0
GBPA_INSTCFG_DATA = 2
GBPA_INSTCFG_INSTR = 3

_IRQ_ENABLES = (bit("GERROR_IRQEN", 0), bit("PRI_IRQEN", 1), bit("EVENTQ_IRQEN", 2))
IRQ_CTRL = _reg("IRQ_CTRL", 0x050, 32, *_IRQ_ENABLES)
IRQ_CTRLACK = _reg("IRQ_CTRLACK", 0x054, 32, *_IRQ_ENABLES, ro=ALL)

_GERRORS = (
    bit("CMDQ_ERR", 0), bit("EVENTQ_ABT_ERR", 2), bit("PRIQ_ABT_ERR", 3),
    bit("MSI_CMDQ_ABT_ERR", 4), bit("MSI_EVENTQ_ABT_ERR", 5), bit("MSI_PRIQ_ABT_ERR", 6),
    bit("MSI_GERROR_ABT_ERR", 7), bit("SFM_ERR", 8),
)
GERROR = _reg("GERROR", 0x060, 32, *_GERRORS, ro=ALL,
              doc="Error n is active while GERROR[n] != GERRORN[n] (chapter 7, global errors)")
GERRORN = _reg("GERRORN", 0x064, 32, *_GERRORS,
               doc="Software acknowledges error n by making GERRORN[n] equal GERROR[n]")


def _irq_cfg(prefix: str, offset: int) -> tuple[Register, Register, Register]:
    """The MSI configuration shared by GERROR, EVENTQ and PRIQ (§6.3 SMMU_*_IRQ_CFGn, §3.18)."""
    return (
        _reg(f"{prefix}_IRQ_CFG0", offset, 64, Field("ADDR", 51, 2),
             doc="MSI doorbell address; 0 means no MSI is sent"),
        _reg(f"{prefix}_IRQ_CFG1", offset + 8, 32, Field("DATA", 31, 0)),
        _reg(f"{prefix}_IRQ_CFG2", offset + 12, 32, Field("MEMATTR", 3, 0), Field("SH", 5, 4)),
    )


GERROR_IRQ_CFG0, GERROR_IRQ_CFG1, GERROR_IRQ_CFG2 = _irq_cfg("GERROR", 0x068)

# --- Stream table (§6.3: SMMU_STRTAB_BASE, _CFG; §3.3) ------------------------------------

STRTAB_BASE = _reg("STRTAB_BASE", 0x080, 64, Field("ADDR", 51, 6), bit("RA", 62))
STRTAB_BASE_CFG = _reg(
    "STRTAB_BASE_CFG", 0x088, 32,
    Field("LOG2SIZE", 5, 0), Field("SPLIT", 10, 6), Field("FMT", 17, 16),
)
STRTAB_BASE_CFG_FMT_LINEAR = 0
STRTAB_BASE_CFG_FMT_2LVL = 1

# --- Queues (§6.3: SMMU_CMDQ_*, EVENTQ_*, PRIQ_*; §3.5) -----------------------------------
# PROD/CONS hold an index of LOG2SIZE bits plus the wrap bit just above it; with the maximum
# LOG2SIZE of 19 that is bits [19:0].  Bits above the wrap bit inside WR/RD are stored as
# written; queue code masks them with the live LOG2SIZE.

CMDQ_BASE = _reg("CMDQ_BASE", 0x090, 64, Field("LOG2SIZE", 4, 0), Field("ADDR", 51, 5),
                 bit("RA", 62))
CMDQ_PROD = _reg("CMDQ_PROD", 0x098, 32, Field("WR", 19, 0))
CMDQ_CONS = _reg("CMDQ_CONS", 0x09C, 32, Field("RD", 19, 0), Field("ERR", 30, 24))
CMDQ_CONS_ERR_CERROR_NONE = 0
CMDQ_CONS_ERR_CERROR_ILL = 1
CMDQ_CONS_ERR_CERROR_ABT = 2
CMDQ_CONS_ERR_CERROR_ATC_INV_SYNC = 3

EVENTQ_BASE = _reg("EVENTQ_BASE", 0x0A0, 64, Field("LOG2SIZE", 4, 0), Field("ADDR", 51, 5),
                   bit("WA", 62))
EVENTQ_PROD = _reg("EVENTQ_PROD", PAGE1 + 0x0A8, 32, Field("WR", 19, 0), bit("OVFLG", 31))
EVENTQ_CONS = _reg("EVENTQ_CONS", PAGE1 + 0x0AC, 32, Field("RD", 19, 0), bit("OVACKFLG", 31))
EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1, EVENTQ_IRQ_CFG2 = _irq_cfg("EVENTQ", 0x0B0)

PRIQ_BASE = _reg("PRIQ_BASE", 0x0C0, 64, Field("LOG2SIZE", 4, 0), Field("ADDR", 51, 5),
                 bit("WA", 62))
PRIQ_PROD = _reg("PRIQ_PROD", PAGE1 + 0x0C8, 32, Field("WR", 19, 0), bit("OVFLG", 31))
PRIQ_CONS = _reg("PRIQ_CONS", PAGE1 + 0x0CC, 32, Field("RD", 19, 0), bit("OVACKFLG", 31))
PRIQ_IRQ_CFG0, PRIQ_IRQ_CFG1, PRIQ_IRQ_CFG2 = _irq_cfg("PRIQ", 0x0D0)

# --- Identification (§6.2: the CoreSight-style ID block at 0xFD0-0xFFC) -------------------
# The values are those QEMU reports (an Arm MMU-600 r0p1 ID block): Linux never reads them,
# debuggers that do see a familiar part.  CIDR0-3 are the fixed CoreSight preamble.


def _id(name: str, offset: int, reset: int, *fields: Field) -> Register:
    return _reg(name, offset, 32, *fields, reset=reset, ro=ALL)


PIDR4 = _id("PIDR4", 0xFD0, 0x04, Field("DES_2", 3, 0), Field("SIZE", 7, 4))
PIDR5 = _id("PIDR5", 0xFD4, 0x00)
PIDR6 = _id("PIDR6", 0xFD8, 0x00)
PIDR7 = _id("PIDR7", 0xFDC, 0x00)
PIDR0 = _id("PIDR0", 0xFE0, 0x84, Field("PART_0", 7, 0))
PIDR1 = _id("PIDR1", 0xFE4, 0xB4, Field("PART_1", 3, 0), Field("DES_0", 7, 4))
PIDR2 = _id("PIDR2", 0xFE8, 0xF0, Field("DES_1", 2, 0), bit("JEDEC", 3),
            Field("REVISION", 7, 4))
PIDR3 = _id("PIDR3", 0xFEC, 0x10, Field("CMOD", 3, 0), Field("REVAND", 7, 4))
CIDR0 = _id("CIDR0", 0xFF0, 0x0D, Field("PRMBL_0", 7, 0))
CIDR1 = _id("CIDR1", 0xFF4, 0xF0, Field("PRMBL_1", 3, 0), Field("CLASS", 7, 4))
CIDR2 = _id("CIDR2", 0xFF8, 0x05, Field("PRMBL_2", 7, 0))
CIDR3 = _id("CIDR3", 0xFFC, 0xB1, Field("PRMBL_3", 7, 0))

REGISTERS: tuple[Register, ...] = (
    IDR0, IDR1, IDR2, IDR3, IDR4, IDR5, IIDR, AIDR,
    CR0, CR0ACK, CR1, CR2, STATUSR, GBPA, IRQ_CTRL, IRQ_CTRLACK,
    GERROR, GERRORN, GERROR_IRQ_CFG0, GERROR_IRQ_CFG1, GERROR_IRQ_CFG2,
    STRTAB_BASE, STRTAB_BASE_CFG,
    CMDQ_BASE, CMDQ_PROD, CMDQ_CONS,
    EVENTQ_BASE, EVENTQ_PROD, EVENTQ_CONS, EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1, EVENTQ_IRQ_CFG2,
    PRIQ_BASE, PRIQ_PROD, PRIQ_CONS, PRIQ_IRQ_CFG0, PRIQ_IRQ_CFG1, PRIQ_IRQ_CFG2,
    PIDR4, PIDR5, PIDR6, PIDR7, PIDR0, PIDR1, PIDR2, PIDR3, CIDR0, CIDR1, CIDR2, CIDR3,
)
"""Every register of the frame, in offset order of page 0 then page 1."""

ID_REGISTERS: tuple[Register, ...] = (
    IDR0, IDR1, IDR2, IDR3, IDR4, IDR5, IIDR, AIDR,
    PIDR4, PIDR5, PIDR6, PIDR7, PIDR0, PIDR1, PIDR2, PIDR3, CIDR0, CIDR1, CIDR2, CIDR3,
)


def with_resets(registers: tuple[Register, ...], resets: Mapping[str, int]) -> tuple[Register, ...]:
    """The declarations with some reset values replaced (an instance's ID registers).

    Unknown names raise ``KeyError``: that is a bug in the caller, not guest input.
    """
    unknown = set(resets) - {r.name for r in registers}
    if unknown:
        raise KeyError(f"no such registers: {sorted(unknown)}")
    return tuple(
        replace(r, reset=resets[r.name], _by_name={}) if r.name in resets else r
        for r in registers
    )

# --- Interrupt vectors (the model's ``irq_names`` order, protocol.md GET_CONFIG) -----------

IRQ_EVTQ = 0
IRQ_PRIQ = 1
IRQ_CMD_SYNC = 2
IRQ_GERROR = 3
