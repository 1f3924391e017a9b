"""Each request of protocol.md, its documented result and its error cases."""

from __future__ import annotations

import os
import socket

import trio

from protocols import messages as m
from protocols.messages import Request
from tests.protocol.util import (
    EFAULT,
    EINVAL,
    ENODEV,
    ENOENT,
    ENOSYS,
    closed_by_peer,
    pipe_fd,
    still_serving,
)
from vmm.harness import Client, Fault, GuestRam, Translation, dma_payload
from vmm.memory import make_memfd


def regions_payload(*regions: tuple[int, int, int], reserved: int = 0) -> bytes:
    return m.MEM_TABLE_HEAD.pack(len(regions), reserved) + b"".join(
        m.REGION.pack(*r) for r in regions)


# -- GET_FEATURES / SET_FEATURES --------------------------------------------------------

async def test_features(client: Client) -> None:
    features = await client.get_features()
    assert features & m.Feature.BACKEND_CHANNEL and features & m.Feature.IRQ_FD
    assert not features & m.Feature.PV_IOMMU  # no pv-iommu device configured
    await client.set_features(features)
    await client.set_features(0)  # optional and repeatable
    reply = await client.call(Request.SET_FEATURES, m.FEATURES.pack(m.Feature.PV_IOMMU))
    assert reply.status == EINVAL
    reply = await client.call(Request.SET_FEATURES, m.FEATURES.pack(1 << 40))
    assert reply.status == EINVAL


# -- GET_CONFIG ---------------------------------------------------------------------------

async def test_get_config(client: Client) -> None:
    cfg = await client.get_config()
    assert cfg["protocol"] == 1 and cfg["pv_iommu"] is False and cfg["dma_protected"] is True
    smmu, vtd = cfg["devices"]
    assert smmu == {"id": 0, "model": "smmuv3", "name": "smmu0",
                    "mmio": {"base": 0x09050000, "size": 0x20000}, "segment": 0,
                    "requesters": [[0, 0xFFFF]],
                    "irqs": ["evtq", "priq", "cmdq-sync", "gerror"]}
    assert vtd["id"] == 1 and vtd["model"] == "vtd" and vtd["segment"] == 1
    assert vtd["mmio"] == {"base": 0xFED90000, "size": 0x1000}
    assert vtd["irqs"] == ["fault", "invalidation", "page-request"]


# -- memory table ---------------------------------------------------------------------------

async def test_set_mem_table_and_replace(client: Client, ram: GuestRam) -> None:
    await client.set_mem_table([ram])
    ram.write(ram.gpa, b"hello")
    assert await client.dma(0, ram.gpa, 5) == b"hello"
    await client.ok(Request.SET_MEM_TABLE, regions_payload())  # empties the table
    fault = await client.dma(0, ram.gpa, 5)
    assert isinstance(fault, Fault) and fault.kind == 8


async def test_set_mem_table_errors_leave_table(client: Client, ram: GuestRam) -> None:
    await client.set_mem_table([ram])
    fd = make_memfd(0x4000)
    try:
        bad = [
            ((0x1000, 0x1000, 0), (0x1800, 0x1000, 0)),  # misaligned
            ((0x1000, 0x2000, 0), (0x2000, 0x1000, 0)),  # overlapping
            ((0x1000, 0, 0),),                            # empty
            ((0x1000, 0x1000, 0x4000),),                  # fd too small
            (((1 << 52) - 0x1000, 0x2000, 0),),           # beyond 2^52
        ]
        for regions in bad:
            r, w = pipe_fd()
            os.close(r)
            os.close(w)
            reply = await client.call(Request.SET_MEM_TABLE, regions_payload(*regions),
                                      [fd] * len(regions))
            assert reply.status == EINVAL, regions
        reply = await client.call(Request.SET_MEM_TABLE, regions_payload((0, 0x1000, 0),
                                                                          reserved=1), [fd])
        assert reply.status == EINVAL
        reply = await client.call(Request.SET_MEM_TABLE, regions_payload((0, 0x1000, 0)), [])
        assert reply.status == EINVAL  # wrong number of fds
        too_many = tuple((i * 0x1000, 0x1000, 0) for i in range(65))
        reply = await client.call(Request.SET_MEM_TABLE, regions_payload(*too_many), [fd] * 65)
        assert reply.status == EINVAL
    finally:
        os.close(fd)
    ram.write(ram.gpa, b"still")
    assert await client.dma(0, ram.gpa, 5) == b"still"


async def test_unmappable_fd(client: Client) -> None:
    r, w = pipe_fd()
    reply = await client.call(Request.SET_MEM_TABLE, regions_payload((0, 0x1000, 0)), [w])
    assert reply.status == EINVAL
    assert closed_by_peer(r, w)
    a, b = socket.socketpair()
    reply = await client.call(Request.ADD_MEM_REG, m.REGION.pack(0, 0x1000, 0), [a.fileno()])
    assert reply.status == EINVAL
    a.close()
    b.close()
    assert await still_serving(client)


