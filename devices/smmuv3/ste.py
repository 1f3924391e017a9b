"""Stream table: L1STD, STE and the lookup from a StreamID (Arm IHI 0070 §3.3, §5.1, §5.2).

Lookup (§3.3.2, §6.3.24-6.3.25, §7.3.3):
* StreamID ≥ 2^STRTAB_BASE_CFG.LOG2SIZE: C_BAD_STREAMID.
* Linear (FMT = 0b00, and the reserved FMT values, which behave as 0b00): the STE is at
  base + 64·SID, base aligned to the table size (the SMMU ignores the low ADDR bits).
* 2-level (FMT = 0b01): L1STD at base + 8·(SID >> SPLIT), base aligned to the larger of 64 B
  and the L1 table size; SPLIT values other than 6/8/10 behave as 6.  The L1STD's Span must
  be 1..11 and at most SPLIT + 1, and SID[SPLIT-1:0] < 2^(Span-1) — the L2 array holds
  2^(Span-1) STEs (§5.1).  QEMU (and Xen's copy) accept 2^Span (smmuv3.md §8 item 4); we
  follow the spec.  Any of these failing is C_BAD_STREAMID.  L2Ptr is aligned to the L2 size.
* A structure that cannot be read (not guest RAM): F_STE_FETCH with that address.

C_BAD_STREAMID is recorded only when CR2.RECINVSID = 1 (§7.3.3); the caller applies that.

STE validity (§5.2, §5.5): V = 0, and every configuration marked ILLEGAL for the features
this SMMU advertises, give C_BAD_STE; fields IGNORED because their stage bypasses are not
checked.  Config 0b0xx (reserved values included) aborts without an event.  RES0 fields are
not checked (the spec makes only ILLEGAL values an error).  Decisions where the spec offers
a choice: S2T0SZ out of range is ILLEGAL (mandatory from v3.1); S2PS and reserved values are
capped to the OAS ("behaves as the cap").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from devices.model import MemoryPort
from devices.pagetable.arm import (
    GRANULE_SHIFTS,
    TG0_GRANULES,
    TSZ_MAX,
    TSZ_MIN,
    ArmS2Config,
    BadConfig,
)
from devices.smmuv3.regs import IDR5_OAS_BITS

from .caps import Caps
from .events import EventType
from .layout import Layout, dword, f, rsvd

STE_SIZE = 64
L1STD_SIZE = 8

L1STD = Layout("L1STD", dword(rsvd(8), f("L2Ptr", 50), rsvd(1), f("Span", 5)))
SPAN_MAX = 11

STE = Layout(
    "STE",
    dword(f("S1CDMax", 5), rsvd(3), f("S1ContextPtr", 50), f("S1Fmt", 2), f("Config", 3),
          f("V", 1)),
    dword(rsvd(12), f("INSTCFG", 2), f("PRIVCFG", 2), f("NSCFG", 2), f("SHCFG", 2), rsvd(3),
          f("ALLOCCFG", 4), f("MTCFG", 1), f("MemAttr", 4), f("STRW", 2), f("EATS", 2),
          f("S1STALLD", 1), f("S1MPAM", 1), f("S2FWB", 1), f("S1PIE", 1),
          f("SW_RESERVED", 4), f("MEV", 1), f("PPAR", 1), f("DCP", 1), f("CONT", 4),
          f("DRE", 1), f("S2HWU62", 1), f("S2HWU61", 1), f("S2HWU60", 1), f("S2HWU59", 1),
          f("S1CSH", 2), f("S1COR", 2), f("S1CIR", 2), f("S1DSS", 2)),
    dword(f("DPT_VMATCH", 2), f("S2POE", 1), f("S2PIE", 1), f("S2HAFT", 1), f("S2R", 1),
          f("S2S", 1), f("S2HA", 1), f("S2HD", 1), f("S2PTW", 1), f("S2AFFD", 1),
          f("S2ENDI", 1), f("S2AA64", 1), f("S2PS", 3), f("S2TG", 2), f("S2SH0", 2),
          f("S2OR0", 2), f("S2IR0", 2), f("S2SL0", 2), f("S2T0SZ", 6), rsvd(16),
          f("S2VMID", 16)),
    dword(rsvd(1), f("S2SKL", 2), rsvd(5), f("S2TTB", 52), f("S2DS", 1), f("S2SL0_2", 1),
          f("S2NSA", 1), f("S2NSW", 1)),
    dword(f("MECID", 16), f("S_S2TG", 2), rsvd(6), f("S_S2SL0", 2), f("S_S2T0SZ", 6),
          f("PARTID", 16), rsvd(16)),
    dword(rsvd(55), f("MPAM_NS", 1), f("PMG", 8)),
    dword(rsvd(64)),
    dword(rsvd(64)),
)


class Config(enum.IntEnum):
    """STE.Config (§5.2): bit 0 = stage 1 translates, bit 1 = stage 2 translates."""

    ABORT = 0b000
    BYPASS = 0b100
    S1 = 0b101
    S2 = 0b110
    NESTED = 0b111


# STE.S1Fmt
S1FMT_LINEAR = 0
S1FMT_4K_L2 = 1
S1FMT_64K_L2 = 2
# STE.S1DSS
S1DSS_TERMINATE = 0
S1DSS_BYPASS = 1
S1DSS_SSID0 = 2
# STE.EATS
EATS_ABT = 0
EATS_TRANS = 1
EATS_S1CHK = 2
EATS_DPT = 3


@dataclass(frozen=True, slots=True)
class Stage1Table:
    """Where the CDs are: the STE's stage-1 fields, effective values."""

    context_ptr: int
    """S1ContextPtr as a byte address (IPA when stage 2 translates)."""
    fmt: int
    cdmax: int
    dss: int


