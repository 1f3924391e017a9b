"""Invalidation descriptors of the queued-invalidation interface.

VT-d rev 5.10 §6.5.2 (queued invalidation: descriptor formats §6.5.2.1-§6.5.2.11, the
invalidation wait descriptor §6.5.2.8, the page group response §7.7.1) and §6.5.2.10 on the
invalid-descriptor conditions reported in IQERCD.IQEI.  Digest: reference/vtd.md §2a-§2c.

A descriptor is 128 bits (IQA.DW = 0) or 256 bits (IQA.DW = 1); its type is
``qw0[3:0] | qw0[11:9] << 4``.  The 128-bit types sit in the low half of a 256-bit slot with
the high half reserved.  The PASID-based types (6-9) exist only in 256-bit form.

``check`` answers, for one fetched descriptor, either the decoded record or the IQEI code of
why it is invalid (type unknown or unsupported by the unit's capabilities: 3; reserved bits or
reserved field values: 4).  It never raises for anything a guest can write.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import construct as c

from .layout import Layout, qword, reserved_word
from .regs import IQEI_RESERVED, IQEI_TYPE, MAMV


class DescType(enum.IntEnum):
    CONTEXT_CACHE = 0x1
    IOTLB = 0x2
    DEVICE_TLB = 0x3
    IEC = 0x4
    WAIT = 0x5
    PASID_IOTLB = 0x6
    PASID_CACHE = 0x7
    PASID_DEVICE_TLB = 0x8
    PAGE_GROUP_RESPONSE = 0x9


WIDE_ONLY = frozenset({DescType.PASID_IOTLB, DescType.PASID_CACHE,
                       DescType.PASID_DEVICE_TLB, DescType.PAGE_GROUP_RESPONSE})
"""Types that exist only as 256-bit descriptors."""

# Granularities (G) per descriptor type.
CC_G_GLOBAL, CC_G_DOMAIN, CC_G_DEVICE = 0b01, 0b10, 0b11
IOTLB_G_GLOBAL, IOTLB_G_DOMAIN, IOTLB_G_PAGE = 0b01, 0b10, 0b11
PIOTLB_G_PASID, PIOTLB_G_PAGE = 0b10, 0b11
PC_G_DOMAIN, PC_G_PASID, PC_G_GLOBAL = 0b00, 0b01, 0b11

# Page group response codes (§7.7.1, PCIe PRG response).
RC_SUCCESS = 0x0
RC_INVALID_REQUEST = 0x1
RC_FAILURE = 0xF


def desc_type(qw0: int) -> int:
    return (qw0 & 0xF) | ((qw0 >> 9) & 0x7) << 4


def _type_bits() -> tuple[Any, Any]:
    return "TYPE_HI" / c.BitsInteger(3), "TYPE_LO" / c.BitsInteger(4)


def _low(fields_63_12: tuple[Any, ...], fields_8_4: tuple[Any, ...]) -> Any:
    hi, lo = _type_bits()
    return qword(*fields_63_12, hi, *fields_8_4, lo)


class ContextCacheInv(NamedTuple):
    """§6.5.2.1 (cc_inv_dsc)."""

    FM: int
    SID: int
    DID: int
    G: int
    TYPE_HI: int
    TYPE_LO: int


CONTEXT_CACHE_INV = Layout("context-cache invalidate", [
    _low((c.Padding(14), "FM" / c.BitsInteger(2), "SID" / c.BitsInteger(16),
          "DID" / c.BitsInteger(16), c.Padding(4)),
         (c.Padding(3), "G" / c.BitsInteger(2))),
    reserved_word(),
], ContextCacheInv)


class IotlbInv(NamedTuple):
    """§6.5.2.2 (iotlb_inv_dsc)."""

    DID: int
    DR: int
    DW: int
    G: int
    TYPE_HI: int
    TYPE_LO: int
    ADDR: int
    IH: int
    AM: int


IOTLB_INV = Layout("IOTLB invalidate", [
    _low((c.Padding(32), "DID" / c.BitsInteger(16), c.Padding(4)),
         (c.Padding(1), "DR" / c.Flag, "DW" / c.Flag, "G" / c.BitsInteger(2))),
    qword("ADDR" / c.BitsInteger(52), c.Padding(5), "IH" / c.Flag, "AM" / c.BitsInteger(6)),
], IotlbInv)


class DeviceTlbInv(NamedTuple):
    """§6.5.2.5 (dev_tlb_inv_dsc)."""

    PFSID_HI: int
    SID: int
    MIP: int
    PFSID_LO: int
    TYPE_HI: int
    TYPE_LO: int
    ADDR: int
    S: int


DEVICE_TLB_INV = Layout("device-TLB invalidate", [
    _low(("PFSID_HI" / c.BitsInteger(12), c.Padding(4), "SID" / c.BitsInteger(16),
          c.Padding(11), "MIP" / c.BitsInteger(5), "PFSID_LO" / c.BitsInteger(4)),
         (c.Padding(5),)),
    qword("ADDR" / c.BitsInteger(52), c.Padding(11), "S" / c.Flag),
], DeviceTlbInv)


class IecInv(NamedTuple):
    """§6.5.2.7 (iec_inv_dsc)."""

    IIDX: int
    IM: int
    G: int
    TYPE_HI: int
    TYPE_LO: int


IEC_INV = Layout("interrupt-entry-cache invalidate", [
    _low((c.Padding(16), "IIDX" / c.BitsInteger(16), "IM" / c.BitsInteger(5),
          c.Padding(15)),
         (c.Padding(4), "G" / c.Flag)),
    reserved_word(),
], IecInv)


class WaitDesc(NamedTuple):
    """§6.5.2.8 (inv_wait_dsc)."""

    STDATA: int
    PD: int
    FN: int
    SW: int
    IF: int
    TYPE_HI: int
    TYPE_LO: int
    STADDR: int


WAIT_DESC = Layout("invalidation wait", [
    _low(("STDATA" / c.BitsInteger(32), c.Padding(20)),
         (c.Padding(1), "PD" / c.Flag, "FN" / c.Flag, "SW" / c.Flag, "IF" / c.Flag)),
    qword("STADDR" / c.BitsInteger(62), c.Padding(2)),
], WaitDesc)


class PasidIotlbInv(NamedTuple):
    """§6.5.2.4 (p_iotlb_inv_dsc)."""

    PASID: int
    DID: int
    G: int
    TYPE_HI: int
    TYPE_LO: int
    ADDR: int
    IH: int
    AM: int


def _pasid_did_g_low() -> Any:
    """The low word both PASID-based invalidations share: PASID, DID and granularity."""
    return _low((c.Padding(12), "PASID" / c.BitsInteger(20), "DID" / c.BitsInteger(16),
                 c.Padding(4)),
                (c.Padding(3), "G" / c.BitsInteger(2)))


PASID_IOTLB_INV = Layout("PASID-based IOTLB invalidate", [
    _pasid_did_g_low(),
    qword("ADDR" / c.BitsInteger(52), c.Padding(5), "IH" / c.Flag, "AM" / c.BitsInteger(6)),
    reserved_word(),
    reserved_word(),
], PasidIotlbInv)


class PasidCacheInv(NamedTuple):
    """§6.5.2.3 (pc_inv_dsc)."""

    PASID: int
    DID: int
    G: int
    TYPE_HI: int
    TYPE_LO: int


PASID_CACHE_INV = Layout("PASID-cache invalidate", [
    _pasid_did_g_low(),
    reserved_word(),
    reserved_word(),
    reserved_word(),
], PasidCacheInv)


class PasidDeviceTlbInv(NamedTuple):
    """§6.5.2.6 (p_dev_tlb_inv_dsc)."""

    PFSID_HI: int
    PASID: int
    SID: int
    PFSID_LO: int
    TYPE_HI: int
    MIP: int
    TYPE_LO: int
    ADDR: int
    S: int
    G: int


PASID_DEVICE_TLB_INV = Layout("PASID-based device-TLB invalidate", [
    _low(("PFSID_HI" / c.BitsInteger(12), "PASID" / c.BitsInteger(20),
          "SID" / c.BitsInteger(16), "PFSID_LO" / c.BitsInteger(4)),
         ("MIP" / c.BitsInteger(5),)),
    qword("ADDR" / c.BitsInteger(52), "S" / c.Flag, c.Padding(10), "G" / c.Flag),
    reserved_word(),
    reserved_word(),
], PasidDeviceTlbInv)


class PageGroupResponse(NamedTuple):
    """§7.7.1 (page_grp_resp_dsc): the answer to a page request group."""

    PASID: int
    RID: int
    RC: int
    PDP: int
    PP: int
    TYPE_HI: int
    TYPE_LO: int
    PRGI: int
    LPIG: int
    PRIV0: int
    PRIV1: int


def _full_word(name: str) -> Any:
    return qword(name / c.BitsInteger(64))


PAGE_GROUP_RESPONSE = Layout("page group response", [
    _low((c.Padding(12), "PASID" / c.BitsInteger(20), "RID" / c.BitsInteger(16),
          "RC" / c.BitsInteger(4)),
         (c.Padding(3), "PDP" / c.Flag, "PP" / c.Flag)),
    qword(c.Padding(52), "PRGI" / c.BitsInteger(9), "LPIG" / c.Flag, c.Padding(2)),
    _full_word("PRIV0"),
    _full_word("PRIV1"),
], PageGroupResponse)


LAYOUTS: dict[DescType, Layout[Any]] = {
    DescType.CONTEXT_CACHE: CONTEXT_CACHE_INV,
    DescType.IOTLB: IOTLB_INV,
    DescType.DEVICE_TLB: DEVICE_TLB_INV,
    DescType.IEC: IEC_INV,
    DescType.WAIT: WAIT_DESC,
    DescType.PASID_IOTLB: PASID_IOTLB_INV,
    DescType.PASID_CACHE: PASID_CACHE_INV,
    DescType.PASID_DEVICE_TLB: PASID_DEVICE_TLB_INV,
    DescType.PAGE_GROUP_RESPONSE: PAGE_GROUP_RESPONSE,
}


class Support(NamedTuple):
    """What the unit's capabilities allow in its invalidation queue."""

    device_tlb: bool
    """ECAP.DT: types 3 and 8."""
    iec: bool
    """ECAP.IR: type 4."""
    scalable: bool
    """ECAP.SMTS: types 6-8."""
    page_requests: bool
    """ECAP.PRS: type 9."""
    drain: bool
    """ECAP.PDS: the wait descriptor's PD."""
    dit: bool
    """ECAP.DIT: PFSID fields of device-TLB descriptors."""
    mhmv: int
    """ECAP.MHMV: the largest IEC index mask."""


