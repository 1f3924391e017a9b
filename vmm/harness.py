"""The guest driver harness: a viommu-user client that plays the guest.

``Client`` (trio) and ``BlockingClient`` (plain sockets, for benchmarks and scripts) speak the
wire protocol; ``GuestRam`` is guest memory the harness allocates as a memfd, maps locally
and hands to the daemon; ``BackendChannelReader`` receives interrupts and ATC invalidations.
Drivers for the IOMMU models (vmm/drivers/) are written on top of these.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from protocols import messages as m
from protocols.messages import RegionSpec, Request
from vmm.memory import make_memfd


class ClientError(Exception):
    """The daemon refused a request (``status`` is the negative errno)."""

    def __init__(self, code: int, status: int) -> None:
        super().__init__(f"request {code} failed: {os.strerror(-status)} ({status})")
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Reply:
    code: int
    flags: int
    status: int
    data: bytes


@dataclass(frozen=True)
class Fault:
    """A DMA or TRANSLATE fault record."""

    kind: int
    code: int
    address: int
    stage: int

    @classmethod
    def decode(cls, data: bytes) -> Fault:
        kind, code, address, stage, _ = m.FAULT_RECORD.unpack(data)
        return cls(kind, code, address, stage)


@dataclass(frozen=True)
class Translation:
    address: int
    size: int
    perms: int


class GuestRam:
    """A guest RAM region the harness owns: a memfd mapped here and shared with the daemon."""

    def __init__(self, gpa: int, size: int) -> None:
        self.gpa = gpa
        self.size = size
        self.fd = make_memfd(size)
        self.mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        self._next = gpa

    @property
    def spec(self) -> RegionSpec:
        return RegionSpec(self.gpa, self.size, 0)

    def alloc(self, size: int, align: int = 4096) -> int:
        """A bump allocation of guest-physical memory (never freed: tests are short)."""
        gpa = (self._next + align - 1) & ~(align - 1)
        if gpa + size > self.gpa + self.size:
            raise MemoryError("guest RAM exhausted")
        self._next = gpa + size
        self.mm[gpa - self.gpa : gpa - self.gpa + size] = bytes(size)
        return gpa

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - self.gpa
        self.mm[off : off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        off = gpa - self.gpa
        return self.mm[off : off + length]

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<Q", value))

    def read_u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.read(gpa, 8))[0])

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<I", value))

    def read_u32(self, gpa: int) -> int:
        return int(struct.unpack("<I", self.read(gpa, 4))[0])

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class RamPort:
    """A ``devices.model.MemoryPort`` over a ``GuestRam``: the table builders write through it
    as a guest driver writes its own RAM."""

    def __init__(self, ram: GuestRam) -> None:
        self.ram = ram

    def _inside(self, gpa: int, length: int) -> bool:
        return self.ram.gpa <= gpa and gpa + length <= self.ram.gpa + self.ram.size

    def read(self, gpa: int, length: int) -> bytes | None:
        return bytes(self.ram.read(gpa, length)) if self._inside(gpa, length) else None

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        if not self._inside(gpa, len(data)):
            return False
        self.ram.write(gpa, bytes(data))
        return True

    def read_u32(self, gpa: int) -> int | None:
        return self.ram.read_u32(gpa) if self._inside(gpa, 4) else None

    def read_u64(self, gpa: int) -> int | None:
        return self.ram.read_u64(gpa) if self._inside(gpa, 8) else None

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.write(gpa, struct.pack("<I", value))

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.write(gpa, struct.pack("<Q", value))


def _region_payload(regions: Sequence[RegionSpec]) -> bytes:
    return m.MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(
        m.REGION.pack(r.gpa, r.size, r.mmap_offset) for r in regions
    )


def _fds_cmsg(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def dma_payload(requester: int, iova: int, length: int, *, pasid: int = m.NO_PASID,
                flags: int = 0, segment: int = 0, data: bytes = b"") -> bytes:
    return m.DMA.pack(requester, pasid, iova, length, flags, segment) + data


class Client:
    """A trio client of the daemon (one guest)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._rx = bytearray()

    @classmethod
    async def connect(cls, path: str) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        return cls(sock)

    @classmethod
    def in_process(cls, nursery: trio.Nursery, devices: Sequence[str], *,
                   record: str | None = None) -> Client:
        """A client of a guest session served in this process (``devices`` as for ``vmm
        daemon --device``), over a socketpair: no daemon, no socket path.  ``record``: the
        session is recorded to that trace file (``vmm replay FILE``); it is complete once
        the client has closed and the session task has ended."""
        from vmm.config import DaemonConfig, build_devices
        from vmm.daemon import serve_connection
        from vmm.guest import GuestSession
        from vmm.record import Recorder

        config = DaemonConfig(build_devices(list(devices)))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.setblocking(False)
        recorder = Recorder(record, config, source="vmm.harness") if record else None
        nursery.start_soon(serve_connection, theirs, GuestSession(config, recorder=recorder),
                           recorder)
        return cls(ours)

    async def aclose(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- raw messages ------------------------------------------------------------------------

    async def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        view = memoryview(data)
        first = True
        while view:
            try:
                if first and fds:
                    sent = self.sock.sendmsg([view], _fds_cmsg(fds))
                else:
                    sent = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            first = False
            view = view[sent:]

    async def _recv_exact(self, n: int) -> bytes:
        while len(self._rx) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._rx)))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if not chunk:
                raise EOFError("daemon closed the connection")
            self._rx += chunk
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    async def recv_reply(self) -> Reply:
        code, flags, size = m.HEADER.unpack(await self._recv_exact(m.HEADER_SIZE))
        payload = await self._recv_exact(size)
        status, _ = m.STATUS.unpack(payload) if size >= 8 else (0, 0)
        return Reply(code, flags, status, payload[8:])

    async def call(self, code: int, payload: bytes = b"", fds: Sequence[int] = (),
                   flags: int = m.VERSION) -> Reply:
        await self.send_raw(m.request(code, payload, flags), fds)
        return await self.recv_reply()

    async def ok(self, code: int, payload: bytes = b"", fds: Sequence[int] = ()) -> bytes:
        reply = await self.call(code, payload, fds)
        if reply.status:
            raise ClientError(code, reply.status)
        return reply.data

    # -- typed requests --------------------------------------------------------------------

    async def get_features(self) -> int:
        return int(m.FEATURES.unpack(await self.ok(Request.GET_FEATURES))[0])

    async def set_features(self, features: int) -> None:
        await self.ok(Request.SET_FEATURES, m.FEATURES.pack(features))

    async def get_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self.ok(Request.GET_CONFIG))
        return doc

    async def set_mem_table(self, rams: Sequence[GuestRam]) -> None:
        await self.ok(Request.SET_MEM_TABLE, _region_payload([r.spec for r in rams]),
                      [r.fd for r in rams])

    async def add_mem_reg(self, ram: GuestRam) -> None:
        s = ram.spec
        await self.ok(Request.ADD_MEM_REG, m.REGION.pack(s.gpa, s.size, s.mmap_offset), [ram.fd])

    async def rem_mem_reg(self, ram: GuestRam) -> None:
        s = ram.spec
        await self.ok(Request.REM_MEM_REG, m.REGION.pack(s.gpa, s.size, s.mmap_offset))

    async def reset(self, device: int = m.ALL_DEVICES) -> None:
        await self.ok(Request.RESET, m.RESET.pack(device, 0))

    async def mmio_read(self, device: int, offset: int, size: int = 4) -> int:
        data = await self.ok(Request.MMIO_READ, m.MMIO_READ.pack(device, size, offset))
        return int(m.MMIO_VALUE.unpack(data)[0])

    async def mmio_write(self, device: int, offset: int, value: int, size: int = 4) -> None:
        await self.ok(Request.MMIO_WRITE, m.MMIO_WRITE.pack(device, size, offset, value))

    async def dma(self, requester: int, iova: int, length: int = 0, *, data: bytes = b"",
                  pasid: int = m.NO_PASID, segment: int = 0, flags: int = 0) -> bytes | Fault:
        """Read ``length`` bytes, or write ``data`` (WRITE is set for you)."""
        if data:
            flags |= m.DmaFlag.WRITE
            length = len(data)
        reply = await self.call(Request.DMA, dma_payload(
            requester, iova, length, pasid=pasid, flags=flags, segment=segment, data=data))
        if reply.status == -14:  # -EFAULT
            return Fault.decode(reply.data)
        if reply.status:
            raise ClientError(Request.DMA, reply.status)
        return reply.data

    async def translate(self, requester: int, iova: int, *, pasid: int = m.NO_PASID,
                        segment: int = 0, flags: int = 0) -> Translation | Fault:
        reply = await self.call(Request.TRANSLATE, m.TRANSLATE.pack(
            requester, pasid, iova, flags, segment, 0))
        if reply.status == -14:
            return Fault.decode(reply.data)
        if reply.status:
            raise ClientError(Request.TRANSLATE, reply.status)
        address, size, perms, _ = m.TRANSLATE_RESULT.unpack(reply.data)
        return Translation(address, size, perms)

    async def set_irq_fd(self, device: int, vector: int, fd: int) -> None:
        await self.ok(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(device, vector), [fd])

    async def open_backend_channel(self) -> BackendChannelReader:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self.ok(Request.SET_BACKEND_CHANNEL, b"", [theirs.fileno()])
        finally:
            theirs.close()
        return BackendChannelReader(ours)


