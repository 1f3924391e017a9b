"""A brute-force reference translator for tests: what the builder was *asked* to map.

It never reads a table.  It keeps a flat dict of the requested mappings, answers a lookup
by scanning all of them, and states each format's permission rules as plain tables of
cases written from the specs (Arm ARM D8 stage 1 AP[2:1]/XN and stage 2 S2AP/XN; VT-d
chapter 9 first- and second-stage entries), not by decoding entry bits.  Tests compare
the walker against it for every format and configuration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from devices.model import MemoryPort, Perm

from . import arm
from .arm import ArmS1Config
from .builders import (
    ArmS1Builder,
    ArmS2Builder,
    TableAllocator,
    TableBuilder,
    VtdSsBuilder,
    X86Builder,
)
from .walker import Walker

R, W, X = int(Perm.R), int(Perm.W), int(Perm.X)


@dataclass(frozen=True)
class RefMapping:
    ia: int
    size: int
    oa: int
    priv_perm: int
    user_perm: int


class ReferenceMap:
    """Mappings as a dict from input base address; every query is a full scan."""

    def __init__(self) -> None:
        self.mappings: dict[int, RefMapping] = {}

    def overlaps(self, ia: int, size: int) -> bool:
        return any(m.ia < ia + size and ia < m.ia + m.size for m in self.mappings.values())

    def map(self, ia: int, size: int, oa: int, perms: tuple[int, int]) -> bool:
        """False (and no change) when the range overlaps an existing mapping."""
        if self.overlaps(ia, size):
            return False
        self.mappings[ia] = RefMapping(ia, size, oa, perms[0], perms[1])
        return True

    def unmap(self, ia: int, size: int) -> int:
        gone = [m for m in self.mappings.values() if ia <= m.ia and m.ia + m.size <= ia + size]
        for m in gone:
            del self.mappings[m.ia]
        return sum(m.size for m in gone)

    def lookup(self, ia: int) -> RefMapping | None:
        for m in self.mappings.values():
            if m.ia <= ia < m.ia + m.size:
                return m
        return None


def arm_s1_perms(perm: int, user: bool) -> tuple[int, int]:
    """(privileged, unprivileged) permissions of a stage-1 leaf the builder made: always
    readable (AP has no "no read"), user access by AP[1], XN sets both PXN and UXN, and a
    page writable at EL0 is never executable at EL1."""
    write = perm & W
    execute = perm & X
    privileged = R | write | (X if execute and not (user and write) else 0)
    unprivileged = (R | write if user else 0) | execute
    return privileged, unprivileged


def arm_s2_perms(perm: int) -> tuple[int, int]:
    """Stage 2 grants exactly what S2AP and XN say, whatever the privilege."""
    granted = perm & (R | W | X)
    return granted, granted


def x86_perms(perm: int, user: bool, *, wpe: bool = False, smep: bool = False,
              nxe: bool = True, sre: bool = True) -> tuple[int, int]:
    execute = bool(perm & X) or not nxe
    table = {
        # (user page, writable): (supervisor R/W, user R/W)
        (False, False): (R | (0 if wpe else W), 0),
        (False, True): (R | W, 0),
        (True, False): (R | (0 if wpe else W), R),
        (True, True): (R | W, R | W),
    }
    supervisor, usr = table[(user, bool(perm & W))]
    if execute:
        if not (smep and user):
            supervisor |= X
        if user:
            usr |= X
    return (supervisor if sre else 0), usr


def vtdss_perms(perm: int, *, ssee: bool = False) -> tuple[int, int]:
    granted = perm & (R | W)
    if (ssee and perm & X) or (not ssee and perm & R):
        granted |= X
    return granted, granted


# -- the configurations the test suite runs over ---------------------------------------------

Make = Callable[[MemoryPort, TableAllocator], tuple[TableBuilder, Walker]]


@dataclass(frozen=True)
class FormatCase:
    """One format in one configuration: how to build its tables and its walker, and the
    reference's permission rule for what the builder writes."""

    name: str
    family: str
    make: Make
    perms: Callable[[int, bool], tuple[int, int]]
    perm_choices: tuple[int, ...]
    ia_bits: int
    oas: int
    granule: int = 4096

    def __str__(self) -> str:
        return self.name


IO_PGTABLE_SIZES = (32, 36, 40, 42, 44, 48)
"""IAS/OAS values of Linux io-pgtable-arm-selftests (smmuv3.md §9.3)."""
ARM_S1_PERMS = (R, R | W, R | X, R | W | X, W)
ARM_S2_PERMS = (0, R, W, R | W, R | X, R | W | X, X)
X86_PERMS = (R, R | W, R | X, R | W | X)
VTDSS_PERMS = (R, W, R | W, R | X, R | W | X)


