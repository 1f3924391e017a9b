"""In-memory VT-d structures: declared with construct, decoded with shifts derived from it.

Every structure the remapping hardware reads or writes (root, context, PASID entries,
invalidation and page-request descriptors) is a run of little-endian 64-bit words.  Each word
is declared once, as construct sees it: ``qword(...)`` takes the fields *most significant
first*, the way the spec draws them (VT-d rev 5.10 chapter 9 figures), with ``c.Padding`` for
reserved bits.  construct is the single source of truth (STYLE.md 3) but costs tens of µs a
parse, so ``Layout`` walks the declaration once and derives a (word, shift, mask) table from
it; decoding is then one ``struct.unpack`` plus shifts (reference/performance.md: ~0.5 µs).
tests/test_vtd_structures.py proves both paths agree.

Reserved bits are the bits no field names; ``Layout.reserved`` tests them (guest mistakes are
data: the caller turns them into a fault reason or an IQE).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import construct as c

from devices.layout import DecodeError, word, word_fields

T = TypeVar("T", bound=NamedTuple)

__all__ = ["DecodeError", "Layout", "qword", "reserved_word"]


qword = word
"""One 64-bit little-endian word, fields given from bit 63 down to bit 0."""


def reserved_word() -> Any:
    """A word every bit of which is reserved."""
    return qword(c.Padding(64))


class _Slot(NamedTuple):
    word: int
    shift: int
    mask: int


class Layout(Generic[T]):
    """A structure of ``len(words)`` qwords, decoded into the record type ``record``."""

    def __init__(self, name: str, words: Sequence[Any], record: type[T]) -> None:
        self.name = name
        self.record = record
        self.construct = c.Struct(*(f"qw{i}" / w for i, w in enumerate(words)))
        self.size = 8 * len(words)
        self._struct = struct.Struct(f"<{len(words)}Q")
        slots: dict[str, _Slot] = {}
        rsvd: list[int] = []
        for i, w in enumerate(words):
            fields, reserved = word_fields(w)
            rsvd.append(reserved)
            for fname, (lsb, width) in fields.items():
                if fname in slots:
                    raise ValueError(f"{name}: field {fname} declared twice")
                slots[fname] = _Slot(i, lsb, (1 << width) - 1)
        self.rsvd = tuple(rsvd)
        """Reserved-bit mask of each word."""
        missing = set(record._fields) ^ set(slots)
        if missing:
            raise ValueError(f"{name}: record and declaration differ in {sorted(missing)}")
        self.slots = tuple(slots[f] for f in record._fields)
        self._make = record._make

    # -- the fast path -----------------------------------------------------------------------

    def words(self, raw: bytes) -> tuple[int, ...]:
        if len(raw) != self.size:
            raise DecodeError(self.name, raw)
        return self._struct.unpack(raw)

    def decode(self, raw: bytes) -> T:
        """The one decode entry point: bytes → record (raises only ``DecodeError``)."""
        return self.from_words(self.words(raw))

    def from_words(self, words: Sequence[int]) -> T:
        return self._make([(words[s.word] >> s.shift) & s.mask for s in self.slots])

    def reserved(self, words: Sequence[int]) -> bool:
        """Whether any reserved bit is set."""
        return any(w & m for w, m in zip(words, self.rsvd, strict=False))

    def to_words(self, record: T) -> tuple[int, ...]:
        out = [0] * (self.size // 8)
        for s, value in zip(self.slots, record, strict=True):
            out[s.word] |= (int(value) & s.mask) << s.shift
        return tuple(out)

    def encode(self, record: T) -> bytes:
        return self._struct.pack(*self.to_words(record))

    def build(self, **fields: int) -> bytes:
        """Bytes with the named fields set and every other bit zero (drivers and tests)."""
        values = dict.fromkeys(self.record._fields, 0)
        unknown = set(fields) - set(values)
        if unknown:
            raise ValueError(f"{self.name}: no fields {sorted(unknown)}")
        values.update(fields)
        return self.encode(self._make(values[f] for f in self.record._fields))

    # -- the construct path (reference; tests compare) ----------------------------------------

    def parse_slow(self, raw: bytes) -> dict[str, int]:
        """Parse with construct; errors become ``DecodeError``."""
        try:
            parsed = self.construct.parse(raw)
        except c.ConstructError:
            raise DecodeError(self.name, raw) from None
        if len(raw) != self.size:
            raise DecodeError(self.name, raw)
        out: dict[str, int] = {}
        for i in range(self.size // 8):
            for key, value in parsed[f"qw{i}"].items():
                if not key.startswith("_"):
                    out[key] = int(value)
        return out

    def build_slow(self, fields: dict[str, int]) -> bytes:
        words: dict[str, dict[str, Any]] = {}
        for fname, slot in zip(self.record._fields, self.slots, strict=True):
            value = fields.get(fname, 0)
            words.setdefault(f"qw{slot.word}", {})[fname] = (
                bool(value) if slot.mask == 1 else value)
        data: bytes = self.construct.build(
            {f"qw{i}": words.get(f"qw{i}", {}) for i in range(self.size // 8)})
        return data