@dataclass(frozen=True)
class BackendEvent:
    code: int
    fields: dict[str, int]


class BackendChannelReader:
    """The front-end's end of the back-end channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._rx = bytearray()

    def _parse(self) -> BackendEvent | None:
        if len(self._rx) < m.HEADER_SIZE:
            return None
        code, _, size = m.HEADER.unpack(self._rx)
        if len(self._rx) < m.HEADER_SIZE + size:
            return None
        payload = bytes(self._rx[m.HEADER_SIZE : m.HEADER_SIZE + size])
        del self._rx[: m.HEADER_SIZE + size]
        codec = {m.BackendMessage.IRQ: m.IRQ_MESSAGE,
                 m.BackendMessage.PAGE_RESPONSE: m.PAGE_RESPONSE}.get(code, m.ATC_INVALIDATE)
        return BackendEvent(code, dict(zip(codec.names, codec.unpack(payload), strict=True)))

    def poll(self) -> list[BackendEvent]:
        """Every message already received, without waiting."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._rx += chunk
        events = []
        while (event := self._parse()) is not None:
            events.append(event)
        return events

    async def next(self) -> BackendEvent:
        while (event := self._parse()) is None:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if not chunk:
                raise EOFError("back-end channel closed")
            self._rx += chunk
        return event

    def close(self) -> None:
        self.sock.close()


