"""What the fuzzer feeds a model: programs (lists) of steps, and where choices come from.

A ``Step`` is one guest action: an operation name, integer arguments and optional bytes.  Its
meaning belongs to the target (``vmm.fuzz.targets``); some steps are *semantic* ("publish
these commands at the queue's producer index") and are resolved against the model's registers
when they run, so they keep their meaning when the steps around them change or disappear —
which is what makes mutation and delta debugging work.  One step is one fuzzer input.

A ``Source`` supplies every choice a generator makes.  The built-in engine draws from a seeded
``random.Random``; under atheris the choices are read from libFuzzer's bytes, so the same
generators give it structure-aware inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Step:
    """One guest action; ``args`` and ``data`` mean what the target's ``op`` handler says."""

    op: str
    args: tuple[int, ...] = ()
    data: bytes = b""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "args": list(self.args)}
        if self.data:
            out["data"] = self.data.hex()
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Step:
        return cls(str(doc["op"]), tuple(int(a) for a in doc.get("args", ())),
                   bytes.fromhex(doc.get("data", "")))

    def __str__(self) -> str:
        args = ", ".join(f"{a:#x}" if a > 9 else str(a) for a in self.args)
        tail = f", data={self.data.hex()}" if self.data else ""
        return f"{self.op}({args}{tail})"


class Source(Protocol):
    """Where a generator's choices come from."""

    def below(self, n: int) -> int:
        """A value in ``[0, n)``; ``n`` ≥ 1."""

    def bits(self, k: int) -> int:
        """A value of ``k`` random bits."""


class RandomSource:
    """Choices from a seeded PRNG (the built-in engine)."""

    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def below(self, n: int) -> int:
        return self.rng.randrange(n) if n > 1 else 0

    def bits(self, k: int) -> int:
        return self.rng.getrandbits(k) if k > 0 else 0


class BytesSource:
    """Choices read from a byte string (libFuzzer's input); zeros once it runs out."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def _take(self, nbytes: int) -> int:
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return int.from_bytes(chunk, "little")

    def below(self, n: int) -> int:
        if n <= 1:
            return 0
        return self._take(1 if n <= 256 else (n.bit_length() + 7) // 8) % n

    def bits(self, k: int) -> int:
        if k <= 0:
            return 0
        return self._take((k + 7) // 8) & ((1 << k) - 1)


# -- small generators every target uses ------------------------------------------------------


def chance(src: Source, one_in: int) -> bool:
    return src.below(one_in) == 0


def pick(src: Source, items: tuple[Any, ...] | list[Any]) -> Any:
    return items[src.below(len(items))]


def field_value(src: Source, width: int) -> int:
    """A value for a ``width``-bit field, biased to the values that change behaviour."""
    top = (1 << width) - 1
    k = src.below(8)
    if k == 0:
        return 0
    if k == 1:
        return 1 & top
    if k == 2:
        return top
    if k == 3:
        return top >> 1 if width > 1 else top
    if k == 4:
        return min(src.below(16), top)
    if k == 5:
        return (1 << src.below(width)) & top
    return src.bits(width)


def word(src: Source, width: int = 64) -> int:
    """An arbitrary value, biased to edges."""
    k = src.below(6)
    if k == 0:
        return 0
    if k == 1:
        return (1 << width) - 1
    if k == 2:
        return 1 << src.below(width)
    if k == 3:
        return src.below(256)
    return src.bits(width)


def flip_bits(src: Source, data: bytes, count: int = 1) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(count):
        i = src.below(len(buf))
        buf[i] ^= 1 << src.below(8)
    return bytes(buf)


def mutate_words(src: Source, data: bytes) -> bytes:
    """Byte-level mutation of an entry: bit flips, a new 64-bit word, or a zeroed word."""
    if len(data) < 8:
        return flip_bits(src, data)
    k = src.below(4)
    if k == 0:
        return flip_bits(src, data, 1 + src.below(3))
    buf = bytearray(data)
    at = 8 * src.below(len(buf) // 8)
    value = 0 if k == 1 else word(src)
    buf[at : at + 8] = value.to_bytes(8, "little")
    return bytes(buf)
