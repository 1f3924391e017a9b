"""Root and context entries, legacy and scalable mode.

VT-d rev 5.10 §3.4.2 (legacy root/context tables), §3.4.3 (scalable-mode tables), §9.1 root
entry, §9.2 scalable-mode root entry, §9.3 context entry, §9.4 scalable-mode context entry.
Digest: reference/vtd.md §3a-§3b.

The root table is 4 KiB of 256 16-byte entries indexed by bus.  In legacy mode each root
entry points to one context table of 256 16-byte entries indexed by devfn; in scalable mode
each root entry points to two context tables (devfn 0-127 and 128-255) of 128 32-byte entries.
"""

from __future__ import annotations

from typing import NamedTuple

import construct as c

from .layout import Layout, qword, reserved_word

ROOT_ENTRY_SIZE = 16
CONTEXT_ENTRY_SIZE = 16
SM_CONTEXT_ENTRY_SIZE = 32

# Context entry TT (legacy translation type).
TT_UNTRANSLATED = 0b00
"""Second-stage only; translation requests (ATS) blocked."""
TT_DEVICE_TLB = 0b01
"""Second-stage, device-TLB allowed (ECAP.DT)."""
TT_PASS_THROUGH = 0b10
"""No translation (ECAP.PT)."""

# Address widths (context AW, PASID-entry AW): the number of second-stage levels minus 2.
AW_LEVELS = {1: 3, 2: 4, 3: 5}


class RootEntry(NamedTuple):
    """§9.1: one bus's context-table pointer."""

    CTP: int
    P: int


ROOT_ENTRY = Layout("root entry", [
    qword("CTP" / c.BitsInteger(52), c.Padding(11), "P" / c.Flag),
    reserved_word(),
], RootEntry)


class ContextEntry(NamedTuple):
    """§9.3: one device's legacy-mode context."""

    SSPTPTR: int
    TT: int
    FPD: int
    P: int
    DID: int
    IGN: int
    AW: int


CONTEXT_ENTRY = Layout("context entry", [
    qword("SSPTPTR" / c.BitsInteger(52), c.Padding(8), "TT" / c.BitsInteger(2),
          "FPD" / c.Flag, "P" / c.Flag),
    qword(c.Padding(40), "DID" / c.BitsInteger(16), c.Padding(1), "IGN" / c.BitsInteger(4),
          "AW" / c.BitsInteger(3)),
], ContextEntry)


class ScalableRootEntry(NamedTuple):
    """§9.2: lower (devfn 0-127) and upper (128-255) context-table pointers of one bus."""

    LCTP: int
    LP: int
    UCTP: int
    UP: int


SM_ROOT_ENTRY = Layout("scalable-mode root entry", [
    qword("LCTP" / c.BitsInteger(52), c.Padding(11), "LP" / c.Flag),
    qword("UCTP" / c.BitsInteger(52), c.Padding(11), "UP" / c.Flag),
], ScalableRootEntry)


class ScalableContextEntry(NamedTuple):
    """§9.4: one device's scalable-mode context: where its PASID directory is."""

    PASIDDIRPTR: int
    PDTS: int
    PRE: int
    PASIDE: int
    DTE: int
    FPD: int
    P: int
    RID_PRIV: int
    RID_PASID: int


SM_CONTEXT_ENTRY = Layout("scalable-mode context entry", [
    qword("PASIDDIRPTR" / c.BitsInteger(52), "PDTS" / c.BitsInteger(3), c.Padding(4),
          "PRE" / c.Flag, "PASIDE" / c.Flag, "DTE" / c.Flag, "FPD" / c.Flag, "P" / c.Flag),
    qword(c.Padding(43), "RID_PRIV" / c.Flag, "RID_PASID" / c.BitsInteger(20)),
    reserved_word(),
    reserved_word(),
], ScalableContextEntry)


def pasid_dir_entries(pdts: int) -> int:
    """Entries in a PASID directory of size PDTS: 2^(PDTS + 7)."""
    return 1 << (pdts + 7)


def context_table_slot(ctp: int, devfn: int, scalable: bool) -> int:
    """Guest-physical address of a device's context entry in the table at ``ctp``."""
    if scalable:
        return (ctp << 12) + (devfn & 0x7F) * SM_CONTEXT_ENTRY_SIZE
    return (ctp << 12) + devfn * CONTEXT_ENTRY_SIZE
