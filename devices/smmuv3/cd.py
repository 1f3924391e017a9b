"""Context descriptors: L1CD, CD and the CD table lookup (Arm IHI 0070 §5.3, §5.4, §5.2 S1Fmt).

CD table (STE.S1Fmt, §5.2): with S1CDMax = 0 the STE points at one CD.  Otherwise
* linear (S1Fmt 0b00, and the reserved 0b11): CD at ptr + 64·SSID, the table aligned to its
  size (S1ContextPtr bits below it are treated as zero — one of the CONSTRAINED
  UNPREDICTABLE choices §5.2 offers);
* 2-level with 4 KB leaves (0b01): L1CD at ptr + 8·SSID[S1CDMax-1:6], leaf indexed by
  SSID[5:0]; with 64 KB leaves (0b10): SSID[S1CDMax-1:10] and SSID[9:0].  The L1 table is
  aligned to the larger of its size and 64 B; L1CD.L2Ptr to 4 KB (64 KB leaves: 64 KB, as
  L2Ptr[15:12] are RES0).  L1CD.V = 0, or an L2Ptr beyond the IAS/OAS, is C_BAD_SUBSTREAMID
  (§5.3.1, §7.3.9).
Every pointer is an IPA when stage 2 translates (the caller's ``fetch`` does that).

CD validity (§5.4, §5.5): V = 0 and every ILLEGAL value for this SMMU's features give
C_BAD_CD: AA64 = 0 (no VMSAv8-32), ENDI = 1 (little-endian only) unless both halves are
disabled, HA/HD without HTTU, S = 1 (no stall model), A = 0 (TERM_MODEL = 1), ASID[15:8] with
8-bit ASIDs, and for each enabled half: a reserved or unimplemented granule, TxSZ outside
[16, 39], a TTB beyond the effective IPS or, with a granule under 64 KB, beyond 48 bits (a TTB
out of range is C_BAD_CD, not an address-size fault: §7.3.14).  IPS values above the OAS,
reserved ones included, behave as the OAS (§5.4 IPS).

Controls the generic Arm walker does not know are applied by ``CdTable``: AFFD (an AF = 0
leaf counts as AF = 1), PAN (privileged data access to a page unprivileged code may access
faults) and WXN (writable pages are not executable).  UWXN is IGNORED for VMSAv8-64 (§5.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from devices.model import MemoryPort
from devices.pagetable.arm import (
    AF,
    GRANULE_SHIFTS,
    TG0_GRANULES,
    TG1_GRANULES,
    TSZ_MAX,
    TSZ_MIN,
    ArmS1Config,
    ArmS1Table,
)
from devices.pagetable.walker import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    PERM_MASK,
    Fault,
    Translation,
    permission_fault,
)
from devices.smmuv3.regs import IDR5_OAS_BITS

from .caps import Caps
from .layout import Layout, dword, f, rsvd
from .ste import S1FMT_4K_L2, S1FMT_64K_L2, Stage1Table

CD_SIZE = 64
L1CD_SIZE = 8

L1CD = Layout("L1CD", dword(rsvd(8), f("L2Ptr", 44), rsvd(11), f("V", 1)))

CD = Layout(
    "CD",
    dword(f("ASID", 16), f("ASET", 1), f("A", 1), f("R", 1), f("S", 1), f("HA", 1),
          f("HD", 1), f("AA64", 1), f("PAN", 1), f("TBI1", 1), f("TBI0", 1), f("UWXN", 1),
          f("WXN", 1), f("AFFD", 1), f("IPS", 3), f("V", 1), f("EPD1", 1), f("SH1", 2),
          f("OR1", 2), f("IR1", 2), f("TG1", 2), f("T1SZ", 6), f("ENDI", 1), f("EPD0", 1),
          f("SH0", 2), f("OR0", 2), f("IR0", 2), f("TG0", 2), f("T0SZ", 6)),
    dword(f("HWU062", 1), f("HWU061", 1), f("HWU060", 1), f("HWU059", 1), f("EPAN", 1),
          f("PnCH", 1), rsvd(2), f("TTB0", 52), f("HAFT", 1), f("E0PD0", 1), f("HAD0", 1),
          f("NSCFG0", 1)),
    dword(f("HWU162", 1), f("HWU161", 1), f("HWU160", 1), f("HWU159", 1), f("PIE", 1),
          f("DS", 1), rsvd(2), f("TTB1", 52), f("AIE", 1), f("E0PD1", 1), f("HAD1", 1),
          f("NSCFG1", 1)),
    dword(f("MAIR1", 32), f("MAIR0", 32)),
    dword(f("AMAIR1", 32), f("AMAIR0", 32)),
    dword(rsvd(8), f("PMG", 8), f("PARTID", 16), f("IMPLEMENTATION_DEFINED", 32)),
    dword(rsvd(64)),
    dword(rsvd(64)),
)

_DATA = ACCESS_R | ACCESS_W


class CdTable(ArmS1Table):
    """One TTB half of a CD, with AFFD, PAN and WXN applied at the leaf."""

    __slots__ = ("affd", "pan", "wxn")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.affd = False
        self.pan = False
        self.wxn = False

    def finish(
        self, mem: MemoryPort, ia: int, pte: int, pte_addr: int, pa: int, h: int,
        acc_and: int, acc_or: int, access: int,
    ) -> Translation | Fault:
        if self.affd and not self.ha:
            pte |= AF  # "the TTD.AF bit is considered to be always 1" (§5.4 AFFD)
        if not (self.pan or self.wxn):
            return super().finish(mem, ia, pte, pte_addr, pa, h, acc_and, acc_or, access)
        # Let the generic rule compute both privileges' permissions, then narrow them.
        t = super().finish(mem, ia, pte, pte_addr, pa, h, acc_and, acc_or,
                           access & ACCESS_PRIV)
        if isinstance(t, Fault):
            return t
        priv, user = t.priv_perm, t.user_perm
        if self.wxn:
            if priv & ACCESS_W:
                priv &= ~ACCESS_X
            if user & ACCESS_W:
                user &= ~ACCESS_X
        if self.pan and user & _DATA:
            priv &= ~_DATA
        perm = priv if access & ACCESS_PRIV else user
        if access & PERM_MASK & ~perm:
            return permission_fault(self, h, pte_addr, pte)
        return t._replace(perm=perm, priv_perm=priv, user_perm=user)


@dataclass(frozen=True, slots=True)
class Cd:
    """A valid CD, decoded to what translation needs."""

    asid: int
    aset: bool
    record: bool
    """CD.R: record the translation-related faults of stage 1."""
    walker: ArmS1Config


def decode_cd(raw: bytes, caps: Caps) -> Cd | str:
    """A CD's 64 bytes → ``Cd``, or why it is C_BAD_CD."""
    v = CD.decode(raw)
    if not v["V"]:
        return "V = 0"
    if not v["AA64"]:
        return "AA64 = 0: VMSAv8-32 LPAE tables are not implemented"
    epd0, epd1 = v["EPD0"], v["EPD1"]
    if v["ENDI"] and not (epd0 and epd1) and caps.ttendian == 2:
        return "ENDI = 1: big-endian tables are not implemented"
    if v["HA"] and caps.httu == 0:
        return "HA = 1 without HTTU"
    if v["HD"] and caps.httu < 2:
        return "HD = 1 without dirty-state HTTU"
    if v["S"] and caps.stall_model == 1:
        return "S = 1 while stalls are not supported"
    if not v["A"] and caps.term_model:
        return "A = 0 while only abort termination is implemented"
    if v["ASID"] >> 8 and not caps.asid16:
        return "ASID[15:8] set without 16-bit ASIDs"
    ips_bits = caps.eff_ps(v["IPS"])
    ips = IDR5_OAS_BITS[ips_bits]
    halves: list[CdTable | None] = []
    for upper, (epd, tg, tsz, ttb, had) in enumerate((
        (epd0, v["TG0"], v["T0SZ"], v["TTB0"] << 4, v["HAD0"]),
        (epd1, v["TG1"], v["T1SZ"], v["TTB1"] << 4, v["HAD1"]),
    )):
        if epd:
            halves.append(None)
            continue
        granule = (TG1_GRANULES if upper else TG0_GRANULES).get(tg)
        if granule is None or not caps.granule_ok(granule):
            return f"TG{upper} {tg} is reserved or not implemented"
        if not TSZ_MIN <= tsz <= TSZ_MAX:
            return f"T{upper}SZ {tsz} out of range"
        if ttb >> ips_bits:
            return f"TTB{upper} {ttb:#x} beyond the {ips_bits}-bit IPS"
        if ttb >> 48 and GRANULE_SHIFTS[granule] < 16:
            return f"TTB{upper} {ttb:#x} beyond 48 bits with a {granule // 1024} KB granule"
        table = CdTable.decode(ttb, tg, tsz, ips, upper=bool(upper),
                               had=bool(had) and caps.had)
        assert isinstance(table, CdTable)  # every value decode rejects was checked above
        table.affd = bool(v["AFFD"])
        table.pan = bool(v["PAN"])
        table.wxn = bool(v["WXN"])
        halves.append(table)
    walker = ArmS1Config(halves[0], halves[1], tbi0=bool(v["TBI0"]), tbi1=bool(v["TBI1"]))
    return Cd(v["ASID"], bool(v["ASET"]), bool(v["R"]), walker)