async def test_add_and_remove_region(client: Client) -> None:
    low, high = GuestRam(0x10000, 0x4000), GuestRam(0x14000, 0x4000)
    try:
        await client.add_mem_reg(low)
        await client.add_mem_reg(high)
        high.write(0x14000, b"B")
        low.write(0x13FFF, b"A")
        assert await client.dma(0, 0x13FFF, 2) == b"AB"  # crosses the two regions
        reply = await client.call(Request.ADD_MEM_REG, m.REGION.pack(0x12000, 0x4000, 0),
                                  [low.fd])
        assert reply.status == EINVAL  # overlaps
        reply = await client.call(Request.REM_MEM_REG, m.REGION.pack(0x14000, 0x1000, 0))
        assert reply.status == ENOENT
        reply = await client.call(Request.REM_MEM_REG, m.REGION.pack(0x14001, 7, 3))
        assert reply.status == ENOENT  # whatever the values
        await client.ok(Request.REM_MEM_REG, m.REGION.pack(0x14000, 0x4000, 0x5000))
        fault = await client.dma(0, 0x13FFF, 2)
        assert isinstance(fault, Fault) and fault.kind == 8 and fault.address == 0x14000
        reply = await client.call(Request.ADD_MEM_REG, m.REGION.pack(0x20000, 0x1000, 0), [])
        assert reply.status == EINVAL
    finally:
        low.close()
        high.close()


# -- RESET ----------------------------------------------------------------------------------

async def test_reset(client: Client) -> None:
    await client.mmio_write(0, 0x20, 1 << 3)  # CR0.CMDQEN
    assert await client.mmio_read(0, 0x24) == 1 << 3
    await client.reset(0)
    assert await client.mmio_read(0, 0x24) == 0
    await client.mmio_write(0, 0x20, 1 << 3)
    await client.mmio_write(1, 0x38, 0)  # FECTL.IM cleared
    await client.reset()
    assert await client.mmio_read(0, 0x24) == 0
    assert await client.mmio_read(1, 0x38) == 0x8000_0000
    assert (await client.call(Request.RESET, m.RESET.pack(7, 0))).status == ENODEV
    assert (await client.call(Request.RESET, m.RESET.pack(0, 1))).status == EINVAL


# -- MMIO -------------------------------------------------------------------------------------

async def test_mmio_handshakes(client: Client) -> None:
    await client.mmio_write(0, 0x20, 0b1101)
    assert await client.mmio_read(0, 0x24) == 0b1101  # CR0 -> CR0ACK
    await client.mmio_write(1, 0x20, 0x1000, 8)  # RTADDR
    await client.mmio_write(1, 0x18, 1 << 30)  # GCMD.SRTP
    assert await client.mmio_read(1, 0x1C) & (1 << 30)  # GSTS.RTPS
    await client.mmio_write(1, 0x18, 1 << 31)  # GCMD.TE
    assert await client.mmio_read(1, 0x1C) & (1 << 31)  # GSTS.TES


async def test_mmio_errors(client: Client) -> None:
    cases = [
        (Request.MMIO_READ, m.MMIO_READ.pack(9, 4, 0), ENODEV),
        (Request.MMIO_READ, m.MMIO_READ.pack(9, 3, 1), ENODEV),  # device first, then values
        (Request.MMIO_READ, m.MMIO_READ.pack(0, 3, 0), EINVAL),
        (Request.MMIO_READ, m.MMIO_READ.pack(0, 16, 0), EINVAL),
        (Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 2), EINVAL),
        (Request.MMIO_READ, m.MMIO_READ.pack(0, 8, 0x20000), EINVAL),
        (Request.MMIO_READ, m.MMIO_READ.pack(1, 4, 0x1000), EINVAL),
        (Request.MMIO_READ, m.MMIO_READ.pack(1, 4, 1 << 63), EINVAL),
        (Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 4, 0x20, 1 << 32), EINVAL),
        (Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 1, 0x20, 0x100), EINVAL),
        (Request.MMIO_WRITE, m.MMIO_WRITE.pack(5, 4, 0x20, 0), ENODEV),
    ]
    for code, payload, status in cases:
        assert (await client.call(code, payload)).status == status, payload
    assert await still_serving(client)


async def test_mmio_raz_wi(client: Client) -> None:
    # 1- and 2-byte accesses to SMMUv3 registers, 8-byte to a 32-bit VT-d register,
    # and offsets where nothing is defined: status 0, read as zero, write ignored.
    assert await client.mmio_read(0, 0x0, 1) == 0
    assert await client.mmio_read(0, 0x0, 2) == 0
    await client.mmio_write(0, 0x20, 1, 1)
    assert await client.mmio_read(0, 0x24) == 0
    assert await client.mmio_read(1, 0x0, 8) == 0
    assert await client.mmio_read(1, 0xFF8, 8) == 0
    await client.mmio_write(1, 0xFF8, 0xFFFF_FFFF_FFFF_FFFF, 8)
    assert await client.mmio_read(0, 0x1FFFC, 4) == 0


# -- DMA and TRANSLATE -------------------------------------------------------------------

