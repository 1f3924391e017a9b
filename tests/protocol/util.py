"""Helpers for the one-test-per-malformed-message protocol tests."""

from __future__ import annotations

import errno
import os

from protocols.messages import Request
from vmm.harness import Client


def pipe_fd() -> tuple[int, int]:
    """A pipe: send ``w`` to the daemon and keep ``r`` to see whether the daemon closed it."""
    return os.pipe()


def closed_by_peer(r: int, w: int) -> bool:
    """After we drop our own ``w``, EOF on ``r`` means no copy of ``w`` is left anywhere."""
    os.close(w)
    os.set_blocking(r, False)
    try:
        return os.read(r, 1) == b""
    except BlockingIOError:
        return False
    finally:
        os.close(r)


async def still_serving(client: Client) -> bool:
    reply = await client.call(Request.GET_FEATURES)
    return reply.status == 0 and len(reply.data) == 8


EINVAL, ENOSYS, ENODEV, ENOENT, E2BIG, EFAULT = (
    -errno.EINVAL, -errno.ENOSYS, -errno.ENODEV, -errno.ENOENT, -errno.E2BIG, -errno.EFAULT)
