"""In-memory structures declared once with construct, decoded fast with shifts derived from it.

Both IOMMU architectures lay out what they read and write in memory (SMMUv3 commands, STEs,
CDs, event records; VT-d root/context/PASID entries, invalidation and page-request
descriptors) as runs of little-endian 64-bit words.  Each word is declared once with
``word(...)``, fields *from bit 63 down* as the specifications draw them, with reserved bits
as ``c.Padding``.  That declaration is the single source of truth (STYLE.md 3); construct is
too slow to parse with on the hot path (tens of µs a structure), so ``word_fields`` walks the
declaration once and each architecture's ``Layout`` keeps a (word, shift, mask) table and
decodes with one ``struct.unpack`` plus shifts.
"""

from __future__ import annotations

from typing import Any

import construct as c

_FLAG = type(c.Flag)
_U64 = (1 << 64) - 1


class DecodeError(Exception):
    """Bytes handed to a decoder are not the structure's size: always the caller's bug (a
    guest cannot cause it: memory reads return the size asked for, or nothing).  ``raw`` keeps
    the bytes for the report."""

    def __init__(self, what: str, raw: bytes) -> None:
        super().__init__(f"{what}: {len(raw)} bytes cannot be decoded")
        self.raw = raw


def word(*subcons: Any) -> Any:
    """One little-endian 64-bit word, fields given from bit 63 down to bit 0."""
    inner = c.BitStruct(*subcons)
    if inner.sizeof() != 8:  # BitStruct sizes count bytes
        raise ValueError(f"a word declares {8 * inner.sizeof()} bits, not 64")
    return c.ByteSwapped(inner)


def word_fields(decl: Any) -> tuple[dict[str, tuple[int, int]], int]:
    """(name → (lsb, width)) of one ``word`` declaration, and the mask of its reserved bits."""
    bitstruct = decl.subcon.subcon  # ByteSwapped → BitStruct (Transformed) → Struct
    fields: dict[str, tuple[int, int]] = {}
    named = 0
    pos = 64
    for sub in bitstruct.subcons:
        inner = sub.subcon if isinstance(sub, c.Renamed) else sub
        if isinstance(inner, c.BitsInteger):
            width = inner.length
        elif isinstance(inner, _FLAG):
            width = 1
        elif isinstance(inner, c.Padded):
            width = inner.length
        else:
            raise TypeError(f"{sub!r}: declare fields as BitsInteger/Flag, reserved bits as Padding")
        pos -= width
        if isinstance(sub, c.Renamed):
            fields[sub.name] = (pos, width)
            named |= ((1 << width) - 1) << pos
    if pos != 0:
        raise ValueError(f"a word declares {64 - pos} bits")
    return fields, _U64 & ~named