class BlockingClient:
    """The same protocol over a blocking socket: for benchmarks and simple scripts."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def call(self, code: int, payload: bytes = b"", fds: Sequence[int] = ()) -> Reply:
        msg = m.request(code, payload)
        if fds:
            self.sock.sendmsg([msg], _fds_cmsg(fds))
        else:
            self.sock.sendall(msg)
        return self.recv_reply()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("daemon closed the connection")
            buf += chunk
        return bytes(buf)

    def recv_reply(self) -> Reply:
        code, flags, size = m.HEADER.unpack(self._recv_exact(m.HEADER_SIZE))
        payload = self._recv_exact(size)
        status, _ = m.STATUS.unpack(payload) if size >= 8 else (0, 0)
        return Reply(code, flags, status, payload[8:])

    def set_mem_table(self, rams: Sequence[GuestRam]) -> None:
        reply = self.call(Request.SET_MEM_TABLE, _region_payload([r.spec for r in rams]),
                          [r.fd for r in rams])
        if reply.status:
            raise ClientError(Request.SET_MEM_TABLE, reply.status)

    def mmio_read(self, device: int, offset: int, size: int = 4) -> int:
        reply = self.call(Request.MMIO_READ, m.MMIO_READ.pack(device, size, offset))
        if reply.status:
            raise ClientError(Request.MMIO_READ, reply.status)
        return int(m.MMIO_VALUE.unpack(reply.data)[0])

    def mmio_write(self, device: int, offset: int, value: int, size: int = 4) -> None:
        reply = self.call(Request.MMIO_WRITE, m.MMIO_WRITE.pack(device, size, offset, value))
        if reply.status:
            raise ClientError(Request.MMIO_WRITE, reply.status)

    def close(self) -> None:
        self.sock.close()


def dma_protected(config: dict[str, Any], segment: int, requester: int) -> bool:
    """Whether GET_CONFIG says DMA from (segment, requester) goes through an IOMMU."""
    if config.get("dma_protected", False):
        return True
    return any(r["segment"] == segment and r["first"] <= requester <= r["last"]
               for r in config.get("protected_requesters", ()))


class BounceBuffer:
    """The guest's swiotlb for DMA masters no IOMMU protects (seed 003, swiotlb-xen).

    A protected device DMAs through the daemon at the address the driver mapped for it.
    An unprotected one reaches guest-physical memory directly — the daemon never sees it, as
    no IOMMU does — so the driver shares only this buffer with it and copies between it and
    its own buffer (``swiotlb_sync_single_for_cpu`` / ``_for_device``)."""

    def __init__(self, ram: GuestRam, size: int = 64 << 10) -> None:
        self.ram = ram
        self.size = size
        self.gpa = ram.alloc(size)

    def _check(self, length: int) -> None:
        if length > self.size:
            raise ValueError(f"{length} bytes do not fit the {self.size}-byte bounce buffer")

    async def from_device(self, client: Client, config: dict[str, Any], *, segment: int,
                          requester: int, buffer_gpa: int, data: bytes,
                          iova: int | None = None) -> str | Fault:
        """The device writes ``data`` for the driver's buffer: "iommu" (through the daemon at
        ``iova``, default the buffer's own address), "bounced", or the DMA's fault."""
        if dma_protected(config, segment, requester):
            got = await client.dma(requester, buffer_gpa if iova is None else iova, data=data,
                                   segment=segment)
            return got if isinstance(got, Fault) else "iommu"
        self._check(len(data))
        self.ram.write(self.gpa, data)  # the device's own write, which no IOMMU sees
        self.ram.write(buffer_gpa, self.ram.read(self.gpa, len(data)))  # sync for the CPU
        return "bounced"

    async def to_device(self, client: Client, config: dict[str, Any], *, segment: int,
                        requester: int, buffer_gpa: int, length: int,
                        iova: int | None = None) -> tuple[str, bytes] | Fault:
        """The device reads the driver's buffer: ("iommu" | "bounced", the bytes it got)."""
        if dma_protected(config, segment, requester):
            got = await client.dma(requester, buffer_gpa if iova is None else iova, length,
                                   segment=segment)
            return got if isinstance(got, Fault) else ("iommu", got)
        self._check(length)
        self.ram.write(self.gpa, self.ram.read(buffer_gpa, length))  # sync for the device
        return "bounced", self.ram.read(self.gpa, length)
