"""The sans-IO viommu-user connection: bytes and fds in, reply bytes out.

A ``Connection`` frames the stream and validates every request in the fixed order of
protocol.md ("How the back-end reads a request"); what a request *does* is the ``Backend``'s
business.  The socket server, replay and the fuzzer all drive this same object.

Who is at fault, and how it shows:
- ``RequestError`` — the client asked for something the protocol refuses; its ``errno``
  becomes the reply's status.  Backends raise it; the connection answers it.
- a client that breaks framing (a short stream, an oversized message) gets the connection
  closed (``Connection.closed``) after any reply the protocol requires.
- anything else escaping a Backend is a bug in this project; it propagates.

File descriptors: fds count as part of a message when they arrive with a chunk whose first
byte is a header byte of that message.  The socket edge reads a header and then its payload
with separate ``recvmsg`` calls of exactly the wanted size (``Connection.wanted``), so fds sent
with any later byte land in a payload read and fail the request, as the contract requires.
Every fd received is closed once its request is answered; a backend that keeps one dups it.
"""

from __future__ import annotations

import contextlib
import enum
import errno as E
import logging
import os
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from protocols import messages as m
from protocols.messages import RegionSpec, Request

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the protocol refuses; the client's fault.  ``errno`` is positive."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or os.strerror(errno))
        self.errno = errno


class FaultReply(NamedTuple):
    """The fault record of a failed DMA or TRANSLATE (protocol.md)."""

    kind: int
    code: int
    address: int
    stage: int


class Received(NamedTuple):
    """A message as the connection received it (``Connection.received``)."""

    code: int
    flags: int
    size: int
    fds: tuple[int, ...]
    late_fds: bool
    """Whether fds came with a byte other than the header's (the request then fails)."""


class Backend(Protocol):
    """What a connection needs from the device side (vmm.guest.GuestSession implements it)."""

    def features(self) -> int: ...
    def set_features(self, features: int) -> None: ...
    def config_json(self) -> bytes: ...
    def set_mem_table(self, regions: list[RegionSpec], fds: list[int]) -> None: ...
    def add_mem_reg(self, region: RegionSpec, fd: int) -> None: ...
    def rem_mem_reg(self, region: RegionSpec) -> None: ...
    def reset(self, device: int) -> None: ...
    def mmio_window(self, device: int) -> int | None: ...
    def mmio_read(self, device: int, offset: int, size: int) -> int: ...
    def mmio_write(self, device: int, offset: int, size: int, value: int) -> None: ...
    def dma_owner(self, segment: int, requester: int) -> bool: ...
    def dma(
        self, segment: int, requester: int, pasid: int | None, iova: int, length: int,
        flags: int, data: bytes | None,
    ) -> bytes | FaultReply: ...
    def translate(
        self, segment: int, requester: int, pasid: int | None, iova: int, flags: int
    ) -> tuple[int, int, int] | FaultReply: ...
    def pv_iommu_op(self, subop: int, body: bytes) -> tuple[int, bytes]: ...
    def irq_vectors(self, device: int) -> int | None: ...
    def set_irq_fd(self, device: int, vector: int, fd: int) -> None: ...
    def set_backend_channel(self, fd: int) -> None: ...
    def page_request(self, segment: int, requester: int, pasid: int | None, flags: int,
                     address: int, group: int) -> int: ...


class Phase(enum.Enum):
    HEADER = "header"
    PAYLOAD = "payload"
    CLOSED = "closed"