@dataclass(frozen=True, slots=True)
class Ste:
    """A valid STE, decoded to what translation needs."""

    config: Config
    vmid: int
    """The VMID tagging this stream's translations (S2VMID when stage 2 is implemented)."""
    s1: Stage1Table | None
    s2: ArmS2Config | None
    s2r: bool
    eats: int
    ppar: bool
    mev: bool


def decode_ste(raw: bytes, caps: Caps) -> Ste | str:
    """An STE's 64 bytes → ``Ste``, or why it is C_BAD_STE."""
    v = STE.decode(raw)
    if not v["V"]:
        return "V = 0"
    cfg = v["Config"]
    if not cfg & 0b100:
        return Ste(Config.ABORT, 0, None, None, False, EATS_ABT, False, False)
    s1_on, s2_on = bool(cfg & 1), bool(cfg & 2)
    if s1_on and not caps.s1p:
        return "Config enables stage 1, which is not implemented"
    if s2_on and not caps.s2p:
        return "Config enables stage 2, which is not implemented"
    vmid = v["S2VMID"] if caps.s2p else 0
    if vmid >> 8 and not caps.vmid16 and (s1_on or s2_on):
        return "S2VMID[15:8] set without 16-bit VMIDs"
    s1 = None
    if s1_on:
        problem = _check_s1(v, caps)
        if isinstance(problem, str):
            return problem
        s1 = problem
    s2 = None
    if s2_on:
        got = _decode_s2(v, caps)
        if isinstance(got, str):
            return got
        s2 = got
    eats = v["EATS"] if caps.ats and cfg & 0b011 else EATS_ABT
    if eats == EATS_S1CHK and (cfg != Config.NESTED or v["S2S"] or caps.ns1ats):
        return "EATS = 0b10 (split-stage ATS) is not available"
    if eats == EATS_DPT and not caps.dpt:
        eats = EATS_ABT  # reserved without DPT: behaves as 0b00
    return Ste(Config(cfg), vmid, s1, s2, bool(v["S2R"]) and s2_on, eats, bool(v["PPAR"]),
               bool(v["MEV"]))


def _check_s1(v: dict[str, int], caps: Caps) -> Stage1Table | str:
    if v["S1STALLD"] and caps.stall_model != 0:
        return "S1STALLD = 1 while the stall model is not configurable"
    cdmax = v["S1CDMax"] if caps.ssidsize else 0
    if cdmax > caps.ssidsize:
        return f"S1CDMax {cdmax} above SSIDSIZE {caps.ssidsize}"
    fmt = v["S1Fmt"] if cdmax else S1FMT_LINEAR
    if fmt == 3:
        fmt = S1FMT_LINEAR  # reserved, behaves as 0b00
    if fmt != S1FMT_LINEAR and not caps.cd2l:
        return "S1Fmt selects a 2-level CD table without IDR0.CD2L"
    dss = v["S1DSS"] if cdmax else S1DSS_TERMINATE
    if dss == 3:
        dss = S1DSS_TERMINATE  # reserved, behaves as 0b00
    return Stage1Table(v["S1ContextPtr"] << 6, fmt, cdmax, dss)