async def test_dma_bypass_and_errors(client: Client, ram: GuestRam) -> None:
    await client.set_mem_table([ram])
    data = bytes(range(256)) * 40
    assert await client.dma(0x10, ram.gpa + 0x123, data=data) == b""
    assert ram.read(ram.gpa + 0x123, len(data)) == data
    assert await client.dma(0x10, ram.gpa + 0x123, len(data)) == data
    assert await client.dma(0x0100, ram.gpa, 4, segment=1) == data[:0] + ram.read(ram.gpa, 4)
    cases = [
        (dma_payload(0, ram.gpa, 0), EINVAL),                       # length 0
        (dma_payload(0, ram.gpa, (1 << 20) + 1), EINVAL),           # above 1 MiB
        (dma_payload(0, (1 << 64) - 2, 4), EINVAL),                 # passes 2^64
        (dma_payload(0, ram.gpa, 4, flags=1 << 3), EINVAL),         # reserved flag
        (dma_payload(0, ram.gpa, 4, segment=7), ENODEV),            # no owner
        (dma_payload(0x10000, ram.gpa, 4, segment=0), ENODEV),      # beyond the SID range
        (dma_payload(0, ram.gpa, 8, flags=1, data=b"1234"), EINVAL),  # data size
    ]
    for payload, status in cases:
        assert (await client.call(Request.DMA, payload)).status == status
    assert await still_serving(client)


async def test_dma_all_or_nothing(client: Client, ram: GuestRam) -> None:
    await client.set_mem_table([ram])
    end = ram.gpa + ram.size
    ram.write(end - 8, b"\xAA" * 8)
    fault = await client.dma(0, end - 8, data=b"\x55" * 16)
    assert isinstance(fault, Fault)
    assert (fault.kind, fault.code, fault.address, fault.stage) == (8, 0, end, 0)
    assert ram.read(end - 8, 8) == b"\xAA" * 8  # nothing was written
    reply = await client.call(Request.DMA, dma_payload(0, end - 8, 16))
    assert reply.status == EFAULT and len(reply.data) == 24


async def test_translate(client: Client) -> None:
    t = await client.translate(0, 0x1234_5678)
    assert t == Translation(0x1234_5678, 4096, 7)  # bypass: identity, 4 KiB, RWX
    t = await client.translate(0x0008, 0xABC000, segment=1)
    assert t == Translation(0xABC000, 4096, 7)  # VT-d with TE clear
    await client.mmio_write(0, 0x44, (1 << 31) | (1 << 20))  # GBPA.ABORT with UPDATE
    fault = await client.translate(0, 0x1000)
    assert isinstance(fault, Fault) and fault.kind == 7 and fault.stage == 0
    payload = m.TRANSLATE.pack(0, m.NO_PASID, 0, 0, 0, 1)
    assert (await client.call(Request.TRANSLATE, payload)).status == EINVAL
    payload = m.TRANSLATE.pack(0, m.NO_PASID, 0, 0, 9, 0)
    assert (await client.call(Request.TRANSLATE, payload)).status == ENODEV


# -- PV_IOMMU_OP without a PV-IOMMU ----------------------------------------------------------

async def test_pv_iommu_not_offered(client: Client) -> None:
    reply = await client.call(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(0, 0))
    assert reply.status == ENOSYS
    r, w = pipe_fd()
    reply = await client.call(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(0, 0), [w])
    assert reply.status == ENOSYS
    assert closed_by_peer(r, w)


# -- SET_IRQ_FD and the back-end channel ---------------------------------------------------

async def test_set_irq_fd(client: Client) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        await client.set_irq_fd(0, 3, efd)  # the SMMU's gerror vector
        await client.set_irq_fd(0, 3, efd)  # replaces the first
        assert (await client.call(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(0, 4), [efd])).status == EINVAL
        assert (await client.call(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(1, 3), [efd])).status == EINVAL
        assert (await client.call(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(8, 0), [efd])).status == ENODEV
        assert (await client.call(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(0, 0), [])).status == EINVAL
        r, w = pipe_fd()
        reply = await client.call(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(0, 0), [w])
        assert reply.status == EINVAL  # not an eventfd
        assert closed_by_peer(r, w)
    finally:
        os.close(efd)


async def test_backend_channel(client: Client) -> None:
    channel = await client.open_backend_channel()
    channel2 = await client.open_backend_channel()  # replaces the first, which is closed
    with trio.fail_after(2):
        try:
            await channel.next()
            raise AssertionError("first channel should have been closed")
        except EOFError:
            pass
    r, w = pipe_fd()
    reply = await client.call(Request.SET_BACKEND_CHANNEL, b"", [w])
    assert reply.status == EINVAL
    assert closed_by_peer(r, w)
    lonely = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reply = await client.call(Request.SET_BACKEND_CHANNEL, b"", [lonely.fileno()])
    assert reply.status == EINVAL  # not connected
    lonely.close()
    dgram_a, dgram_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reply = await client.call(Request.SET_BACKEND_CHANNEL, b"", [dgram_a.fileno()])
    assert reply.status == EINVAL  # not a stream
    dgram_a.close()
    dgram_b.close()
    assert (await client.call(Request.SET_BACKEND_CHANNEL, b"\0" * 8, [])).status == EINVAL
    channel.close()
    channel2.close()