def _supported(t: DescType, s: Support) -> bool:
    if t in (DescType.DEVICE_TLB, DescType.PASID_DEVICE_TLB) and not s.device_tlb:
        return False
    if t is DescType.IEC and not s.iec:
        return False
    if t in (DescType.PASID_IOTLB, DescType.PASID_CACHE, DescType.PASID_DEVICE_TLB) \
            and not s.scalable:
        return False
    return not (t is DescType.PAGE_GROUP_RESPONSE and not s.page_requests)


def check(words: tuple[int, ...], wide: bool, s: Support) -> tuple[DescType, Any] | int:
    """Decode one descriptor (2 or 4 words); an IQEI code if it is invalid."""
    try:
        t = DescType(desc_type(words[0]))
    except ValueError:
        return IQEI_TYPE
    if t in WIDE_ONLY and not wide:
        return IQEI_TYPE
    if not _supported(t, s):
        return IQEI_TYPE
    layout = LAYOUTS[t]
    n = layout.size // 8
    if layout.reserved(words[:n]) or any(words[n:]):
        return IQEI_RESERVED
    d = layout.from_words(words[:n])
    if _bad_values(t, d, s):
        return IQEI_RESERVED
    return t, d


def _bad_values(t: DescType, d: Any, s: Support) -> bool:
    """Reserved *values* of defined fields (granularity 0, masks beyond capabilities)."""
    if t is DescType.CONTEXT_CACHE:
        return bool(d.G == 0)
    if t is DescType.IOTLB:
        return bool(d.G == 0 or (d.G == IOTLB_G_PAGE and d.AM > MAMV))
    if t in (DescType.DEVICE_TLB, DescType.PASID_DEVICE_TLB):
        return not s.dit and bool(d.PFSID_HI or d.PFSID_LO)
    if t is DescType.IEC:
        return bool(s.mhmv < d.IM)
    if t is DescType.WAIT:
        return bool(d.PD and not s.drain)
    if t is DescType.PASID_IOTLB:
        return bool(d.G < PIOTLB_G_PASID or (d.G == PIOTLB_G_PAGE and d.AM > MAMV))
    if t is DescType.PASID_CACHE:
        return bool(d.G == 0b10)
    return False
