"""A small recorded scenario shared by the record and replay tests: an SMMU whose illegal
command raises GERROR on its wired interrupt, then a DMA write and read in bypass."""

from __future__ import annotations

import os
from collections.abc import Iterator

from protocols import messages as m
from protocols.messages import Request
from protocols.session import Connection
from vmm.config import DaemonConfig, build_devices
from vmm.memory import make_memfd

RAM = 0x4000_0000
CONFIG = DaemonConfig(build_devices(["smmuv3", "vtd"]))


def gerror_script() -> Iterator[tuple[bytes, list[int]]]:
    """A guest that makes the SMMU raise a global error: an illegal command (opcode 0) in a
    command queue in RAM, with the GERROR interrupt enabled on its wired line."""
    fd = make_memfd(1 << 20)
    yield m.request(Request.SET_MEM_TABLE,
                    m.MEM_TABLE_HEAD.pack(1, 0) + m.REGION.pack(RAM, 1 << 20, 0)), [fd]
    os.close(fd)
    for off, value, size in ((0x50, 1, 4), (0x90, RAM | 4, 8), (0x20, 1 << 3, 4),
                             (0x98, 1, 4)):
        yield m.request(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, size, off, value)), []
    yield m.request(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0x60)), []
    write = m.DMA.pack(5, m.NO_PASID, RAM + 0x100, 4, int(m.DmaFlag.WRITE), 0) + b"\xaa" * 4
    yield m.request(Request.DMA, write), []
    yield m.request(Request.DMA, m.DMA.pack(5, m.NO_PASID, RAM + 0x100, 4, 0, 0)), []


def drive(conn: Connection) -> list[bytes]:
    """Run the scenario through ``conn``; the replies."""
    replies = []
    for message, fds in gerror_script():
        replies.append(conn.receive(message, [os.dup(fd) for fd in fds]))
    return replies
