"""Seed 003 (XENFEAT_ARM_dom0_iommu) end to end: GET_CONFIG's ``dma_protected`` and the
harness's bounce buffering, both paths.

Requesters 0x00-0xff of segment 0 sit behind the PV-IOMMU; ``--dma-master 1:0x10`` declares
a DMA-capable device no IOMMU covers (the MMC controller of the seed's example)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from protocols import messages as m
from protocols import pviommu as pv
from protocols.messages import Request
from tests.e2e.attach import daemon_config, start_guest
from vmm.harness import BounceBuffer, Client, Fault, GuestRam, dma_protected

RAM_BASE = 0x8000_0000
NIC = (0, 0x08)  # behind the PV-IOMMU
MMC = (1, 0x10)  # declared, unprotected

Factory = Callable[..., Awaitable[tuple[Client, GuestRam, dict[str, Any]]]]


@pytest.fixture
async def guest(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Factory]:
    async with AsyncExitStack() as stack:

        async def make(*argv: str) -> tuple[Client, GuestRam, dict[str, Any]]:
            client, ram = await start_guest(stack, nursery, str(tmp_path / "prot.sock"),
                                            daemon_config(*argv), RAM_BASE, 4 << 20)
            return client, ram, await client.get_config()

        yield make


async def test_all_masters_protected(guest: Factory) -> None:
    _, _, cfg = await guest("--device", "pv-iommu,rids=0-0xff", "--dma-master", "0:0x8-0x9")
    assert cfg["dma_protected"] is True and "protected_requesters" not in cfg
    assert dma_protected(cfg, *MMC)  # the flag covers every master: nothing to bounce


async def test_both_paths(guest: Factory) -> None:
    client, ram, cfg = await guest("--device", "pv-iommu,rids=0-0xff",
                                   "--dma-master", f"{MMC[0]}:{MMC[1]:#x}")
    assert cfg["dma_protected"] is False
    assert cfg["protected_requesters"] == [{"segment": 0, "first": 0, "last": 0xFF}]
    assert dma_protected(cfg, *NIC) and not dma_protected(cfg, *MMC)
    swiotlb = BounceBuffer(ram)
    buf = ram.alloc(4096)

    # Protected: the device DMAs through the PV-IOMMU's default context, no copy.
    got = await swiotlb.from_device(client, cfg, segment=NIC[0], requester=NIC[1],
                                    buffer_gpa=buf, data=b"via iommu")
    assert got == "iommu" and ram.read(buf, 9) == b"via iommu"
    assert ram.read(swiotlb.gpa, 9) == bytes(9)  # the bounce buffer was not touched

    # Unprotected: the daemon has no IOMMU for it, so the data goes through the bounce buffer.
    reply = await client.call(Request.DMA, m.DMA.pack(MMC[1], m.NO_PASID, buf, 4, 0, MMC[0]))
    assert reply.status == -19  # -ENODEV: no IOMMU translates this master
    got = await swiotlb.from_device(client, cfg, segment=MMC[0], requester=MMC[1],
                                    buffer_gpa=buf, data=b"bounced!!")
    assert got == "bounced" and ram.read(buf, 9) == b"bounced!!"
    assert ram.read(swiotlb.gpa, 9) == b"bounced!!"

    ram.write(buf, b"to device")
    assert await swiotlb.to_device(client, cfg, segment=MMC[0], requester=MMC[1],
                                   buffer_gpa=buf, length=9) == ("bounced", b"to device")
    assert await swiotlb.to_device(client, cfg, segment=NIC[0], requester=NIC[1],
                                   buffer_gpa=buf, length=9) == ("iommu", b"to device")


async def test_protected_path_goes_through_a_pv_context(guest: Factory) -> None:
    client, ram, cfg = await guest("--device", "pv-iommu,rids=0-0xff,no-dma=on",
                                   "--dma-master", "1:0x10")
    swiotlb = BounceBuffer(ram)
    buf = ram.alloc(4096)
    # no-dma: the default context blocks; the driver must put the device in a context.
    fault = await swiotlb.from_device(client, cfg, segment=0, requester=8, buffer_gpa=buf,
                                      data=b"x")
    assert fault == Fault(7, 0, buf, 0)
    for cmd, layout, fields in [
        (pv.Cmd.init, pv.Init, {"max_ctx_no": 1}),
        (pv.Cmd.alloc_context, pv.Alloc, {}),
        (pv.Cmd.map_pages, pv.MapPages, {"ctx_no": 1, "gfn": buf >> 12, "dfn": 0x10,
                                         "map_flags": 3, "pgsize": 4096, "nr_pages": 1}),
        (pv.Cmd.reattach_device, pv.ReattachDevice, {"ctx_no": 1, "devfn": 8}),
    ]:
        reply = await client.call(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(cmd, 0)
                                  + pv.pack(layout, **fields))
        assert reply.status == 0
    got = await swiotlb.from_device(client, cfg, segment=0, requester=8, buffer_gpa=buf,
                                    data=b"mapped", iova=0x10000)
    assert got == "iommu" and ram.read(buf, 6) == b"mapped"
