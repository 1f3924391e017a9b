"""Command queue entries (Arm IHI 0070 chapter 4): opcodes, layouts, decode.

Each command is 16 bytes, opcode in dw0[7:0] (§4.1.1).  Every command this model accepts is
declared below with its fields named as the spec names them; every other bit is RES0 and,
as §4.1.5 permits, a RES0 bit set makes the command malformed (CERROR_ILL).  Opcodes that
are reserved, and commands of features this SMMU does not implement (§4.1.3 "a valid opcode
used with invalid parameters"), are CERROR_ILL too:

* CMD_CFGI_VMS_PIDM (IDR3.MPAM = 0, §4.3.5);
* CMD_TLBI_EL3_* (only valid on a Secure queue, §4.4.2.5); CMD_TLBI_EL2_* (IDR0.HYP = 0,
  §4.4.2.7); CMD_TLBI_S_* and CMD_TLBI_SNH_ALL (Secure queue only); CMD_DPTI_* (IDR3.DPT = 0);
* CMD_RESUME and CMD_STALL_TERM (IDR0.STALL_MODEL = 0b01, §4.7.1-4.7.2);
* CMD_TLBI_NH_* and CMD_CFGI_CD* without stage 1, CMD_TLBI_S2_IPA and CMD_TLBI_S12_VMALL
  without stage 2 (§4.4.2, §4.4.3, §4.3.3) -- checked by ``check`` against the ID registers.

Field checks that are ILLEGAL by value (``check``): SSec = 1 on the Non-secure queue
(§4.1.6), CMD_SYNC CS = 0b11 (§4.7.3), CMD_PRI_RESP Resp = 0b11 (§4.5.2), a range TLBI
with TG != 0 and NUM = SCALE = TTL = 0, or TG = 16 KB with TTL = 0b01 (§4.4.1.1),
CMD_ATC_INV Size > 52 (§4.5.1 permits CERROR_ILL there; we take it).

Field layouts follow the spec's figures; where Linux ``arm-smmu-v3.h`` names the same bits
(``CMDQ_TLBI_0_NUM``, ``CMDQ_SYNC_0_CS`` ...) the positions agree.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .layout import Layout, dword, f, rsvd

CMD_SIZE = 16


class Op(enum.IntEnum):
    """Command opcodes (§4.1.1)."""

    PREFETCH_CONFIG = 0x01
    PREFETCH_ADDR = 0x02
    CFGI_STE = 0x03
    CFGI_STE_RANGE = 0x04  # CMD_CFGI_ALL is this opcode with Range = 31
    CFGI_CD = 0x05
    CFGI_CD_ALL = 0x06
    CFGI_VMS_PIDM = 0x07
    TLBI_NH_ALL = 0x10
    TLBI_NH_ASID = 0x11
    TLBI_NH_VA = 0x12
    TLBI_NH_VAA = 0x13
    TLBI_EL3_ALL = 0x18
    TLBI_EL3_VA = 0x1A
    TLBI_EL2_ALL = 0x20
    TLBI_EL2_ASID = 0x21
    TLBI_EL2_VA = 0x22
    TLBI_EL2_VAA = 0x23
    TLBI_S12_VMALL = 0x28
    TLBI_S2_IPA = 0x2A
    TLBI_NSNH_ALL = 0x30
    ATC_INV = 0x40
    PRI_RESP = 0x41
    RESUME = 0x44
    STALL_TERM = 0x45
    SYNC = 0x46
    TLBI_S_EL2_ALL = 0x50
    TLBI_S_EL2_ASID = 0x51
    TLBI_S_EL2_VA = 0x52
    TLBI_S_EL2_VAA = 0x53
    TLBI_S_S12_VMALL = 0x58
    TLBI_S_S2_IPA = 0x5A
    TLBI_SNH_ALL = 0x60
    DPTI_ALL = 0x70
    DPTI_PA = 0x73


CFGI_ALL_RANGE = 31
"""CMD_CFGI_STE_RANGE with this Range is CMD_CFGI_ALL (§4.3.6)."""

# CMD_SYNC ComplSignal (§4.7.3)
CS_SIG_NONE = 0
CS_SIG_IRQ = 1
CS_SIG_SEV = 2

# CMD_PRI_RESP Resp (§4.5.2)
PRI_RESP_FAILURE = 0   # ResponseFailure: permanent error
PRI_RESP_INVALID = 1   # InvalidRequest
PRI_RESP_SUCCESS = 2

# TLBI TG (§4.4.1.1)
TG_ANY = 0
TG_4K = 1
TG_16K = 2
TG_64K = 3

ATC_INV_SIZE_ALL = 52
"""CMD_ATC_INV Size giving a 2^64-byte span (§4.5.1)."""


def _opcode_low() -> tuple[object, ...]:
    return (f("Opcode", 8),)


# dw0 of the commands naming a stream: StreamID[63:32], SubstreamID[31:12], SSV[11], SSec[10]
def _stream_dw0(*, ssid: bool, ssv: bool) -> object:
    return dword(
        f("StreamID", 32),
        f("SubstreamID", 20) if ssid else rsvd(20),
        f("SSV", 1) if ssv else rsvd(1),
        f("SSec", 1), rsvd(2), *_opcode_low(),
    )


def _tlbi_dw0(*, asid: bool, vmid: bool, ranged: bool) -> object:
    return dword(
        f("ASID", 16) if asid else rsvd(16),
        f("VMID", 16) if vmid else rsvd(16),
        rsvd(7),
        f("SCALE", 5) if ranged else rsvd(5),  # [24:20]; bit 25 needs IDR5.DS
        rsvd(3),
        f("NUM", 5) if ranged else rsvd(5),    # [16:12]
        rsvd(4), *_opcode_low(),
    )


def _tlbi_addr_dw1(addr_bits: int) -> object:
    """dw1 of the address-based TLBIs: Address[63:12] (VA) or [55:12] (IPA), TG[11:10],
    TTL[9:8], Leaf[0]; TTL128[7] needs IDR5.D128 and is RES0 here."""
    top = 64 - 12 - addr_bits
    return dword(
        *((rsvd(top),) if top else ()), f("Address", addr_bits),
        f("TG", 2), f("TTL", 2), rsvd(7), f("Leaf", 1),
    )


_EMPTY = dword(rsvd(64))
_OPCODE_ONLY = dword(rsvd(56), *_opcode_low())

LAYOUTS: dict[int, Layout] = {
    Op.PREFETCH_CONFIG: Layout("CMD_PREFETCH_CONFIG", _stream_dw0(ssid=True, ssv=True), _EMPTY),
    Op.PREFETCH_ADDR: Layout(
        "CMD_PREFETCH_ADDR", _stream_dw0(ssid=True, ssv=True),
        dword(f("Address", 52), rsvd(2), f("Stride", 5), f("Size", 5)),
    ),
    Op.CFGI_STE: Layout("CMD_CFGI_STE", _stream_dw0(ssid=False, ssv=False),
                        dword(rsvd(63), f("Leaf", 1))),
    Op.CFGI_STE_RANGE: Layout("CMD_CFGI_STE_RANGE", _stream_dw0(ssid=False, ssv=False),
                              dword(rsvd(59), f("Range", 5))),
    Op.CFGI_CD: Layout("CMD_CFGI_CD", _stream_dw0(ssid=True, ssv=False),
                       dword(rsvd(63), f("Leaf", 1))),
    Op.CFGI_CD_ALL: Layout("CMD_CFGI_CD_ALL", _stream_dw0(ssid=False, ssv=False), _EMPTY),
    Op.TLBI_NH_ALL: Layout("CMD_TLBI_NH_ALL", _tlbi_dw0(asid=False, vmid=True, ranged=False),
                           _EMPTY),
    Op.TLBI_NH_ASID: Layout("CMD_TLBI_NH_ASID",
                            _tlbi_dw0(asid=True, vmid=True, ranged=False), _EMPTY),
    Op.TLBI_NH_VA: Layout("CMD_TLBI_NH_VA", _tlbi_dw0(asid=True, vmid=True, ranged=True),
                          _tlbi_addr_dw1(52)),
    Op.TLBI_NH_VAA: Layout("CMD_TLBI_NH_VAA", _tlbi_dw0(asid=False, vmid=True, ranged=True),
                           _tlbi_addr_dw1(52)),
    Op.TLBI_S12_VMALL: Layout("CMD_TLBI_S12_VMALL",
                              _tlbi_dw0(asid=False, vmid=True, ranged=False), _EMPTY),
    Op.TLBI_S2_IPA: Layout("CMD_TLBI_S2_IPA", _tlbi_dw0(asid=False, vmid=True, ranged=True),
                           _tlbi_addr_dw1(44)),
    Op.TLBI_NSNH_ALL: Layout("CMD_TLBI_NSNH_ALL", _OPCODE_ONLY, _EMPTY),
    Op.ATC_INV: Layout(
        "CMD_ATC_INV",
        dword(f("StreamID", 32), f("SubstreamID", 20), f("SSV", 1), rsvd(1), f("Global", 1),
              rsvd(1), *_opcode_low()),
        dword(f("Address", 52), rsvd(6), f("Size", 6)),
    ),
    Op.PRI_RESP: Layout(
        "CMD_PRI_RESP",
        dword(f("StreamID", 32), f("SubstreamID", 20), f("SSV", 1), f("SSec", 1), rsvd(2),
              *_opcode_low()),
        dword(rsvd(50), f("Resp", 2), rsvd(3), f("PRGIndex", 9)),
    ),
    Op.SYNC: Layout(
        "CMD_SYNC",
        dword(f("MSIData", 32), rsvd(4), f("MSIAttr", 4), f("MSH", 2), rsvd(8), f("CS", 2),
              rsvd(4), *_opcode_low()),
        dword(rsvd(8), f("MSIAddress", 54), rsvd(2)),
    ),
}
"""The commands this SMMU executes; any other opcode is CERROR_ILL."""

_CMD = struct.Struct("<2Q")


@dataclass(frozen=True, slots=True)
class Features:
    """What ``check`` needs to know of the ID registers."""

    s1p: bool
    s2p: bool
    ats: bool
    pri: bool


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed command: its opcode, doublewords and layout."""

    op: Op
    dws: tuple[int, int]
    layout: Layout

    def __getitem__(self, name: str) -> int:
        return self.layout.slots[name].get(self.dws)

    def has(self, name: str) -> bool:
        return name in self.layout.slots


