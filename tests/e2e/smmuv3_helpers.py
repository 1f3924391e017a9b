"""Shared pieces of the vSMMUv3 end-to-end tests: an in-process daemon with one vSMMUv3 of
chosen options, a guest with RAM at 1 GiB (QEMU virt's RAM base, so the qtest vector's
addresses are guest RAM) and a back-end channel, and the harness's SMMUv3 driver.

The vSMMUv3 is device 0 on segment 0.  Its interrupt vectors: 0 evtq, 1 priq, 2 cmdq-sync,
3 gerror.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from protocols import messages as m
from tests.e2e.attach import attach_guest
from vmm.drivers.smmuv3 import SMMUv3Driver
from vmm.harness import BackendChannelReader, BackendEvent, Client, Fault, GuestRam

RAM_BASE = 0x4000_0000
RAM_SIZE = 256 << 20
VEC_EVTQ, VEC_PRIQ, VEC_CMD_SYNC, VEC_GERROR = 0, 1, 2, 3
MSI_DOORBELL = 0x0800_0040  # not guest RAM: an MSI there goes to the front-end as an IRQ


@dataclass
class SmmuGuest:
    client: Client
    ram: GuestRam
    drv: SMMUv3Driver
    channel: BackendChannelReader

    async def messages(self) -> list[BackendEvent]:
        """Back-end channel messages so far (after a round trip, so they have arrived)."""
        await self.client.mmio_read(0, 0, 4)
        await trio.sleep(0.002)
        return self.channel.poll()

    async def irqs(self) -> list[int]:
        return [e.fields["vector"] for e in await self.messages()
                if e.code == m.BackendMessage.IRQ]

    async def dma_write(self, sid: int, iova: int, data: bytes, *, pasid: int | None = None,
                        flags: int = 0) -> bytes | Fault:
        return await self.client.dma(sid, iova, data=data, flags=flags,
                                     pasid=m.NO_PASID if pasid is None else pasid)

    async def dma_read(self, sid: int, iova: int, length: int, *, pasid: int | None = None,
                       flags: int = 0) -> bytes | Fault:
        return await self.client.dma(sid, iova, length, flags=flags,
                                     pasid=m.NO_PASID if pasid is None else pasid)

    async def page_request(self, sid: int, address: int, group: int, *,
                           pasid: int | None = None, flags: int = 1) -> int:
        reply = await self.client.call(m.Request.PAGE_REQUEST, m.PAGE_REQUEST.pack(
            0, 0, sid, m.NO_PASID if pasid is None else pasid, flags, address, group, 0))
        return reply.status

    def u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.ram.read(gpa, 8))[0])


@asynccontextmanager
async def smmu_guest(tmp_path: Path, nursery: trio.Nursery, *options: str,
                     probe: bool = True, **driver: object) -> AsyncIterator[SmmuGuest]:
    """A daemon with ``smmuv3,<options>``, a connected guest with RAM and a back-end channel,
    and the driver (probed unless ``probe=False``; ``driver`` are SMMUv3Driver options)."""
    async with AsyncExitStack() as stack:
        client, ram, channel = await attach_guest(
            stack, nursery, str(tmp_path / f"smmu{id(stack)}.sock"),
            ",".join(("smmuv3", *options)), RAM_BASE, RAM_SIZE)
        drv = SMMUv3Driver(client, 0, ram, **driver)  # type: ignore[arg-type]
        guest = SmmuGuest(client, ram, drv, channel)
        if probe:
            result = await drv.probe(requester=None)
            assert result.ok, result.steps
            guest.channel.poll()
        yield guest
