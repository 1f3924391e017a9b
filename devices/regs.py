"""Register files declared as data, with one generic access rule.

Shape taken from QEMU's ``include/hw/register.h``: each register is a declaration (offset,
width, reset value and masks for read-only, write-1-to-clear, reserved, clear-on-read and
write-only bits) with its fields named as the specification names them.  A single rule
implements every guest access; device behaviour lives in hooks that run after a write or
supply a value on a read.

Access rule shared by both IOMMU architectures (SMMUv3 IHI 0070 §6.2, VT-d spec §10.2):
an access hits a register when it starts at the register's offset with the register's
width, or when it is a 32-bit access to either half of a 64-bit register.  Any other access
(unknown offset, a 64-bit access to a 32-bit register, 1- and 2-byte accesses) reads as zero
and its write is ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

WriteHook = Callable[[int, int], None]
"""Called after a guest write is stored, with the old and the new register value."""

ReadHook = Callable[[], int]
"""Supplies the value of a register whose contents are computed when read."""


@dataclass(frozen=True, slots=True)
class Field:
    """A named bit range ``[msb:lsb]`` of a register, as the specification draws it."""

    name: str
    msb: int
    lsb: int

    @property
    def width(self) -> int:
        return self.msb - self.lsb + 1

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    def get(self, value: int) -> int:
        """FIELD_GET: the field's value out of a register value."""
        return (value >> self.lsb) & ((1 << self.width) - 1)

    def prep(self, value: int) -> int:
        """FIELD_PREP: a field value placed at its position (excess bits dropped)."""
        return (value & ((1 << self.width) - 1)) << self.lsb


def bit(name: str, n: int) -> Field:
    return Field(name, n, n)


ALL = -1
"""Mask shorthand: every bit of the register's width."""


@dataclass(frozen=True)
class Register:
    """One register, declared once.

    Bits not named in ``ro``, ``w1c`` or ``rsvd`` are read-write.  ``wo`` bits are stored but
    read as zero (VT-d's GCMD, the write-only fields of CCMD and IVA).  ``cor`` bits clear
    after every read.
    """

    name: str
    offset: int
    width: int
    reset: int = 0
    ro: int = 0
    w1c: int = 0
    rsvd: int = 0
    cor: int = 0
    wo: int = 0
    fields: tuple[Field, ...] = ()
    doc: str = ""
    _by_name: dict[str, Field] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        full = (1 << self.width) - 1
        for attr in ("ro", "w1c", "rsvd", "cor", "wo"):
            if getattr(self, attr) == ALL:
                object.__setattr__(self, attr, full)
        # A reserved bit is never also read-only storage: keep the masks disjoint.
        object.__setattr__(self, "ro", self.ro & ~self.rsvd)
        self._by_name.update({f.name: f for f in self.fields})

    @property
    def size(self) -> int:
        return self.width // 8

    @property
    def full_mask(self) -> int:
        return (1 << self.width) - 1

    @property
    def writable(self) -> int:
        """Bits a guest write stores directly."""
        return self.full_mask & ~(self.ro | self.w1c | self.rsvd)

    def field(self, name: str) -> Field:
        return self._by_name[name]

    def __getattr__(self, name: str) -> Field:
        # Lets declarations read like the spec: CR0.SMMUEN, GSTS.TES.
        by_name = object.__getattribute__(self, "_by_name")
        try:
            return by_name[name]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(name) from None


def strict(name: str, offset: int, width: int, fields: tuple[Field, ...],
           **masks: Any) -> Register:
    """A declaration in which every bit no field names is reserved (reads as zero, writes
    dropped): how both architectures treat RES0/RsvdZ register bits."""
    named = 0
    for f in fields:
        named |= f.mask
    return Register(name, offset, width, rsvd=((1 << width) - 1) & ~named, fields=fields,
                    **masks)


def check_register(reg: Register) -> list[str]:
    """Problems with one declaration; the declaration tests assert this is empty."""
    problems: list[str] = []
    full = reg.full_mask
    if reg.width not in (32, 64):
        problems.append(f"{reg.name}: width {reg.width}")
    if reg.offset % 4:
        problems.append(f"{reg.name}: offset {reg.offset:#x} not 4-byte aligned")
    if reg.width == 64 and reg.offset % 8:
        problems.append(f"{reg.name}: 64-bit register at {reg.offset:#x} not 8-byte aligned")
    for attr in ("reset", "ro", "w1c", "rsvd", "cor", "wo"):
        if getattr(reg, attr) & ~full:
            problems.append(f"{reg.name}: {attr} has bits beyond width {reg.width}")
    if reg.reset & reg.rsvd:
        problems.append(f"{reg.name}: reset value sets reserved bits {reg.reset & reg.rsvd:#x}")
    if reg.w1c & reg.ro:
        problems.append(f"{reg.name}: bits both read-only and write-1-to-clear")
    if reg.w1c & reg.rsvd:
        problems.append(f"{reg.name}: bits both reserved and write-1-to-clear")
    seen = 0
    for f in reg.fields:
        if f.lsb < 0 or f.msb < f.lsb or f.msb >= reg.width:
            problems.append(f"{reg.name}.{f.name}: [{f.msb}:{f.lsb}] outside width {reg.width}")
            continue
        if seen & f.mask:
            problems.append(f"{reg.name}.{f.name}: overlaps another field")
        if f.mask & reg.rsvd:
            problems.append(f"{reg.name}.{f.name}: covers reserved bits")
        seen |= f.mask
    if len({f.name for f in reg.fields}) != len(reg.fields):
        problems.append(f"{reg.name}: duplicate field names")
    return problems


