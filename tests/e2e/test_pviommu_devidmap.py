"""The ID map end to end: a DMA carrying a physical ID lands in the guest's configuration of
the virtual ID, and the vIOMMU records faults under the virtual ID.

The vIOMMU here is a vVT-d (legacy mode, driven by the harness's VT-d driver): physical
requester 0x18 behind the physical IOMMU at 0xfed00000 is the guest's requester 0x20.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from devices.model import Perm
from protocols import messages as m
from protocols.messages import Request
from tests.e2e.attach import daemon_config, start_guest
from vmm.drivers.vtd import VTdDriver
from vmm.harness import Client, Fault, GuestRam

RAM_BASE = 0x8000_0000
PIOMMU = 0xFED0_0000
PSID, VSID = 0x18, 0x20


Factory = Callable[..., Awaitable[tuple[Client, GuestRam, dict[str, object]]]]


@pytest.fixture
async def mapped_guest(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Factory]:
    async with AsyncExitStack() as stack:

        async def make(*argv: str) -> tuple[Client, GuestRam, dict[str, object]]:
            client, ram = await start_guest(stack, nursery, str(tmp_path / "map.sock"),
                                            daemon_config(*argv), RAM_BASE, 16 << 20)
            return client, ram, await client.get_config()

        yield make


async def test_physical_id_reaches_the_virtual_ids_context(mapped_guest: Factory) -> None:
    client, ram, cfg = await mapped_guest(
        "--physical-iommu", f"{PIOMMU:#x},kind=vtd", "--viommu", "vtd",
        "--devid-map", f"{PSID:#x}@{VSID:#x},{PIOMMU:#x}",
        "--devid-map", f"0x30@0x18,{PIOMMU:#x}")
    (dev,) = cfg["devices"]  # type: ignore[misc]
    assert dev["model"] == "vtd" and dev["segment"] == 0 and dev["requesters"] == [[0x18, 0x18],
                                                                                  [0x30, 0x30]]
    drv = VTdDriver(client, dev["id"], ram)
    assert (await drv.bring_up()).ok
    ctx = await drv.attach_legacy(VSID, 5)  # the guest configures its vRID 0x20
    buf = ram.alloc(4096)
    await drv.map(ctx, 0x10000, buf, 4096, Perm.R | Perm.W)
    assert await client.dma(PSID, 0x10010, data=b"physical") == b""
    assert ram.read(buf + 0x10, 8) == b"physical"
    # pSID 0x30 is the guest's 0x18, which it left unconfigured: the fault names vRID 0x18.
    fault = await client.dma(0x30, 0x10000, 4)
    assert fault == Fault(kind=5, code=2, address=0x10000, stage=0)  # context not present
    frcd_hi = await drv.read(0x228, 8)
    assert frcd_hi & 0xFFFF == 0x18 and frcd_hi >> 63  # FRCD.SID is the virtual ID
    # The virtual ID is no physical one: nothing answers to it on the wire.
    reply = await client.call(Request.DMA, m.DMA.pack(VSID, m.NO_PASID, 0x10000, 4, 0, 0))
    assert reply.status == -19  # -ENODEV


async def test_per_piommu_identity_ids_on_their_own_segments(mapped_guest: Factory) -> None:
    client, ram, cfg = await mapped_guest(
        "--physical-iommu", "0xfed00000,kind=vtd", "--physical-iommu", "0xfed10000,kind=vtd",
        "--iommu-topology", "per-piommu",
        "--devid-map", "0x18,0xfed00000", "--devid-map", "0x18,0xfed10000")
    devices = cfg["devices"]
    assert [(d["segment"], d["mmio"]["base"]) for d in devices] == [  # type: ignore[attr-defined]
        (0, 0xFED0_0000), (1, 0xFED1_0000)]
    drv1 = VTdDriver(client, devices[1]["id"], ram, segment=1)  # type: ignore[index]
    assert (await drv1.bring_up()).ok
    ctx = await drv1.attach_legacy(0x18, 3)
    buf = ram.alloc(4096)
    await drv1.map(ctx, 0x4000, buf, 4096, Perm.R | Perm.W)
    assert await client.dma(0x18, 0x4000, data=b"seg1", segment=1) == b""
    assert ram.read(buf, 4) == b"seg1"
    # The same pSID behind the other physical IOMMU is the other vIOMMU's, still disabled:
    # its DMA passes untranslated (GSTS.TES = 0) instead of landing in buf.
    assert await client.dma(0x18, RAM_BASE + 0x100, data=b"seg0", segment=0) == b""
    assert ram.read(RAM_BASE + 0x100, 4) == b"seg0"
