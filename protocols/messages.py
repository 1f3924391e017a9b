"""viommu-user v1 message layouts (../shared/protocol.md), declared once with construct.

Every header, request payload, reply payload and back-end channel message is declared here
as a construct ``Struct``.  construct is the single source of truth but is slow (tens of µs
per parse), so the hot path uses ``struct.Struct`` codecs *derived from* these declarations
by ``fast()``; tests/test_messages.py proves both agree on every layout.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import construct as c

VERSION = 1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_RESERVED_MASK = 0xFFFF_FFF8
HEADER_SIZE = 12
MAX_PAYLOAD = (1 << 20) + 64
MAX_DMA_LENGTH = 1 << 20
NO_PASID = 0xFFFF_FFFF
ALL_DEVICES = 0xFFFF_FFFF


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    GET_CONFIG = 3
    SET_MEM_TABLE = 4
    ADD_MEM_REG = 5
    REM_MEM_REG = 6
    RESET = 7
    MMIO_READ = 16
    MMIO_WRITE = 17
    DMA = 32
    TRANSLATE = 33
    PV_IOMMU_OP = 48
    SET_IRQ_FD = 64
    SET_BACKEND_CHANNEL = 65
    # Project additions (protocols/protocol.md §2).
    TRANSLATE_BATCH = 128
    DMA_BATCH = 129
    PAGE_REQUEST = 130


class BackendMessage(enum.IntEnum):
    IRQ = 1
    ATC_INVALIDATE = 2
    PAGE_RESPONSE = 128


class Feature(enum.IntFlag):
    PV_IOMMU = 1 << 0
    BACKEND_CHANNEL = 1 << 1
    IRQ_FD = 1 << 2
    BATCH = 1 << 32
    PAGE_REQUEST = 1 << 33


class PageRequestFlag(enum.IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1
    EXECUTE = 1 << 2
    PRIVILEGED = 1 << 3
    LAST = 1 << 4


class DmaFlag(enum.IntFlag):
    WRITE = 1 << 0
    PRIVILEGED = 1 << 1
    EXECUTE = 1 << 2


DMA_FLAGS_RESERVED = 0xFFFF & ~0x7

# -- declarations ----------------------------------------------------------------------

Header = c.Struct("request" / c.Int32ul, "flags" / c.Int32ul, "size" / c.Int32ul)
ReplyStatus = c.Struct("status" / c.Int32sl, "reserved" / c.Int32ul)

Features = c.Struct("features" / c.Int64ul)
Region = c.Struct("gpa" / c.Int64ul, "size" / c.Int64ul, "mmap_offset" / c.Int64ul)
MemTableHead = c.Struct("nregions" / c.Int32ul, "reserved" / c.Int32ul)
Reset = c.Struct("device" / c.Int32ul, "reserved" / c.Int32ul)
MmioRead = c.Struct("device" / c.Int32ul, "size" / c.Int32ul, "offset" / c.Int64ul)
MmioWrite = c.Struct(
    "device" / c.Int32ul, "size" / c.Int32ul, "offset" / c.Int64ul, "value" / c.Int64ul
)
MmioValue = c.Struct("value" / c.Int64ul)
Dma = c.Struct(
    "requester" / c.Int32ul, "pasid" / c.Int32ul, "iova" / c.Int64ul,
    "length" / c.Int32ul, "flags" / c.Int16ul, "segment" / c.Int16ul,
)
Translate = c.Struct(
    "requester" / c.Int32ul, "pasid" / c.Int32ul, "iova" / c.Int64ul,
    "flags" / c.Int16ul, "segment" / c.Int16ul, "reserved" / c.Int32ul,
)
TranslateResult = c.Struct(
    "address" / c.Int64ul, "size" / c.Int64ul, "perms" / c.Int32ul, "reserved" / c.Int32ul
)
FaultRecord = c.Struct(
    "kind" / c.Int32ul, "code" / c.Int32ul, "address" / c.Int64ul,
    "stage" / c.Int32ul, "reserved" / c.Int32ul,
)
PvIommuHead = c.Struct("subop" / c.Int32ul, "reserved" / c.Int32ul)
BatchHead = c.Struct("count" / c.Int32ul, "reserved" / c.Int32ul)
BatchEntryStatus = c.Struct("status" / c.Int32sl, "length" / c.Int32ul)
PageRequest = c.Struct(
    "segment" / c.Int16ul, "reserved0" / c.Int16ul, "requester" / c.Int32ul,
    "pasid" / c.Int32ul, "flags" / c.Int32ul, "address" / c.Int64ul,
    "group" / c.Int32ul, "reserved1" / c.Int32ul,
)
PageResponse = c.Struct(
    "segment" / c.Int16ul, "reserved0" / c.Int16ul, "requester" / c.Int32ul,
    "pasid" / c.Int32ul, "group" / c.Int32ul, "code" / c.Int32ul, "reserved1" / c.Int32ul,
)
SetIrqFd = c.Struct("device" / c.Int32ul, "vector" / c.Int32ul)

IrqMessage = c.Struct(
    "device" / c.Int32ul, "vector" / c.Int32ul, "msi_address" / c.Int64ul,
    "msi_data" / c.Int32ul, "reserved" / c.Int32ul,
)
AtcInvalidate = c.Struct(
    "segment" / c.Int16ul, "reserved0" / c.Int16ul, "requester" / c.Int32ul,
    "pasid" / c.Int32ul, "reserved1" / c.Int32ul, "address" / c.Int64ul, "size" / c.Int64ul,
)

ALL_LAYOUTS: dict[str, c.Struct] = {
    name: value for name, value in globals().items() if isinstance(value, c.Struct)
}


# -- fast codecs derived from the declarations -------------------------------------------

@dataclass(frozen=True)
class FastCodec:
    """A struct.Struct with the field order of a construct declaration."""

    names: tuple[str, ...]
    codec: struct.Struct

    @property
    def size(self) -> int:
        return self.codec.size

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Any, ...]:
        return self.codec.unpack_from(data, offset)

    def pack(self, *values: int) -> bytes:
        return self.codec.pack(*values)


def fast(layout: c.Struct) -> FastCodec:
    """Derive a struct codec from a construct Struct of little-endian integer fields."""
    fmt = "<"
    names: list[str] = []
    for sub in layout.subcons:
        inner = sub.subcon if isinstance(sub, c.Renamed) else sub
        if not isinstance(inner, c.FormatField) or not inner.fmtstr.startswith("<"):
            raise TypeError(f"{sub!r} is not a little-endian integer field")
        fmt += inner.fmtstr[1:]
        names.append(sub.name)
    return FastCodec(tuple(names), struct.Struct(fmt))


HEADER = fast(Header)
STATUS = fast(ReplyStatus)
FEATURES = fast(Features)
REGION = fast(Region)
MEM_TABLE_HEAD = fast(MemTableHead)
RESET = fast(Reset)
MMIO_READ = fast(MmioRead)
MMIO_WRITE = fast(MmioWrite)
MMIO_VALUE = fast(MmioValue)
DMA = fast(Dma)
TRANSLATE = fast(Translate)
TRANSLATE_RESULT = fast(TranslateResult)
FAULT_RECORD = fast(FaultRecord)
PV_IOMMU_HEAD = fast(PvIommuHead)
BATCH_HEAD = fast(BatchHead)
BATCH_ENTRY_STATUS = fast(BatchEntryStatus)
PAGE_REQUEST = fast(PageRequest)
PAGE_RESPONSE = fast(PageResponse)
MAX_BATCH = 16384
SET_IRQ_FD = fast(SetIrqFd)
IRQ_MESSAGE = fast(IrqMessage)
ATC_INVALIDATE = fast(AtcInvalidate)

# Reply header + status word, packed in one call on the hot path.
REPLY_HEAD = struct.Struct("<IIIiI")
REPLY_FLAGS = VERSION | FLAG_REPLY


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """One memory region as the wire gives it."""

    gpa: int
    size: int
    mmap_offset: int


def reply(code: int, status: int, data: bytes = b"") -> bytes:
    """A whole reply message: header, status word, and data."""
    return REPLY_HEAD.pack(code, REPLY_FLAGS, 8 + len(data), status, 0) + data


def request(code: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    """A whole request message (for clients and tests)."""
    return HEADER.pack(code, flags, len(payload)) + payload


def backend_message(code: int, payload: bytes) -> bytes:
    return HEADER.pack(code, VERSION, len(payload)) + payload
