"""Shared pieces of the VT-d end-to-end tests: a daemon with one vVT-d of chosen options,
a guest with RAM and a back-end channel, and the harness's VT-d driver.

The vVT-d is device 0 on segment 0; guest RAM is 16 MiB at 2 GiB.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from protocols import messages as m
from tests.e2e.attach import attach_guest
from vmm.drivers.vtd import VTdDriver
from vmm.harness import BackendChannelReader, BackendEvent, Client, Fault, GuestRam

RAM_BASE = 0x8000_0000
RAM_SIZE = 16 << 20
SID = 0x0018  # 00:03.0, the edu device of reference/vtd.md's QEMU measurements
MSI_ADDR = 0xFEE0_0000  # not guest RAM: the MSI goes to the front-end as an IRQ message
VECTOR_FAULT, VECTOR_INVALIDATION, VECTOR_PAGE_REQUEST = 0, 1, 2


@dataclass
class Guest:
    client: Client
    ram: GuestRam
    drv: VTdDriver
    channel: BackendChannelReader

    async def dma_write(self, iova: int, data: bytes, *, sid: int = SID,
                        pasid: int | None = None, flags: int = 0) -> bytes | Fault:
        return await self.client.dma(sid, iova, data=data, flags=flags,
                                     pasid=0xFFFF_FFFF if pasid is None else pasid)

    async def dma_read(self, iova: int, length: int, *, sid: int = SID,
                       pasid: int | None = None, flags: int = 0) -> bytes | Fault:
        return await self.client.dma(sid, iova, length, flags=flags,
                                     pasid=0xFFFF_FFFF if pasid is None else pasid)

    async def events(self) -> list[BackendEvent]:
        """Back-end channel messages so far (after a round trip, so they have arrived)."""
        await self.client.mmio_read(0, 0, 4)
        await trio.sleep(0.005)
        return self.channel.poll()

    async def irqs(self, vector: int) -> list[dict[str, int]]:
        return [e.fields for e in await self.events()
                if e.code == m.BackendMessage.IRQ and e.fields["vector"] == vector]

    async def frcd(self, index: int = 0) -> tuple[int, int]:
        lo = await self.drv.read(0x220 + 16 * index, 8)
        hi = await self.drv.read(0x228 + 16 * index, 8)
        return lo, hi

    def u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.ram.read(gpa, 8))[0])


GuestFactory = Callable[..., Awaitable[Guest]]


@pytest.fixture
async def vtd_guest(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[GuestFactory]:
    """``await vtd_guest("scalable-mode=on", ...)``: a daemon, a connected guest, its RAM."""
    async with AsyncExitStack() as stack:
        count = 0

        async def make(*options: str) -> Guest:
            nonlocal count
            count += 1
            client, ram, channel = await attach_guest(
                stack, nursery, str(tmp_path / f"vtd{count}.sock"),
                ",".join(("vtd", *options)), RAM_BASE, RAM_SIZE)
            return Guest(client, ram, VTdDriver(client, 0, ram), channel)

        yield make


def no_fds_leaked(before: int) -> bool:
    return len(os.listdir("/proc/self/fd")) <= before