# -- the CD table ----------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BadSubstream:
    """A CD table lookup that ends in C_BAD_SUBSTREAMID."""

    reason: str


def locate_cd(s1: Stage1Table, index: int, limit_bits: int,
              fetch: Callable[[int, int], bytes | T]) -> tuple[int, bytes] | BadSubstream | T:
    """(address, 64 bytes) of CD ``index`` of the table ``s1`` describes.

    ``fetch(address, length)`` reads the table (through stage 2 when it translates) and
    returns the bytes or the caller's own failure value, passed back as is.
    ``limit_bits`` is the IAS (stage 2 on) or OAS: an L2Ptr beyond it is C_BAD_SUBSTREAMID.
    """
    base = s1.context_ptr
    cdmax = s1.cdmax
    if s1.fmt not in (S1FMT_4K_L2, S1FMT_64K_L2):
        addr = (base & ~((CD_SIZE << cdmax) - 1)) + index * CD_SIZE
    else:
        split = 6 if s1.fmt == S1FMT_4K_L2 else 10
        l1_bits = max(cdmax - split, 0)
        l1_base = base & ~(max(64, L1CD_SIZE << l1_bits) - 1)
        l1_addr = l1_base + (index >> split) * L1CD_SIZE
        raw = fetch(l1_addr, L1CD_SIZE)
        if not isinstance(raw, bytes):
            return raw
        d = L1CD.decode(raw)
        if not d["V"]:
            return BadSubstream(f"L1CD at {l1_addr:#x} has V = 0")
        l2 = (d["L2Ptr"] << 12) & ~((CD_SIZE << split) - 1)
        if l2 >> limit_bits:
            return BadSubstream(f"L1CD.L2Ptr {l2:#x} out of range")
        addr = l2 + (index & ((1 << split) - 1)) * CD_SIZE
    raw = fetch(addr, CD_SIZE)
    if not isinstance(raw, bytes):
        return raw
    return addr, raw
