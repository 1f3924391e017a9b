"""The generic register machinery: one access rule, masks, halves, hooks."""

from __future__ import annotations

import pytest

from devices.regs import ALL, Field, Register, RegisterFile, bit, check_layout

DECLS = [
    Register("ID", 0x00, 32, reset=0x1234, ro=ALL),
    Register("CTRL", 0x04, 32, rsvd=0xFFFF_FF00, fields=(bit("EN", 0), Field("MODE", 3, 1))),
    Register("STATUS", 0x08, 32, w1c=0x3, ro=0xFFFF_FFFC),
    Register("BASE", 0x10, 64, rsvd=0xFFF, fields=(Field("ADDR", 63, 12),)),
    Register("CMD", 0x18, 32, wo=ALL),
    Register("EVT", 0x1C, 32, cor=0xFF, ro=ALL),
]


def make() -> RegisterFile:
    return RegisterFile(DECLS, 0x100)


def test_declarations_are_consistent() -> None:
    assert check_layout(DECLS, 0x100) == []


@pytest.mark.parametrize("bad, problem", [
    (Register("X", 0x0, 32, reset=0x100, rsvd=0x100), "reserved"),
    (Register("X", 0x0, 32, fields=(Field("A", 3, 0), Field("B", 4, 2))), "overlaps"),
    (Register("X", 0x0, 32, fields=(Field("A", 32, 30),)), "outside"),
    (Register("X", 0x4, 64), "aligned"),
])
def test_bad_declarations_found(bad: Register, problem: str) -> None:
    assert any(problem in p for p in check_layout([bad], 0x100))


def test_overlapping_registers_found() -> None:
    assert check_layout([Register("A", 0, 64), Register("B", 4, 32)], 0x100)


def test_access_rules() -> None:
    regs = make()
    assert regs.read(0x00, 4) == 0x1234
    regs.write(0x00, 4, 0)
    assert regs.read(0x00, 4) == 0x1234  # read-only
    regs.write(0x04, 4, 0xFFFF_FFFF)
    assert regs.read(0x04, 4) == 0xFF  # reserved bits read as zero
    assert regs.get("CTRL", "MODE") == 7
    regs["STATUS"] = 0x7
    regs.write(0x08, 4, 0x1)
    assert regs.read(0x08, 4) == 0x6  # write-1-to-clear
    regs.write(0x18, 4, 0xABCD)
    assert regs["CMD"] == 0xABCD and regs.read(0x18, 4) == 0  # write-only
    regs["EVT"] = 0x1FF
    assert regs.read(0x1C, 4) == 0x1FF and regs.read(0x1C, 4) == 0x100  # clear on read


def test_sizes_and_halves() -> None:
    regs = make()
    regs.write(0x10, 8, 0x1122_3344_5566_7FFF)
    assert regs.read(0x10, 8) == 0x1122_3344_5566_7000
    assert regs.read(0x10, 4) == 0x5566_7000
    assert regs.read(0x14, 4) == 0x1122_3344
    regs.write(0x14, 4, 0xAABB_CCDD)
    assert regs.read(0x10, 8) == 0xAABB_CCDD_5566_7000
    assert regs.read(0x00, 8) == 0  # 64-bit access to a 32-bit register
    assert regs.read(0x00, 2) == 0 and regs.read(0x00, 1) == 0
    assert regs.read(0x40, 4) == 0  # nothing declared there
    regs.write(0x04, 8, 0xFF)
    assert regs.read(0x04, 4) == 0


def test_hooks() -> None:
    regs = make()
    seen: list[tuple[int, int]] = []
    regs.on_write["CTRL"] = lambda old, new: seen.append((old, new))
    regs.on_read["ID"] = lambda: 0x99
    regs.write(0x04, 4, 1)
    regs.write(0x04, 4, 3)
    assert seen == [(0, 1), (1, 3)]
    assert regs.read(0x00, 4) == 0x99
    regs.reset()
    assert regs["CTRL"] == 0
