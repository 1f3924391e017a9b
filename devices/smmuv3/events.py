"""Event records (Arm IHI 0070 §7.3): types, 32-byte layouts, encoding.

Common fields (§7.3): dw0 Type[7:0], SSV[11], SubstreamID[31:12], StreamID[63:32]; dw1
STAG[15:0], Stall[31], PnU[33], InD[34], RnW[35], S2[39], CLASS[41:40], TTRnW[44] (valid when
CLASS = TT, §7.3.16); dw2 InputAddr[63:0]; dw3 IPA[55:12] (translation faults) or
FetchAddr[55:3] (fetch and walk aborts).  Bits an event does not define are RES0; the
layouts below leave them unnamed, so ``build`` can only set what the event defines.

Event-specific shapes: C_BAD_SUBSTREAMID has no SSV (SubstreamID is always valid, §7.3.9);
F_STREAM_DISABLED carries only the StreamID (§7.3.7); F_STE_FETCH, F_CD_FETCH and
F_WALK_EABT put the physical fetch address in dw3 (§7.3.4, §7.3.10, §7.3.12).  QEMU writes
the F_CD_FETCH address in dw2 (smmuv3.md §10); we follow the spec.

CLASS (§7.3): CD = CD fetch, TT = stage-1 table walk, IN = the input address.  A stage-1
fault is CLASS = IN, except F_WALK_EABT at stage 1, which is CLASS = TT (§7.3.12).
"""

from __future__ import annotations

import enum

from .layout import Layout, dword, f, rsvd

EVENT_SIZE = 32


class EventType(enum.IntEnum):
    F_UUT = 0x01
    C_BAD_STREAMID = 0x02
    F_STE_FETCH = 0x03
    C_BAD_STE = 0x04
    F_BAD_ATS_TREQ = 0x05
    F_STREAM_DISABLED = 0x06
    F_TRANSL_FORBIDDEN = 0x07
    C_BAD_SUBSTREAMID = 0x08
    F_CD_FETCH = 0x09
    C_BAD_CD = 0x0A
    F_WALK_EABT = 0x0B
    F_TRANSLATION = 0x10
    F_ADDR_SIZE = 0x11
    F_ACCESS = 0x12
    F_PERMISSION = 0x13
    F_TLB_CONFLICT = 0x20
    F_CFG_CONFLICT = 0x21
    E_PAGE_REQUEST = 0x24
    F_VMS_FETCH = 0x25


CLASS_CD = 0b00
CLASS_TT = 0b01
CLASS_IN = 0b10

TRANSLATION_RELATED = frozenset({EventType.F_TRANSLATION, EventType.F_ADDR_SIZE,
                                 EventType.F_ACCESS, EventType.F_PERMISSION})
"""The four faults the CD.R / STE.S2R bits gate (§5.5)."""

_TYPE = f("Type", 8)


def _dw0_stream(*, ssv: bool = True) -> object:
    return dword(f("StreamID", 32), f("SubstreamID", 20), f("SSV", 1) if ssv else rsvd(1),
                 rsvd(3), _TYPE)


_DW0_SID_ONLY = dword(f("StreamID", 32), rsvd(24), _TYPE)
_RES0 = dword(rsvd(64))
_INPUT = dword(f("InputAddr", 64))
_FETCH = dword(rsvd(8), f("FetchAddr", 53), rsvd(3))
_IPA = dword(rsvd(8), f("IPA", 44), rsvd(12))
# dw1 of the translation-related faults: STAG, Stall, PnU, InD, RnW, S2, CLASS, TTRnW.
_DW1_FAULT = dword(rsvd(19), f("TTRnW", 1), rsvd(2), f("CLASS", 2), f("S2", 1), rsvd(3),
                   f("RnW", 1), f("InD", 1), f("PnU", 1), rsvd(1), f("Stall", 1), rsvd(15),
                   f("STAG", 16))
