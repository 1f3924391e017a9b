"""ACPI tables for the guest's firmware: the DMA Remapping Reporting table (DMAR).

Intel VT-d specification (rev. 4.1) chapter 8, "BIOS Considerations": §8.1 the DMAR header
(Host Address Width = MGAW − 1, Flags INTR_REMAP / X2APIC_OPT_OUT / DMA_CTRL_PLATFORM_OPT_IN),
§8.3 DRHD (type 0: Flags INCLUDE_PCI_ALL, Size, Segment Number, Register Base Address, then
device scopes), §8.3.1 device scope entries (type 1 PCI endpoint, 2 PCI sub-hierarchy,
3 IOAPIC, 4 MSI-capable HPET, 5 ACPI namespace device; Start Bus Number and a path of
(device, function) pairs), §8.5 ATSR (type 2: Flags ALL_PORTS).  The common table header is
ACPI 6.5 §5.2.6; the checksum makes all bytes of the table sum to zero.

Declared once with construct, built and parsed symmetrically; ``parse_dmar`` is the one
decode entry point and raises only ``AcpiDecodeError`` (with the raw bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import construct as c
from construct import this

DMAR_REVISION = 1
DMAR_INTR_REMAP = 1 << 0
DMAR_X2APIC_OPT_OUT = 1 << 1
DMAR_DMA_CTRL_PLATFORM_OPT_IN = 1 << 2
DRHD_INCLUDE_PCI_ALL = 1 << 0
ATSR_ALL_PORTS = 1 << 0


class ScopeType:
    PCI_ENDPOINT = 1
    PCI_SUB_HIERARCHY = 2
    IOAPIC = 3
    MSI_HPET = 4
    ACPI_NAMESPACE = 5


class RemappingType:
    DRHD = 0
    RMRR = 1
    ATSR = 2
    RHSA = 3
    ANDD = 4
    SATC = 5


class AcpiDecodeError(Exception):
    """A table that is not a well-formed DMAR (whoever produced it is at fault)."""

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw


AcpiHeader = c.Struct(
    "signature" / c.Bytes(4), "length" / c.Int32ul, "revision" / c.Int8ul,
    "checksum" / c.Int8ul, "oem_id" / c.Bytes(6), "oem_table_id" / c.Bytes(8),
    "oem_revision" / c.Int32ul, "creator_id" / c.Bytes(4), "creator_revision" / c.Int32ul,
)
PciPath = c.Struct("device" / c.Int8ul, "function" / c.Int8ul)
DeviceScope = c.Struct(
    "type" / c.Int8ul,
    "length" / c.Rebuild(c.Int8ul, lambda ctx: 6 + 2 * len(ctx.path)),
    "flags" / c.Int8ul, "reserved" / c.Int8ul,
    "enumeration_id" / c.Int8ul, "start_bus_number" / c.Int8ul,
    "path" / c.Array((this.length - 6) // 2, PciPath),
)


def _scopes_size(ctx: Any) -> int:
    return sum(6 + 2 * len(s["path"]) for s in ctx.scopes)


Drhd = c.Struct(
    "type" / c.Const(RemappingType.DRHD, c.Int16ul),
    "length" / c.Rebuild(c.Int16ul, lambda ctx: 16 + _scopes_size(ctx)),
    "flags" / c.Int8ul, "size" / c.Int8ul, "segment" / c.Int16ul,
    "register_base_address" / c.Int64ul,
    "scopes" / c.FixedSized(this.length - 16, c.GreedyRange(DeviceScope)),
)
Atsr = c.Struct(
    "type" / c.Const(RemappingType.ATSR, c.Int16ul),
    "length" / c.Rebuild(c.Int16ul, lambda ctx: 8 + _scopes_size(ctx)),
    "flags" / c.Int8ul, "reserved" / c.Int8ul, "segment" / c.Int16ul,
    "scopes" / c.FixedSized(this.length - 8, c.GreedyRange(DeviceScope)),
)
OtherStructure = c.Struct(
    "type" / c.Int16ul, "length" / c.Rebuild(c.Int16ul, lambda ctx: 4 + len(ctx.data)),
    "data" / c.Bytes(this.length - 4),
)
RemappingStructure = c.Select(Drhd, Atsr, OtherStructure)
Dmar = c.Struct(
    "header" / AcpiHeader,
    "host_address_width" / c.Int8ul, "flags" / c.Int8ul, "reserved" / c.Bytes(10),
    "structures" / c.GreedyRange(RemappingStructure),
)


@dataclass
class Scope:
    """One device scope entry."""

    type: int
    start_bus: int
    path: list[tuple[int, int]]
    enumeration_id: int = 0

    @classmethod
    def endpoint(cls, rid: int) -> Scope:
        """The PCI endpoint ``bus << 8 | dev << 3 | fn`` (on its bus: a one-step path)."""
        return cls(ScopeType.PCI_ENDPOINT, rid >> 8, [((rid >> 3) & 0x1F, rid & 7)])


@dataclass
class Unit:
    """One remapping hardware unit (a DRHD)."""

    register_base: int
    segment: int = 0
    include_pci_all: bool = False
    scopes: list[Scope] = field(default_factory=list)


def _scope_doc(s: Scope) -> dict[str, Any]:
    return {"type": s.type, "flags": 0, "reserved": 0, "enumeration_id": s.enumeration_id,
            "start_bus_number": s.start_bus,
            "path": [{"device": d, "function": f} for d, f in s.path]}


def checksum(table: bytes) -> int:
    """The byte that makes the table sum to zero modulo 256."""
    return (-sum(table)) & 0xFF


def build_dmar(units: list[Unit], *, host_address_width: int, flags: int = 0,
               atsr_segments: tuple[int, ...] = (), oem_id: bytes = b"VIOMMU",
               oem_table_id: bytes = b"VIOMMUDM", creator_id: bytes = b"VMM ",
               creator_revision: int = 1) -> bytes:
    """A DMAR with one DRHD per unit and an ATSR (ALL_PORTS) per listed segment.  In each
    segment the INCLUDE_PCI_ALL unit comes last (§8.3: it must)."""
    by_segment = sorted(units, key=lambda u: (u.segment, u.include_pci_all))
    for seg in {u.segment for u in units}:
        if sum(u.include_pci_all for u in units if u.segment == seg) > 1:
            raise ValueError(f"segment {seg}: two INCLUDE_PCI_ALL units")
    structures: list[dict[str, Any]] = [
        {"flags": DRHD_INCLUDE_PCI_ALL if u.include_pci_all else 0, "size": 0,
         "segment": u.segment, "register_base_address": u.register_base,
         "scopes": [_scope_doc(s) for s in u.scopes]}
        for u in by_segment
    ]
    raw_structs = b"".join(Drhd.build(s) for s in structures)
    raw_structs += b"".join(Atsr.build({"flags": ATSR_ALL_PORTS, "reserved": 0, "segment": seg,
                                        "scopes": []}) for seg in atsr_segments)
    header = {"signature": b"DMAR", "length": 0, "revision": DMAR_REVISION, "checksum": 0,
              "oem_id": oem_id.ljust(6)[:6], "oem_table_id": oem_table_id.ljust(8)[:8],
              "oem_revision": 1, "creator_id": creator_id.ljust(4)[:4],
              "creator_revision": creator_revision}
    head: bytes = AcpiHeader.build(header)
    body = bytes([host_address_width, flags]) + bytes(10) + raw_structs
    table = bytearray(head + body)
    table[4:8] = len(table).to_bytes(4, "little")
    table[9] = checksum(bytes(table))
    return bytes(table)


def parse_dmar(raw: bytes) -> Any:
    """The parsed table (construct container); every problem is an ``AcpiDecodeError``."""
    if len(raw) < 48:
        raise AcpiDecodeError("shorter than a DMAR header", raw)
    if raw[:4] != b"DMAR":
        raise AcpiDecodeError(f"signature {raw[:4]!r} is not DMAR", raw)
    length = int.from_bytes(raw[4:8], "little")
    if length != len(raw):
        raise AcpiDecodeError(f"length field {length} but {len(raw)} bytes", raw)
    if sum(raw) & 0xFF:
        raise AcpiDecodeError("checksum does not sum to zero", raw)
    try:
        return Dmar.parse(raw)
    except (c.ConstructError, ValueError) as exc:
        raise AcpiDecodeError(str(exc), raw) from None
