"""Start an in-process daemon and attach a guest to it: what every model's end-to-end
helpers need before their driver takes over."""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack

import trio

from vmm.cli import bind_listener
from vmm.config import DaemonConfig, build_devices
from vmm.daemon import serve_listener
from vmm.devidmap import add_config_options, load_daemon_config
from vmm.harness import BackendChannelReader, Client, GuestRam


def daemon_config(*argv: str) -> DaemonConfig:
    """The daemon configuration of ``vmm daemon`` options: ``--device``, the ID-map and
    DMA-master options."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", action="append")
    add_config_options(parser)
    return load_daemon_config(parser.parse_args(list(argv)))


async def start_guest(
    stack: AsyncExitStack, nursery: trio.Nursery, path: str, config: DaemonConfig,
    ram_base: int, ram_size: int,
) -> tuple[Client, GuestRam]:
    """A daemon serving ``config`` on ``path``, and a connected client with guest RAM in its
    memory table.  Everything is released by ``stack``."""
    listener = bind_listener(path)
    stack.callback(listener.close)
    await nursery.start(serve_listener, listener, config)
    client = await Client.connect(path)
    stack.push_async_callback(client.aclose)
    ram = GuestRam(ram_base, ram_size)
    stack.callback(ram.close)
    await client.set_mem_table([ram])
    return client, ram


async def attach_guest(
    stack: AsyncExitStack, nursery: trio.Nursery, path: str, spec: str, ram_base: int,
    ram_size: int,
) -> tuple[Client, GuestRam, BackendChannelReader]:
    """``start_guest`` with one model, ``--device spec``, and a back-end channel open."""
    client, ram = await start_guest(stack, nursery, path, DaemonConfig(build_devices([spec])),
                                    ram_base, ram_size)
    channel = await client.open_backend_channel()
    stack.callback(channel.close)
    return client, ram, channel