_DW1_WALK = dword(rsvd(22), f("CLASS", 2), f("S2", 1), rsvd(3), f("RnW", 1), f("InD", 1),
                  f("PnU", 1), rsvd(33))
_DW1_ACCESS = dword(rsvd(28), f("RnW", 1), f("InD", 1), f("PnU", 1), rsvd(33))


def _fault(name: str) -> Layout:
    return Layout(name, _dw0_stream(), _DW1_FAULT, _INPUT, _IPA)


LAYOUTS: dict[EventType, Layout] = {
    EventType.F_UUT: Layout("F_UUT", _dw0_stream(), _DW1_ACCESS, _INPUT, _RES0),
    EventType.C_BAD_STREAMID: Layout("C_BAD_STREAMID", _dw0_stream(), _RES0, _RES0, _RES0),
    EventType.F_STE_FETCH: Layout("F_STE_FETCH", _dw0_stream(), _RES0, _RES0, _FETCH),
    EventType.C_BAD_STE: Layout("C_BAD_STE", _dw0_stream(), _RES0, _RES0, _RES0),
    EventType.F_BAD_ATS_TREQ: Layout("F_BAD_ATS_TREQ", _dw0_stream(), _DW1_ACCESS, _INPUT,
                                     _RES0),
    EventType.F_STREAM_DISABLED: Layout("F_STREAM_DISABLED", _DW0_SID_ONLY, _RES0, _RES0,
                                        _RES0),
    EventType.F_TRANSL_FORBIDDEN: Layout("F_TRANSL_FORBIDDEN", _DW0_SID_ONLY, _DW1_ACCESS,
                                         _INPUT, _RES0),
    EventType.C_BAD_SUBSTREAMID: Layout("C_BAD_SUBSTREAMID", _dw0_stream(ssv=False), _RES0,
                                        _RES0, _RES0),
    EventType.F_CD_FETCH: Layout("F_CD_FETCH", _dw0_stream(), _RES0, _RES0, _FETCH),
    EventType.C_BAD_CD: Layout("C_BAD_CD", _dw0_stream(), _RES0, _RES0, _RES0),
    EventType.F_WALK_EABT: Layout("F_WALK_EABT", _dw0_stream(), _DW1_WALK, _INPUT, _FETCH),
    EventType.F_TRANSLATION: _fault("F_TRANSLATION"),
    EventType.F_ADDR_SIZE: _fault("F_ADDR_SIZE"),
    EventType.F_ACCESS: _fault("F_ACCESS"),
    EventType.F_PERMISSION: _fault("F_PERMISSION"),
    EventType.F_TLB_CONFLICT: _fault("F_TLB_CONFLICT"),
    EventType.F_CFG_CONFLICT: Layout("F_CFG_CONFLICT", _dw0_stream(), _RES0, _RES0, _RES0),
}
"""Layouts of the events this model can record (E_PAGE_REQUEST and F_VMS_FETCH belong to
features it does not implement: the stall model's page requests and VMS)."""


def encode(kind: EventType, **fields: int) -> bytes:
    """A record's 32 bytes.  Fields the event does not define are dropped (RES0), so callers
    may pass a transaction's whole context; SSV/SubstreamID are written only where the layout
    has them."""
    layout = LAYOUTS[kind]
    slots = layout.slots
    # Values come from guest-controlled addresses: keep what fits the field (bits above
    # the implemented address size are RES0 in every address field).
    return layout.build(Type=int(kind), **{k: v & slots[k].mask for k, v in fields.items()
                                           if k in slots})


def decode(raw: bytes) -> tuple[EventType | int, dict[str, int]]:
    """A record's type and fields (for tests and the harness); an unknown type decodes as
    the generic fault layout."""
    kind = raw[0]
    try:
        etype: EventType | int = EventType(kind)
    except ValueError:
        etype = kind
    layout = LAYOUTS.get(etype) if isinstance(etype, EventType) else None
    return etype, (layout or LAYOUTS[EventType.F_TRANSLATION]).decode(raw)