def _decode_s2(v: dict[str, int], caps: Caps) -> ArmS2Config | str:
    if not v["S2AA64"]:
        return "S2AA64 = 0: VMSAv8-32 LPAE tables are not implemented"
    if v["S2ENDI"]:
        return "S2ENDI = 1: big-endian tables are not implemented"
    granule = TG0_GRANULES.get(v["S2TG"])
    if granule is None or not caps.granule_ok(granule):
        return f"S2TG {v['S2TG']} is reserved or not implemented"
    tsz = v["S2T0SZ"]
    if not max(TSZ_MIN, 64 - caps.ias) <= tsz <= TSZ_MAX:
        return f"S2T0SZ {tsz} out of range"
    if v["S2HA"] and caps.httu == 0:
        return "S2HA = 1 without HTTU"
    if v["S2HD"] and caps.httu < 2:
        return "S2HD = 1 without dirty-state HTTU"
    if v["S2S"] and caps.stall_model == 1:
        return "S2S = 1 while stalls are not supported"
    ps_bits = caps.eff_ps(v["S2PS"])
    ttb = v["S2TTB"] << 4
    if ttb >> ps_bits:
        return f"S2TTB {ttb:#x} beyond the {ps_bits}-bit S2PS"
    if ttb >> 48 and GRANULE_SHIFTS[granule] < 16:
        return f"S2TTB {ttb:#x} beyond 48 bits with a {granule // 1024} KB granule"
    walker = ArmS2Config.decode(ttb, tsz, v["S2SL0"], v["S2TG"], IDR5_OAS_BITS[ps_bits],
                                affd=bool(v["S2AFFD"]))
    if isinstance(walker, BadConfig):
        return walker.reason
    return walker


# -- the stream table ------------------------------------------------------------------------

SPLITS = (6, 8, 10)


@dataclass(frozen=True, slots=True)
class StreamFault:
    """A lookup that reached no STE: the event to record and, for F_STE_FETCH, the
    address that could not be read."""

    event: EventType
    fetch_addr: int = 0
    reason: str = ""


def locate_ste(mem: MemoryPort, base: int, log2size: int, fmt: int, split: int,
               sid: int) -> tuple[int, bytes] | StreamFault:
    """(address, 64 bytes) of the STE for ``sid``, or why there is none.

    ``base`` is STRTAB_BASE.ADDR as a byte address; the other arguments are the
    STRTAB_BASE_CFG fields as written."""
    if sid >> log2size:
        return StreamFault(EventType.C_BAD_STREAMID, reason="StreamID beyond LOG2SIZE")
    if fmt != 1:
        addr = (base & ~((STE_SIZE << log2size) - 1)) + sid * STE_SIZE
    else:
        if split not in SPLITS:
            split = 6  # reserved values behave as 6
        l1_bits = max(log2size - split, 0)
        l1_base = base & ~(max(64, L1STD_SIZE << l1_bits) - 1)
        l1_addr = l1_base + (sid >> split) * L1STD_SIZE
        raw = mem.read(l1_addr, L1STD_SIZE)
        if raw is None:
            return StreamFault(EventType.F_STE_FETCH, l1_addr, "L1STD not readable")
        d = L1STD.decode(raw)
        span = d["Span"]
        if span == 0 or span > SPAN_MAX or span > split + 1:
            return StreamFault(EventType.C_BAD_STREAMID, reason=f"L1STD.Span {span}")
        index = sid & ((1 << split) - 1)
        if index >> (span - 1):
            return StreamFault(EventType.C_BAD_STREAMID,
                               reason=f"StreamID beyond the 2^{span - 1} STEs of its L2")
        l2_base = (d["L2Ptr"] << 6) & ~((STE_SIZE << (span - 1)) - 1)
        addr = l2_base + index * STE_SIZE
    raw = mem.read(addr, STE_SIZE)
    if raw is None:
        return StreamFault(EventType.F_STE_FETCH, addr, "STE not readable")
    return addr, raw
