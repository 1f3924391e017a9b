"""Start an in-process daemon with one model and attach a guest to it: what every model's
end-to-end helpers need before their driver takes over."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from vmm.cli import bind_listener
from vmm.config import DaemonConfig, build_devices
from vmm.daemon import serve_listener
from vmm.harness import BackendChannelReader, Client, GuestRam


async def attach_guest(
    stack: AsyncExitStack, nursery: trio.Nursery, path: str, spec: str, ram_base: int,
    ram_size: int,
) -> tuple[Client, GuestRam, BackendChannelReader]:
    """A daemon serving ``--device spec`` on ``path``; a connected client with guest RAM in
    its memory table and a back-end channel.  Everything is released by ``stack``."""
    listener = bind_listener(path)
    stack.callback(listener.close)
    await nursery.start(serve_listener, listener, DaemonConfig(build_devices([spec])))
    client = await Client.connect(path)
    stack.push_async_callback(client.aclose)
    ram = GuestRam(ram_base, ram_size)
    stack.callback(ram.close)
    await client.set_mem_table([ram])
    channel = await client.open_backend_channel()
    stack.callback(channel.close)
    return client, ram, channel