def check_layout(registers: Iterable[Register], window: int) -> list[str]:
    """Problems across a whole register file: overlaps, names, window bounds."""
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    names: set[str] = set()
    for reg in registers:
        problems.extend(check_register(reg))
        if reg.name in names:
            problems.append(f"{reg.name}: declared twice")
        names.add(reg.name)
        if reg.offset + reg.size > window:
            problems.append(f"{reg.name}: beyond the {window:#x}-byte window")
        spans.append((reg.offset, reg.offset + reg.size, reg.name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            problems.append(f"{a} and {b} overlap")
    return problems


@functools.lru_cache(maxsize=64)
def _checked_layout(registers: tuple[Register, ...], window: int) -> tuple[str, ...]:
    """``check_layout`` once per set of declarations: models are built per guest (and the
    fuzzer builds thousands a second), the declarations are frozen, so the answer is too."""
    return tuple(check_layout(registers, window))


class RegisterFile:
    """The guest-visible state of a set of registers, and the one access rule.

    Device code reads and sets values by name (``regs["CR0"]``), bypassing the guest
    access rule and hooks: that is the hardware's own side of the register.
    """

    __slots__ = ("registers", "window", "values", "on_write", "on_read", "_decode", "_by_name")

    def __init__(self, registers: Sequence[Register], window: int) -> None:
        problems = _checked_layout(tuple(registers), window)
        if problems:
            raise ValueError("bad register declarations: " + "; ".join(problems))
        self.registers = tuple(registers)
        self.window = window
        self._by_name = {r.name: r for r in registers}
        self.values: dict[str, int] = {}
        self.on_write: dict[str, WriteHook] = {}
        self.on_read: dict[str, ReadHook] = {}
        # (offset * 16 + size) -> (register, bit shift, 32/64-bit access mask)
        self._decode: dict[int, tuple[Register, int, int]] = {}
        for reg in registers:
            self._decode[reg.offset * 16 + reg.size] = (reg, 0, reg.full_mask)
            if reg.width == 64:
                self._decode[reg.offset * 16 + 4] = (reg, 0, 0xFFFF_FFFF)
                self._decode[(reg.offset + 4) * 16 + 4] = (reg, 32, 0xFFFF_FFFF << 32)
        self.reset()

    def reset(self) -> None:
        for reg in self.registers:
            self.values[reg.name] = reg.reset

    def register(self, name: str) -> Register:
        return self._by_name[name]

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def __setitem__(self, name: str, value: int) -> None:
        self.values[name] = value & self._by_name[name].full_mask

    def get(self, name: str, field_name: str) -> int:
        return self._by_name[name].field(field_name).get(self.values[name])

    def set_field(self, name: str, field_name: str, value: int) -> None:
        f = self._by_name[name].field(field_name)
        self.values[name] = (self.values[name] & ~f.mask) | f.prep(value)

    def lookup(self, offset: int, size: int) -> Register | None:
        hit = self._decode.get(offset * 16 + size)
        return hit[0] if hit else None

    def read(self, offset: int, size: int) -> int:
        """A guest read; accesses that hit no register read as zero."""
        hit = self._decode.get(offset * 16 + size)
        if hit is None:
            return 0
        reg, shift, amask = hit
        name = reg.name
        hook = self.on_read.get(name)
        value = hook() if hook is not None else self.values[name]
        if reg.cor:
            self.values[name] = value & ~(reg.cor & amask)
        return ((value & ~reg.wo) & amask) >> shift

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write through the generic rule, then the register's hook."""
        hit = self._decode.get(offset * 16 + size)
        if hit is None:
            return
        reg, shift, amask = hit
        name = reg.name
        value = (value << shift) & amask
        old = self.values[name]
        writable = reg.writable & amask
        new = (old & ~writable) | (value & writable)
        new &= ~(value & reg.w1c)
        self.values[name] = new
        hook = self.on_write.get(name)
        if hook is not None:
            hook(old, new)