def _arm_s1(granule: int, ia_bits: int, oas: int, upper: bool) -> Make:
    def make(mem: MemoryPort, alloc: TableAllocator) -> tuple[TableBuilder, Walker]:
        b = ArmS1Builder(mem, alloc, granule, 64 - ia_bits, upper=upper)
        table = b.table(oas)
        return b, ArmS1Config(None, table) if upper else ArmS1Config(table, None)
    return make


def _arm_s2(granule: int, ia_bits: int, level: int, oas: int) -> Make:
    def make(mem: MemoryPort, alloc: TableAllocator) -> tuple[TableBuilder, Walker]:
        b = ArmS2Builder(mem, alloc, granule, 64 - ia_bits, level)
        return b, b.config(oas)
    return make


def _x86(levels: int, haw: int, nxe: bool, wpe: bool, smep: bool) -> Make:
    def make(mem: MemoryPort, alloc: TableAllocator) -> tuple[TableBuilder, Walker]:
        b = X86Builder(mem, alloc, levels, nxe=nxe)
        return b, b.config(haw, wpe=wpe, smep=smep)
    return make


def _vtdss(levels: int, haw: int, ssee: bool) -> Make:
    def make(mem: MemoryPort, alloc: TableAllocator) -> tuple[TableBuilder, Walker]:
        b = VtdSsBuilder(mem, alloc, levels, ssee=ssee)
        return b, b.config(haw)
    return make


def format_cases() -> list[FormatCase]:
    """Every format × configuration: granules, every start level, address sizes."""
    cases: list[FormatCase] = []
    pairs = [(i, o) for i in IO_PGTABLE_SIZES for o in IO_PGTABLE_SIZES if i <= o]
    # Small inputs reach the deepest stage-1 start levels (16K → L3, 64K → L3, 4K → L2).
    pairs += [(25, 48), (29, 48), (30, 48), (39, 48), (47, 48)]
    for granule in (4096, 16384, 65536):
        kib = granule // 1024
        for ia_bits, oas in pairs:
            cases.append(FormatCase(
                f"arm-s1-{kib}k-ia{ia_bits}-oa{oas}", f"arm-s1-{kib}k",
                _arm_s1(granule, ia_bits, oas, False), arm_s1_perms, ARM_S1_PERMS,
                ia_bits, oas, granule))
            for level in range(4):
                if arm.s2_geometry_ok(granule, ia_bits, level, oas):
                    cases.append(FormatCase(
                        f"arm-s2-{kib}k-ia{ia_bits}-oa{oas}-sl{level}", f"arm-s2-{kib}k",
                        _arm_s2(granule, ia_bits, level, oas),
                        lambda p, u: arm_s2_perms(p), ARM_S2_PERMS, ia_bits, oas, granule))
        for ia_bits in (48, 39, 32):
            cases.append(FormatCase(
                f"arm-s1-ttb1-{kib}k-ia{ia_bits}", "arm-s1-ttb1",
                _arm_s1(granule, ia_bits, 48, True), arm_s1_perms, ARM_S1_PERMS, ia_bits, 48,
                granule))
    for levels in (4, 5):
        for haw, nxe, wpe, smep in ((48, True, False, False), (46, True, True, False),
                                    (52, False, False, True), (39, True, True, True)):
            cases.append(FormatCase(
                f"x86-{levels}l-haw{haw}-nxe{int(nxe)}-wpe{int(wpe)}-smep{int(smep)}",
                f"x86-{levels}l", _x86(levels, haw, nxe, wpe, smep),
                functools.partial(_x86_rule, wpe=wpe, smep=smep, nxe=nxe), X86_PERMS,
                12 + 9 * levels - 1, haw))
    for levels in (3, 4, 5):
        for haw, ssee in ((48, False), (42, True), (52, True)):
            cases.append(FormatCase(
                f"vtdss-{levels}l-haw{haw}-ssee{int(ssee)}", f"vtdss-{levels}l",
                _vtdss(levels, haw, ssee), functools.partial(_vtdss_rule, ssee=ssee),
                VTDSS_PERMS, 12 + 9 * levels, haw))
    return cases


def _x86_rule(perm: int, user: bool, *, wpe: bool, smep: bool, nxe: bool) -> tuple[int, int]:
    return x86_perms(perm, user, wpe=wpe, smep=smep, nxe=nxe)


def _vtdss_rule(perm: int, user: bool, *, ssee: bool) -> tuple[int, int]:
    return vtdss_perms(perm, ssee=ssee)
