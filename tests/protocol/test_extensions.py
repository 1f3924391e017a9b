"""The project's additions (protocols/protocol.md §2): batched TRANSLATE and DMA, page requests."""

from __future__ import annotations

from protocols import messages as m
from protocols.messages import Request
from tests.protocol.util import EFAULT, EINVAL, ENODEV, still_serving
from vmm.harness import Client, GuestRam


def tr(requester: int, iova: int, segment: int = 0, flags: int = 0, reserved: int = 0) -> bytes:
    return m.TRANSLATE.pack(requester, m.NO_PASID, iova, flags, segment, reserved)


async def test_features_advertise_the_additions(client: Client) -> None:
    features = await client.get_features()
    assert features & m.Feature.BATCH and features & m.Feature.PAGE_REQUEST


async def test_translate_batch(client: Client, ram: GuestRam) -> None:
    await client.set_mem_table([ram])
    await client.mmio_write(0, 0x44, (1 << 31) | (1 << 20))  # SMMU GBPA.ABORT: blocked
    entries = [tr(0, 0x1000, segment=1), tr(0, 0x1000), tr(0, 0, segment=9),
               tr(0, 0, reserved=1), tr(0, 0, flags=1 << 5), tr(5, 0xABC123, segment=1)]
    reply = await client.call(Request.TRANSLATE_BATCH,
                              m.BATCH_HEAD.pack(len(entries), 0) + b"".join(entries))
    assert reply.status == 0 and len(reply.data) == 32 * len(entries)
    rows = [(m.STATUS.unpack(reply.data, 32 * i)[0], reply.data[32 * i + 8 : 32 * i + 32])
            for i in range(len(entries))]
    assert rows[0][0] == 0 and m.TRANSLATE_RESULT.unpack(rows[0][1]) == (0x1000, 4096, 7, 0)
    assert rows[1][0] == EFAULT and m.FAULT_RECORD.unpack(rows[1][1])[0] == 7
    assert [r[0] for r in rows[2:5]] == [ENODEV, EINVAL, EINVAL]
    assert m.TRANSLATE_RESULT.unpack(rows[5][1])[0] == 0xABC123


async def test_translate_batch_errors(client: Client) -> None:
    body = tr(0, 0)
    for payload in (b"", m.BATCH_HEAD.pack(2, 0) + body, m.BATCH_HEAD.pack(1, 1) + body,
                    m.BATCH_HEAD.pack(m.MAX_BATCH + 1, 0)):
        assert (await client.call(Request.TRANSLATE_BATCH, payload)).status == EINVAL
    reply = await client.call(Request.TRANSLATE_BATCH, m.BATCH_HEAD.pack(0, 0))
    assert reply.status == 0 and reply.data == b""
    assert await still_serving(client)


async def test_dma_batch(client: Client, ram: GuestRam) -> None:
    await client.set_mem_table([ram])
    write = m.DMA.pack(0x10, m.NO_PASID, ram.gpa + 0x100, 5, 1, 0) + b"hello"
    read = m.DMA.pack(0x10, m.NO_PASID, ram.gpa + 0x100, 5, 0, 1)
    outside = m.DMA.pack(0x10, m.NO_PASID, 0x10, 4, 0, 0)
    bad = m.DMA.pack(0x10, m.NO_PASID, ram.gpa, 0, 0, 0)
    nodev = m.DMA.pack(0x10, m.NO_PASID, ram.gpa, 4, 0, 5)
    reply = await client.call(Request.DMA_BATCH, m.BATCH_HEAD.pack(5, 0) + write + read
                              + outside + bad + nodev)
    assert reply.status == 0
    data, rows = reply.data, []
    pos = 0
    while pos < len(data):
        status, length = m.BATCH_ENTRY_STATUS.unpack(data, pos)
        rows.append((status, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    assert rows[0] == (0, b"") and rows[1] == (0, b"hello")
    assert rows[2][0] == EFAULT and m.FAULT_RECORD.unpack(rows[2][1])[0] == 8
    assert rows[3] == (EINVAL, b"") and rows[4] == (ENODEV, b"")
    short = m.BATCH_HEAD.pack(2, 0) + write
    assert (await client.call(Request.DMA_BATCH, short)).status == EINVAL
    assert (await client.call(Request.DMA_BATCH, m.BATCH_HEAD.pack(1, 0) + write + b"x")).status == EINVAL


async def test_page_request_errors(client: Client) -> None:
    good = m.PAGE_REQUEST.pack(0, 0, 0x10, 1, 1, 0x1000, 1, 0)
    assert (await client.call(Request.PAGE_REQUEST, good[:-1])).status == EINVAL
    assert (await client.call(Request.PAGE_REQUEST,
                              m.PAGE_REQUEST.pack(0, 1, 0x10, 1, 1, 0x1000, 1, 0))).status == EINVAL
    assert (await client.call(Request.PAGE_REQUEST,
                              m.PAGE_REQUEST.pack(0, 0, 0x10, 1, 1 << 5, 0x1000, 1, 0))).status == EINVAL
    assert (await client.call(Request.PAGE_REQUEST,
                              m.PAGE_REQUEST.pack(9, 0, 0x10, 1, 1, 0x1000, 1, 0))).status == ENODEV
