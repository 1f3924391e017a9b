"""protocol.md, "How the back-end reads a request": steps 1–8, one malformed case per test.

Every case checks the exact error reply, that fds sent with it were closed, and that the
daemon still serves the same connection afterwards.
"""

from __future__ import annotations

import socket

import trio

from protocols import messages as m
from protocols.messages import Request
from tests.protocol.util import (
    E2BIG,
    EINVAL,
    ENOSYS,
    closed_by_peer,
    pipe_fd,
    still_serving,
)
from vmm.harness import Client


async def test_short_header_then_eof_closes_only_that_guest(daemon_path: str) -> None:
    other = await Client.connect(daemon_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon_path)
    sock.sendall(b"\x01\x00\x00")
    sock.close()
    await trio.sleep(0.05)
    assert await still_serving(other)
    await other.aclose()


async def test_eof_mid_payload(daemon_path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon_path)
    sock.sendall(m.HEADER.pack(Request.MMIO_READ, 1, 16) + b"\0" * 5)
    sock.close()
    async with await Client.connect(daemon_path) as c:
        assert await still_serving(c)


async def test_oversized_gets_e2big_then_close(client: Client) -> None:
    await client.send_raw(m.HEADER.pack(Request.GET_FEATURES, 1, m.MAX_PAYLOAD + 1))
    reply = await client.recv_reply()
    assert reply.status == E2BIG and reply.code == Request.GET_FEATURES
    assert reply.flags == 0b101
    with trio.fail_after(5):
        try:
            await client.recv_reply()
            raise AssertionError("connection should be closed")
        except EOFError:
            pass


async def test_largest_payload_is_read_whole(client: Client) -> None:
    reply = await client.call(Request.GET_FEATURES, b"\0" * m.MAX_PAYLOAD)
    assert reply.status == EINVAL  # wrong size, but the stream stays in step
    assert await still_serving(client)


async def test_bad_version(client: Client) -> None:
    for flags in (0, 2, 3):
        reply = await client.call(Request.GET_FEATURES, flags=flags)
        assert reply.status == EINVAL
    assert await still_serving(client)


async def test_reserved_flag_bits(client: Client) -> None:
    for bit in range(3, 32):
        reply = await client.call(Request.GET_FEATURES, flags=1 | (1 << bit))
        assert reply.status == EINVAL, bit
    assert await still_serving(client)


async def test_reply_bit_on_request(client: Client) -> None:
    reply = await client.call(Request.GET_FEATURES, flags=1 | m.FLAG_REPLY)
    assert reply.status == EINVAL
    assert await still_serving(client)


async def test_bad_flags_checked_before_unknown_code(client: Client) -> None:
    reply = await client.call(999, flags=2)
    assert reply.status == EINVAL


async def test_unknown_code(client: Client) -> None:
    for code in (0, 8, 15, 18, 34, 49, 66, 127, 131, 999, 0xFFFF_FFFF):
        reply = await client.call(code)
        assert reply.status == ENOSYS and reply.code == code
    assert await still_serving(client)


async def test_unknown_code_with_fds_is_enosys_and_closes_them(client: Client) -> None:
    r, w = pipe_fd()
    reply = await client.call(200, b"", [w])
    assert reply.status == ENOSYS
    assert closed_by_peer(r, w)


async def test_fds_on_request_that_takes_none(client: Client) -> None:
    for code, payload in ((Request.GET_FEATURES, b""),
                          (Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0)),
                          (Request.REM_MEM_REG, m.REGION.pack(0, 4096, 0))):
        r, w = pipe_fd()
        reply = await client.call(code, payload, [w])
        assert reply.status == EINVAL
        assert closed_by_peer(r, w)
    assert await still_serving(client)


async def test_fds_after_the_header_bytes(client: Client) -> None:
    r, w = pipe_fd()
    region = m.REGION.pack(0x1000, 0x1000, 0)
    await client.send_raw(m.HEADER.pack(Request.ADD_MEM_REG, 1, len(region)))
    await trio.sleep(0.02)  # let the daemon take the header alone
    await client.send_raw(region, [w])
    reply = await client.recv_reply()
    assert reply.status == EINVAL
    assert closed_by_peer(r, w)
    assert await still_serving(client)


async def test_header_split_with_fds_on_second_part_counts(client: Client) -> None:
    # fds with any header byte belong to the message (they still fail here: wrong count)
    r1, w1 = pipe_fd()
    r2, w2 = pipe_fd()
    head = m.HEADER.pack(Request.SET_IRQ_FD, 1, 8)
    await client.send_raw(head[:5])
    await trio.sleep(0.02)
    await client.send_raw(head[5:] + m.SET_IRQ_FD.pack(0, 0), [w1, w2])
    reply = await client.recv_reply()
    assert reply.status == EINVAL
    assert closed_by_peer(r1, w1) and closed_by_peer(r2, w2)


async def test_wrong_size_every_fixed_request(client: Client) -> None:
    fixed = {Request.GET_FEATURES: 0, Request.SET_FEATURES: 8, Request.GET_CONFIG: 0,
             Request.REM_MEM_REG: 24, Request.RESET: 8, Request.MMIO_READ: 16,
             Request.MMIO_WRITE: 24, Request.TRANSLATE: 24}
    for code, size in fixed.items():
        for wrong in {0, size - 1, size + 1, size + 8} - {size}:
            if wrong < 0:
                continue
            reply = await client.call(code, b"\0" * wrong)
            assert reply.status == EINVAL, (code, wrong)
    assert await still_serving(client)


async def test_pipelined_requests_answered_in_order(client: Client) -> None:
    msgs = b"".join(m.request(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, off))
                    for off in (0x0, 0x4, 0x14, 0x1C))
    await client.send_raw(msgs + m.request(Request.GET_FEATURES))
    replies = [await client.recv_reply() for _ in range(5)]
    assert [r.code for r in replies] == [16, 16, 16, 16, 1]
    assert all(r.status == 0 for r in replies)
