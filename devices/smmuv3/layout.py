"""SMMUv3 in-memory structures as data: construct declarations and the fast codec derived
from them.

Every structure the SMMU reads or writes in memory (IHI 0070 chapter 4 commands, chapter 5
STE/L1STD/CD/L1CD, chapter 7 event records, chapter 8 PRI queue entries) is a run of
little-endian 64-bit doublewords.  Each doubleword is declared once with ``dword(...)``,
fields listed *from bit 63 down*, as the specification's figures draw them, with ``rsvd(n)``
for RES0 bits.  That construct declaration is the single source of truth (STYLE.md 3) and
gives symmetric ``parse_slow``/``build_slow``; it costs tens of microseconds per structure,
so ``Layout`` derives from it, once, a table of (doubleword, shift, mask) per field and
decodes with one ``struct.unpack`` plus shifts.  tests/test_smmuv3_layout.py proves that both
paths agree on random data for every layout.

``Layout.decode`` is the one decode entry point; it raises only ``DecodeError`` (with the
raw bytes), and only for a caller's bug (bytes of the wrong size): guest memory reads return
the size asked for or nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import construct as c

from devices.layout import DecodeError, word, word_fields

__all__ = ["DecodeError", "Layout", "Slot", "dword", "f", "rsvd"]


def f(name: str, bits: int) -> Any:
    """A named field of ``bits`` bits (a 1-bit field parses as an int, not a bool)."""
    return name / c.BitsInteger(bits)


def rsvd(bits: int) -> Any:
    """RES0 bits: parsed and ignored, built as zero."""
    return c.Padding(bits)


dword = word
"""One little-endian 64-bit doubleword, fields from bit 63 down to bit 0."""


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one field lives: doubleword ``dw``, ``mask`` after shifting right by ``shift``."""

    dw: int
    shift: int
    mask: int

    def get(self, dws: Sequence[int]) -> int:
        return (dws[self.dw] >> self.shift) & self.mask

    def prep(self, value: int) -> int:
        """The field's bits in its doubleword (excess bits dropped)."""
        return (value & self.mask) << self.shift


def _dword_slots(index: int, decl: Any) -> tuple[dict[str, Slot], int]:
    """Fields of one ``dword`` declaration and the mask of its reserved bits."""
    fields, reserved = word_fields(decl)
    return {name: Slot(index, lsb, (1 << width) - 1) for name, (lsb, width) in fields.items()}, reserved


class Layout:
    """A structure of ``len(dwords)`` doublewords, declared with ``dword``."""

    def __init__(self, name: str, *dwords: Any) -> None:
        self.name = name
        self.size = 8 * len(dwords)
        self.construct = c.Struct(*(f"dw{i}" / d for i, d in enumerate(dwords)))
        self._codec = struct.Struct(f"<{len(dwords)}Q")
        slots: dict[str, Slot] = {}
        reserved: list[int] = []
        for i, decl in enumerate(dwords):
            these, res = _dword_slots(i, decl)
            for name_ in these:
                if name_ in slots:
                    raise ValueError(f"{name}: field {name_} declared twice")
            slots.update(these)
            reserved.append(res)
        self.slots: Mapping[str, Slot] = slots
        self.reserved: tuple[int, ...] = tuple(reserved)
        """Mask of the RES0 bits of each doubleword."""

    def __getitem__(self, name: str) -> Slot:
        return self.slots[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.slots)

    # -- the fast path ---------------------------------------------------------------------

    def dwords(self, raw: bytes | bytearray | memoryview) -> tuple[int, ...]:
        """The one decode entry point: bytes → doublewords (only ``DecodeError`` raised)."""
        if len(raw) != self.size:
            raise DecodeError(self.name, bytes(raw))
        return self._codec.unpack(raw)

    def decode(self, raw: bytes | bytearray | memoryview) -> dict[str, int]:
        """Every named field, by the spec's name."""
        dws = self.dwords(raw)
        return {name: (dws[s.dw] >> s.shift) & s.mask for name, s in self.slots.items()}

    def has_reserved(self, dws: Sequence[int]) -> bool:
        """Whether any RES0 bit is set."""
        return any(w & m for w, m in zip(dws, self.reserved, strict=True))

    def pack_dwords(self, **fields: int) -> list[int]:
        out = [0] * (self.size // 8)
        for name, value in fields.items():
            slot = self.slots.get(name)
            if slot is None:
                raise KeyError(f"{self.name} has no field {name}")
            if value < 0 or value > slot.mask:
                raise ValueError(f"{self.name}.{name} = {value:#x} does not fit")
            out[slot.dw] |= value << slot.shift
        return out

    def build(self, **fields: int) -> bytes:
        """The structure with the named fields set and everything else zero (drivers,
        tests).  A value that does not fit its field raises: the caller's bug."""
        return self._codec.pack(*self.pack_dwords(**fields))

    # -- the construct path (the declaration itself; tests compare) --------------------------

    def parse_slow(self, raw: bytes) -> dict[str, int]:
        if len(raw) != self.size:
            raise DecodeError(self.name, bytes(raw))
        try:
            parsed = self.construct.parse(raw)
        except c.ConstructError:
            raise DecodeError(self.name, bytes(raw)) from None
        out: dict[str, int] = {}
        for i in range(self.size // 8):
            for key, value in parsed[f"dw{i}"].items():
                if not key.startswith("_"):
                    out[key] = int(value)
        return out

    def build_slow(self, **fields: int) -> bytes:
        per_dword: dict[str, dict[str, int]] = {f"dw{i}": {} for i in range(self.size // 8)}
        for name, slot in self.slots.items():
            per_dword[f"dw{slot.dw}"][name] = fields.get(name, 0)
        data: bytes = self.construct.build(per_dword)
        return data