_STAGE1_ONLY = frozenset({Op.TLBI_NH_ALL, Op.TLBI_NH_ASID, Op.TLBI_NH_VA, Op.TLBI_NH_VAA,
                          Op.CFGI_CD, Op.CFGI_CD_ALL})
_STAGE2_ONLY = frozenset({Op.TLBI_S12_VMALL, Op.TLBI_S2_IPA})


def decode(raw: bytes, features: Features) -> Command | str:
    """A queue entry → a ``Command``, or why it is CERROR_ILL (a short reason).

    ``raw`` must be 16 bytes (the caller read them from the queue); anything a guest can put
    there gives a Command or a reason, never an exception."""
    dw0, dw1 = _CMD.unpack(raw)
    opcode = dw0 & 0xFF
    layout = LAYOUTS.get(opcode)
    if layout is None:
        return f"opcode {opcode:#04x} is reserved or not implemented"
    op = Op(opcode)
    dws = (dw0, dw1)
    if dw0 & layout.reserved[0] or dw1 & layout.reserved[1]:
        return f"{layout.name}: RES0 bits set"
    cmd = Command(op, dws, layout)
    reason = check(cmd, features)
    return cmd if reason is None else reason


def check(cmd: Command, features: Features) -> str | None:
    """The ILLEGAL parameter values of §4 for an otherwise well-formed command."""
    op = cmd.op
    if op in _STAGE1_ONLY and not features.s1p:
        return f"{cmd.layout.name} needs stage 1"
    if op in _STAGE2_ONLY and not features.s2p:
        return f"{cmd.layout.name} needs stage 2"
    if cmd.has("SSec") and cmd["SSec"]:
        return f"{cmd.layout.name}: SSec = 1 on the Non-secure queue"
    if cmd.has("TG"):
        tg, ttl = cmd["TG"], cmd["TTL"]
        if tg == TG_ANY and (ttl or cmd["NUM"] or cmd["SCALE"]):
            return f"{cmd.layout.name}: TTL/NUM/SCALE are RES0 when TG = 0"
        if tg != TG_ANY and not (cmd["NUM"] or cmd["SCALE"] or ttl):
            return f"{cmd.layout.name}: TG without range or level hint is reserved"
        if tg == TG_16K and ttl == 1:
            return f"{cmd.layout.name}: TTL = 1 with a 16 KB granule needs IDR5.DS"
    if op == Op.SYNC and cmd["CS"] == 3:
        return "CMD_SYNC: CS = 0b11 is reserved"
    if op == Op.ATC_INV:
        if not features.ats:
            return "CMD_ATC_INV needs IDR0.ATS"
        if cmd["Size"] > ATC_INV_SIZE_ALL:
            return "CMD_ATC_INV: Size above 52"
    if op == Op.PRI_RESP:
        if not features.pri:
            return "CMD_PRI_RESP needs IDR0.PRI"
        if cmd["Resp"] == 3:
            return "CMD_PRI_RESP: Resp = 0b11 is reserved"
    return None


def build(op: Op, **fields: int) -> bytes:
    """A command's 16 bytes (tests, the harness's reference): Opcode is filled in."""
    return LAYOUTS[op].build(Opcode=int(op), **fields)