_SIZE_BITS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
_NEEDS_FEATURE = {
    Request.PV_IOMMU_OP: m.Feature.PV_IOMMU,
    Request.SET_IRQ_FD: m.Feature.IRQ_FD,
    Request.SET_BACKEND_CHANNEL: m.Feature.BACKEND_CHANNEL,
    Request.TRANSLATE_BATCH: m.Feature.BATCH,
    Request.DMA_BATCH: m.Feature.BATCH,
    Request.PAGE_REQUEST: m.Feature.PAGE_REQUEST,
}
_FD_REQUESTS = {Request.SET_MEM_TABLE, Request.ADD_MEM_REG, Request.SET_IRQ_FD,
                Request.SET_BACKEND_CHANNEL}


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _expect_size(payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise RequestError(E.EINVAL, f"payload of {len(payload)} bytes, expected {size}")


class Connection:
    """One guest's stream, framed and validated; replies come back as bytes."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.phase = Phase.HEADER
        self._buf = bytearray()
        self._code = 0
        self._flags = 0
        self._size = 0
        self._fds: list[int] = []
        self._late_fds = False
        self._handlers: dict[int, Callable[[bytes, list[int]], bytes]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.GET_CONFIG: self._get_config,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.ADD_MEM_REG: self._add_mem_reg,
            Request.REM_MEM_REG: self._rem_mem_reg,
            Request.RESET: self._reset,
            Request.MMIO_READ: self._mmio_read,
            Request.MMIO_WRITE: self._mmio_write,
            Request.DMA: self._dma,
            Request.TRANSLATE: self._translate,
            Request.PV_IOMMU_OP: self._pv_iommu_op,
            Request.SET_IRQ_FD: self._set_irq_fd,
            Request.SET_BACKEND_CHANNEL: self._set_backend_channel,
            Request.TRANSLATE_BATCH: self._translate_batch,
            Request.DMA_BATCH: self._dma_batch,
            Request.PAGE_REQUEST: self._page_request,
        }

    # -- framing --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def _to(self, phase: Phase) -> None:
        if phase is Phase.CLOSED or self.phase is Phase.CLOSED:
            log.debug("connection %s -> %s", self.phase.value, phase.value)
        self.phase = phase

    def wanted(self) -> int:
        """Bytes that complete the current header or payload (0 once closed)."""
        if self.phase is Phase.HEADER:
            return m.HEADER_SIZE - len(self._buf)
        if self.phase is Phase.PAYLOAD:
            return self._size - len(self._buf)
        return 0

    def eof(self) -> None:
        """The peer ended the stream: whatever was half-read is dropped."""
        close_fds(self._fds)
        self._fds = []
        self._buf.clear()
        self._to(Phase.CLOSED)

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> bytes:
        """Feed one received chunk and the fds that came with it; returns the replies."""
        if not fds and not self._buf:
            # The socket edge's usual chunks: exactly one header, or exactly one payload.
            phase = self.phase
            if phase is Phase.PAYLOAD and len(data) == self._size:
                self.phase = Phase.HEADER
                return self.dispatch(data)
            if phase is Phase.HEADER and len(data) == m.HEADER_SIZE:
                code, flags, size = _HEADER_UNPACK(data)
                if 0 < size <= m.MAX_PAYLOAD:
                    self._code, self._flags, self._size = code, flags, size
                    self.phase = Phase.PAYLOAD
                    return b""
        if self.phase is Phase.CLOSED:
            close_fds(fds)
            return b""
        if fds:
            self._fds.extend(fds)
            if self.phase is Phase.PAYLOAD:
                self._late_fds = True
        out: list[bytes] = []
        pos = 0
        end = len(data)
        buf = self._buf
        while pos < end:
            if self.phase is Phase.HEADER:
                if not buf and end - pos >= m.HEADER_SIZE:
                    code, flags, size = m.HEADER.codec.unpack_from(data, pos)
                    pos += m.HEADER_SIZE
                else:
                    take = min(m.HEADER_SIZE - len(buf), end - pos)
                    buf += data[pos : pos + take]
                    pos += take
                    if len(buf) < m.HEADER_SIZE:
                        break
                    code, flags, size = m.HEADER.codec.unpack_from(buf, 0)
                    buf.clear()
                if size > m.MAX_PAYLOAD:
                    out.append(m.reply(code, -E.E2BIG))
                    close_fds(self._fds)
                    self._fds = []
                    self._to(Phase.CLOSED)
                    break
                self._code, self._flags, self._size = code, flags, size
                if size == 0:
                    out.append(self.dispatch(b""))
                    continue
                if end - pos >= size:
                    payload = data[pos : pos + size]
                    pos += size
                    out.append(self.dispatch(payload))
                    continue
                self.phase = Phase.PAYLOAD
            else:
                if not buf and end - pos >= self._size:
                    # the usual case: the payload arrived whole in one read, so no copy
                    payload = data if pos == 0 and end == self._size else data[pos : pos + self._size]
                    pos += self._size
                    self.phase = Phase.HEADER
                    out.append(self.dispatch(payload))
                    continue
                take = min(self._size - len(buf), end - pos)
                buf += data[pos : pos + take]
                pos += take
                if len(buf) < self._size:
                    break
                payload = bytes(buf)
                buf.clear()
                self.phase = Phase.HEADER
                out.append(self.dispatch(payload))
        return b"".join(out)

    # -- dispatch in protocol order ---------------------------------------------------------

    @property
    def received(self) -> Received:
        """The header fields and fds of the message ``dispatch`` is answering.  A subclass
        wrapping ``dispatch`` reads it before calling the base, which takes the fds."""
        return Received(self._code, self._flags, self._size, tuple(self._fds), self._late_fds)

    def dispatch(self, payload: bytes) -> bytes:
        """Answer one complete message (``received``, and its ``payload``): validate it in
        protocol.md's order and run its handler.  Called once per message, with the stream
        already framed; a subclass may wrap it to observe every message (vmm/record.py)."""
        code, flags = self._code, self._flags
        fds, late = self._fds, self._late_fds
        self._fds, self._late_fds = [], False
        try:
            if flags & m.FLAG_VERSION_MASK != m.VERSION or flags & ~m.FLAG_VERSION_MASK:
                # Version, the REPLY bit and reserved bits, all step 4.
                raise RequestError(E.EINVAL, f"bad flags {flags:#x}")
            handler = self._handlers.get(code)
            if handler is None:
                raise RequestError(E.ENOSYS, f"unknown request {code}")
            need = _NEEDS_FEATURE.get(code)  # type: ignore[call-overload]
            if need is not None and not self.backend.features() & need:
                raise RequestError(E.ENOSYS, f"request {code} needs a feature not offered")
            if fds and (late or code not in _FD_REQUESTS):
                raise RequestError(E.EINVAL, "fds on a request that takes none, or after the header")
            return handler(payload, fds)
        except RequestError as exc:
            return m.reply(code, -exc.errno)
        finally:
            if fds:
                close_fds(fds)

    # -- requests ---------------------------------------------------------------------------

    @staticmethod
    def _want_fds(fds: list[int], n: int) -> None:
        if len(fds) != n:
            raise RequestError(E.EINVAL, f"{len(fds)} fds, expected {n}")

    def _get_features(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, 0)
        return m.reply(Request.GET_FEATURES, 0, m.FEATURES.pack(self.backend.features()))

    def _set_features(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, m.FEATURES.size)
        (features,) = m.FEATURES.unpack(payload)
        if features & ~self.backend.features():
            raise RequestError(E.EINVAL, f"features {features:#x} not offered")
        self.backend.set_features(features)
        return m.reply(Request.SET_FEATURES, 0)

    def _get_config(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, 0)
        return m.reply(Request.GET_CONFIG, 0, self.backend.config_json())

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> bytes:
        if len(payload) < m.MEM_TABLE_HEAD.size:
            raise RequestError(E.EINVAL, "short SET_MEM_TABLE")
        nregions, reserved = m.MEM_TABLE_HEAD.unpack(payload)
        self._want_fds(fds, nregions)
        _expect_size(payload, m.MEM_TABLE_HEAD.size + m.REGION.size * nregions)
        if reserved:
            raise RequestError(E.EINVAL, "reserved field set")
        regions = [
            RegionSpec(*m.REGION.unpack(payload, m.MEM_TABLE_HEAD.size + m.REGION.size * i))
            for i in range(nregions)
        ]
        self.backend.set_mem_table(regions, fds)
        return m.reply(Request.SET_MEM_TABLE, 0)

    def _add_mem_reg(self, payload: bytes, fds: list[int]) -> bytes:
        self._want_fds(fds, 1)
        _expect_size(payload, m.REGION.size)
        self.backend.add_mem_reg(RegionSpec(*m.REGION.unpack(payload)), fds[0])
        return m.reply(Request.ADD_MEM_REG, 0)

    def _rem_mem_reg(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, m.REGION.size)
        self.backend.rem_mem_reg(RegionSpec(*m.REGION.unpack(payload)))
        return m.reply(Request.REM_MEM_REG, 0)

    def _reset(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, m.RESET.size)
        device, reserved = m.RESET.unpack(payload)
        if reserved:
            raise RequestError(E.EINVAL, "reserved field set")
        if device != m.ALL_DEVICES and self.backend.mmio_window(device) is None:
            raise RequestError(E.ENODEV, f"no device {device}")
        self.backend.reset(device)
        return m.reply(Request.RESET, 0)

    def _mmio_target(self, device: int, size: int, offset: int) -> None:
        window = self.backend.mmio_window(device)
        if window is None:
            raise RequestError(E.ENODEV, f"no device {device}")
        if size not in _SIZE_BITS or offset % size or offset + size > window:
            raise RequestError(E.EINVAL, f"bad MMIO access size {size} at {offset:#x}")

    def _mmio_read(self, payload: bytes, fds: list[int]) -> bytes:
        # The hottest request: the checks of _mmio_target, inlined.
        if len(payload) != 16:
            raise RequestError(E.EINVAL, "MMIO_READ payload size")
        device, size, offset = _MMIO_READ_UNPACK(payload)
        window = self.backend.mmio_window(device)
        if window is None or size not in _SIZE_BITS or offset % size or offset + size > window:
            self._mmio_target(device, size, offset)  # raises the right error
        return _MMIO_READ_REPLY_PACK(_MMIO_READ_CODE, m.REPLY_FLAGS, 16, 0, 0,
                                     self.backend.mmio_read(device, offset, size))

    def _mmio_write(self, payload: bytes, fds: list[int]) -> bytes:
        if len(payload) != 24:
            raise RequestError(E.EINVAL, "MMIO_WRITE payload size")
        device, size, offset, value = m.MMIO_WRITE.codec.unpack(payload)
        self._mmio_target(device, size, offset)
        if value & ~_SIZE_BITS[size]:
            raise RequestError(E.EINVAL, f"value {value:#x} wider than {size} bytes")
        self.backend.mmio_write(device, offset, size, value)
        return m.REPLY_HEAD.pack(Request.MMIO_WRITE, m.REPLY_FLAGS, 8, 0, 0)

    def _dma_source(self, segment: int, requester: int, flags: int) -> None:
        if flags & m.DMA_FLAGS_RESERVED:
            raise RequestError(E.EINVAL, f"reserved DMA flags {flags:#x}")
        if not self.backend.dma_owner(segment, requester):
            raise RequestError(E.ENODEV, f"no IOMMU owns {segment}:{requester:#x}")

    def _dma(self, payload: bytes, fds: list[int]) -> bytes:
        if len(payload) < m.DMA.size:
            raise RequestError(E.EINVAL, "short DMA")
        requester, pasid, iova, length, flags, segment = _DMA_UNPACK_FROM(payload)
        writes = flags & _DMA_WRITE
        if len(payload) != 24 + (length if writes else 0):
            raise RequestError(E.EINVAL, "DMA payload size does not match its length")
        self._dma_source(segment, requester, flags)
        if not 1 <= length <= m.MAX_DMA_LENGTH or iova + length > 1 << 64:
            raise RequestError(E.EINVAL, f"bad DMA length {length} at {iova:#x}")
        data = payload[m.DMA.size :] if writes else None
        result = self.backend.dma(
            segment, requester, None if pasid == m.NO_PASID else pasid, iova, length, flags, data
        )
        if isinstance(result, FaultReply):
            return m.reply(Request.DMA, -E.EFAULT, m.FAULT_RECORD.pack(*result, 0))
        return _REPLY_HEAD_PACK(_DMA_CODE, m.REPLY_FLAGS, 8 + len(result), 0, 0) + result

    def _translate(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, m.TRANSLATE.size)
        requester, pasid, iova, flags, segment, reserved = m.TRANSLATE.unpack(payload)
        if reserved:
            raise RequestError(E.EINVAL, "reserved field set")
        self._dma_source(segment, requester, flags)
        result = self.backend.translate(
            segment, requester, None if pasid == m.NO_PASID else pasid, iova, flags
        )
        if isinstance(result, FaultReply):
            return m.reply(Request.TRANSLATE, -E.EFAULT, m.FAULT_RECORD.pack(*result, 0))
        return m.reply(Request.TRANSLATE, 0, m.TRANSLATE_RESULT.pack(*result, 0))

    def _pv_iommu_op(self, payload: bytes, fds: list[int]) -> bytes:
        if len(payload) < m.PV_IOMMU_HEAD.size:
            raise RequestError(E.EINVAL, "short PV_IOMMU_OP")
        subop, reserved = m.PV_IOMMU_HEAD.unpack(payload)
        if reserved:
            raise RequestError(E.EINVAL, "reserved field set")
        status, body = self.backend.pv_iommu_op(subop, payload[m.PV_IOMMU_HEAD.size :])
        return m.reply(Request.PV_IOMMU_OP, status, body)

    def _set_irq_fd(self, payload: bytes, fds: list[int]) -> bytes:
        self._want_fds(fds, 1)
        _expect_size(payload, m.SET_IRQ_FD.size)
        device, vector = m.SET_IRQ_FD.unpack(payload)
        vectors = self.backend.irq_vectors(device)
        if vectors is None:
            raise RequestError(E.ENODEV, f"no device {device}")
        if vector >= vectors:
            raise RequestError(E.EINVAL, f"device {device} has {vectors} vectors")
        self.backend.set_irq_fd(device, vector, fds[0])
        return m.reply(Request.SET_IRQ_FD, 0)

    def _set_backend_channel(self, payload: bytes, fds: list[int]) -> bytes:
        self._want_fds(fds, 1)
        _expect_size(payload, 0)
        self.backend.set_backend_channel(fds[0])
        return m.reply(Request.SET_BACKEND_CHANNEL, 0)

    # -- project additions (protocols/protocol.md §2) -----------------------------------------

    def _batch_count(self, payload: bytes) -> int:
        if len(payload) < m.BATCH_HEAD.size:
            raise RequestError(E.EINVAL, "short batch")
        count, reserved = m.BATCH_HEAD.unpack(payload)
        if count > m.MAX_BATCH:
            raise RequestError(E.EINVAL, f"batch of {count} entries")
        return int(count)

    def _translate_batch(self, payload: bytes, fds: list[int]) -> bytes:
        count = self._batch_count(payload)
        _expect_size(payload, m.BATCH_HEAD.size + m.TRANSLATE.size * count)
        if m.BATCH_HEAD.unpack(payload)[1]:
            raise RequestError(E.EINVAL, "reserved field set")
        backend = self.backend
        out: list[bytes] = []
        ok_head = m.STATUS.pack(0, 0)
        pack_result = m.TRANSLATE_RESULT.codec.pack
        pack_fault = m.FAULT_RECORD.codec.pack
        fault_head = m.STATUS.pack(-E.EFAULT, 0)
        for requester, pasid, iova, flags, segment, reserved in m.TRANSLATE.codec.iter_unpack(
            memoryview(payload)[m.BATCH_HEAD.size :]
        ):
            if reserved or flags & m.DMA_FLAGS_RESERVED:
                out.append(_ENTRY_EINVAL)
                continue
            if not backend.dma_owner(segment, requester):
                out.append(_ENTRY_ENODEV)
                continue
            result = backend.translate(
                segment, requester, None if pasid == m.NO_PASID else pasid, iova, flags
            )
            if isinstance(result, FaultReply):
                out.append(fault_head + pack_fault(*result, 0))
            else:
                out.append(ok_head + pack_result(*result, 0))
        return m.reply(Request.TRANSLATE_BATCH, 0, b"".join(out))

    def _dma_batch(self, payload: bytes, fds: list[int]) -> bytes:
        count = self._batch_count(payload)
        if m.BATCH_HEAD.unpack(payload)[1]:
            raise RequestError(E.EINVAL, "reserved field set")
        entries: list[tuple[int, int, int, int, int, int, int]] = []
        pos = m.BATCH_HEAD.size
        reads = 0
        for _ in range(count):
            if pos + m.DMA.size > len(payload):
                raise RequestError(E.EINVAL, "batch shorter than its entries")
            requester, pasid, iova, length, flags, segment = m.DMA.unpack(payload, pos)
            pos += m.DMA.size
            data_at = pos
            if flags & m.DmaFlag.WRITE:
                pos += length
            elif length <= m.MAX_DMA_LENGTH:
                reads += length
            entries.append((requester, pasid, iova, length, flags, segment, data_at))
        if pos != len(payload):
            raise RequestError(E.EINVAL, "batch size does not match its entries")
        if reads > m.MAX_DMA_LENGTH:
            raise RequestError(E.EINVAL, "batch reads more than 1 MiB")
        out: list[bytes] = []
        for requester, pasid, iova, length, flags, segment, data_at in entries:
            if flags & m.DMA_FLAGS_RESERVED:
                out.append(m.BATCH_ENTRY_STATUS.pack(-E.EINVAL, 0))
                continue
            if not self.backend.dma_owner(segment, requester):
                out.append(m.BATCH_ENTRY_STATUS.pack(-E.ENODEV, 0))
                continue
            if not 1 <= length <= m.MAX_DMA_LENGTH or iova + length > 1 << 64:
                out.append(m.BATCH_ENTRY_STATUS.pack(-E.EINVAL, 0))
                continue
            writes = bool(flags & m.DmaFlag.WRITE)
            result = self.backend.dma(
                segment, requester, None if pasid == m.NO_PASID else pasid, iova, length,
                flags, payload[data_at : data_at + length] if writes else None,
            )
            if isinstance(result, FaultReply):
                record = m.FAULT_RECORD.pack(*result, 0)
                out.append(m.BATCH_ENTRY_STATUS.pack(-E.EFAULT, len(record)) + record)
            else:
                out.append(m.BATCH_ENTRY_STATUS.pack(0, len(result)) + result)
        return m.reply(Request.DMA_BATCH, 0, b"".join(out))

    def _page_request(self, payload: bytes, fds: list[int]) -> bytes:
        _expect_size(payload, m.PAGE_REQUEST.size)
        segment, rsv0, requester, pasid, flags, address, group, rsv1 = m.PAGE_REQUEST.unpack(
            payload)
        if rsv0 or rsv1 or flags & ~0x1F:
            raise RequestError(E.EINVAL, "reserved field set")
        if not self.backend.dma_owner(segment, requester):
            raise RequestError(E.ENODEV, f"no IOMMU owns {segment}:{requester:#x}")
        status = self.backend.page_request(
            segment, requester, None if pasid == m.NO_PASID else pasid, flags, address, group)
        return m.reply(Request.PAGE_REQUEST, status)


_HEADER_UNPACK = m.HEADER.codec.unpack
_DMA_UNPACK_FROM = m.DMA.codec.unpack_from
_DMA_WRITE = int(m.DmaFlag.WRITE)
_DMA_CODE = int(Request.DMA)
_REPLY_HEAD_PACK = m.REPLY_HEAD.pack
_MMIO_READ_UNPACK = m.MMIO_READ.codec.unpack
_MMIO_READ_CODE = int(Request.MMIO_READ)
_MMIO_READ_REPLY_PACK = struct.Struct("<IIIiIQ").pack  # header, status and value in one pack
_ENTRY_EINVAL = m.STATUS.pack(-E.EINVAL, 0) + bytes(24)
_ENTRY_ENODEV = m.STATUS.pack(-E.ENODEV, 0) + bytes(24)
