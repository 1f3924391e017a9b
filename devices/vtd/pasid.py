"""PASID directory and scalable-mode PASID table entries.

VT-d rev 5.10 §3.4.3 (scalable-mode address translation: the PASID directory is indexed by
PASID[19:6], each directory entry points to a 4 KiB PASID table of 64 entries indexed by
PASID[5:0]), §9.5 (PASID directory entry), §9.6 (scalable-mode PASID table entry).  Digest:
reference/vtd.md §3b.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import construct as c

from .layout import Layout, qword, reserved_word

PASID_DIR_ENTRY_SIZE = 8
PASID_ENTRY_SIZE = 64
PASIDS_PER_TABLE = 64


class Pgtt(enum.IntEnum):
    """PASID-granular translation type (PASID entry PGTT)."""

    FIRST_STAGE = 0b001
    SECOND_STAGE = 0b010
    NESTED = 0b011
    PASS_THROUGH = 0b100


# First-stage paging mode (PASID entry FSPM).
FSPM_4_LEVEL = 0b00
FSPM_5_LEVEL = 0b01


class PasidDirEntry(NamedTuple):
    """§9.5: one PASID table (64 PASIDs)."""

    PTP: int
    FPD: int
    P: int


PASID_DIR_ENTRY = Layout("PASID directory entry", [
    qword("PTP" / c.BitsInteger(52), c.Padding(10), "FPD" / c.Flag, "P" / c.Flag),
], PasidDirEntry)


class PasidEntry(NamedTuple):
    """§9.6: one PASID's translation."""

    SSPTPTR: int
    SSADE: int
    PGTT: int
    SSEE: int
    AW: int
    FPD: int
    P: int
    PAT: int
    PCD: int
    PWT: int
    EMT: int
    EMTE: int
    CD: int
    PGSNP: int
    PWSNP: int
    DID: int
    FSPTPTR: int
    EAFE: int
    SMEP: int
    NXE: int
    WPE: int
    FSPM: int
    ERE: int
    SRE: int


PASID_ENTRY = Layout("scalable-mode PASID table entry", [
    qword("SSPTPTR" / c.BitsInteger(52), c.Padding(2), "SSADE" / c.Flag,
          "PGTT" / c.BitsInteger(3), "SSEE" / c.Flag, "AW" / c.BitsInteger(3),
          "FPD" / c.Flag, "P" / c.Flag),
    qword("PAT" / c.BitsInteger(32), "PCD" / c.Flag, "PWT" / c.Flag, "EMT" / c.BitsInteger(3),
          "EMTE" / c.Flag, "CD" / c.Flag, "PGSNP" / c.Flag, "PWSNP" / c.Flag, c.Padding(7),
          "DID" / c.BitsInteger(16)),
    qword("FSPTPTR" / c.BitsInteger(52), c.Padding(4), "EAFE" / c.Flag, "SMEP" / c.Flag,
          "NXE" / c.Flag, "WPE" / c.Flag, "FSPM" / c.BitsInteger(2), "ERE" / c.Flag,
          "SRE" / c.Flag),
    *(reserved_word() for _ in range(5)),
], PasidEntry)


def dir_slot(dir_base: int, pasid: int) -> int:
    """Address of the directory entry for ``pasid`` (``dir_base`` already shifted)."""
    return dir_base + (pasid >> 6) * PASID_DIR_ENTRY_SIZE


def table_slot(table_base: int, pasid: int) -> int:
    return table_base + (pasid & 0x3F) * PASID_ENTRY_SIZE
