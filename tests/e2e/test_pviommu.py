"""PV_IOMMU_OP end to end: every v7 sub-op and every error, through a real socket.

The daemon holds one PV-IOMMU (device 0, segment 0, requesters 0x00-0xff unless a test says
otherwise); guest RAM is 1 MiB at 2 GiB, so gfns 0x80000-0x800ff are RAM and nothing else is.
The rules tested are protocols/protocol.md, "PV_IOMMU_OP structures".
"""

from __future__ import annotations

import errno as E
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import construct as c
import pytest
import trio

from protocols import messages as m
from protocols import pviommu as pv
from protocols.messages import Request
from protocols.pviommu import Cmd
from tests.e2e.attach import start_guest
from vmm.config import DaemonConfig, build_devices
from vmm.harness import Client, Fault, GuestRam, Translation

RAM_BASE = 0x8000_0000
RAM_SIZE = 1 << 20
GFN0 = RAM_BASE >> 12
RAM_PAGES = RAM_SIZE >> 12
RW = pv.IOMMU_MAP_readable | pv.IOMMU_MAP_writeable
DEV = 0x08  # 00:01.0
OTHER = 0x10  # 00:02.0


@dataclass
class Pv:
    """A PV-IOMMU driver in a few lines: one call per sub-op, structures as dicts."""

    client: Client
    ram: GuestRam

    async def raw(self, subop: int, body: bytes) -> tuple[int, bytes]:
        reply = await self.client.call(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(subop, 0) + body)
        return reply.status, reply.data

    async def op(self, cmd: int, layout: c.Struct, **fields: int) -> tuple[int, dict[str, int]]:
        status, data = await self.raw(cmd, pv.pack(layout, **fields))
        return status, pv.unpack(layout, data)

    async def caps(self) -> dict[str, int]:
        status, out = await self.op(Cmd.query_capabilities, pv.CapabilitiesExt)
        assert status == 0
        return out

    async def init(self, max_ctx_no: int = 8, arena_order: int = 4) -> int:
        status, _ = await self.op(Cmd.init, pv.Init, max_ctx_no=max_ctx_no,
                                  arena_order=arena_order)
        return status

    async def alloc(self, flags: int = 0) -> tuple[int, int]:
        status, out = await self.op(Cmd.alloc_context, pv.Alloc, alloc_flags=flags)
        return status, out["ctx_no"]

    async def free(self, ctx_no: int, flags: int = 0) -> int:
        status, _ = await self.op(Cmd.free_context, pv.Free, ctx_no=ctx_no, free_flags=flags)
        return status

    async def reattach(self, ctx_no: int, rid: int, seg: int = 0, pasid: int = 0) -> int:
        status, _ = await self.op(Cmd.reattach_device, pv.ReattachDevice, ctx_no=ctx_no,
                                  seg=seg, bus=rid >> 8, devfn=rid & 0xFF, pasid=pasid)
        return status

    async def map(self, ctx_no: int, dfn: int, gfn: int, n: int = 1, flags: int = RW,
                  pgsize: int = 4096) -> tuple[int, int]:
        status, out = await self.op(Cmd.map_pages, pv.MapPages, ctx_no=ctx_no, gfn=gfn,
                                    dfn=dfn, map_flags=flags, pgsize=pgsize, nr_pages=n)
        return status, out["mapped"]

    async def unmap(self, ctx_no: int, dfn: int, n: int = 1,
                    pgsize: int = 4096) -> tuple[int, int]:
        status, out = await self.op(Cmd.unmap_pages, pv.UnmapPages, ctx_no=ctx_no, dfn=dfn,
                                    pgsize=pgsize, nr_pages=n)
        return status, out["unmapped"]

    async def lookup(self, ctx_no: int, dfn: int) -> tuple[int, int]:
        status, out = await self.op(Cmd.lookup_page, pv.LookupPage, ctx_no=ctx_no, dfn=dfn)
        return status, out["gfn"]

    async def dma_read(self, rid: int, iova: int, n: int = 8) -> bytes | Fault:
        return await self.client.dma(rid, iova, n)

    async def dma_write(self, rid: int, iova: int, data: bytes) -> bytes | Fault:
        return await self.client.dma(rid, iova, data=data)


Factory = Callable[..., Awaitable[Pv]]


@pytest.fixture
async def pv_guest(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Factory]:
    """``await pv_guest("no-dma=on")``: a daemon with one pv-iommu, a guest with RAM."""
    async with AsyncExitStack() as stack:
        count = 0

        async def make(*options: str, devices: tuple[str, ...] = ()) -> Pv:
            nonlocal count
            count += 1
            spec = ",".join(("pv-iommu", "rids=0-0xff", *options))
            config = DaemonConfig(build_devices([spec, *devices]))
            return Pv(*await start_guest(stack, nursery, str(tmp_path / f"pv{count}.sock"),
                                         config, RAM_BASE, RAM_SIZE))

        yield make


@pytest.fixture
async def guest(pv_guest: Factory) -> Pv:
    return await pv_guest()


async def ready(g: Pv, contexts: int = 1) -> list[int]:
    """init, then ``contexts`` contexts."""
    assert await g.init() == 0
    out = []
    for _ in range(contexts):
        status, ctx = await g.alloc()
        assert status == 0
        out.append(ctx)
    return out


# -- the model in GET_CONFIG, features, MMIO -----------------------------------------------

async def test_listed_as_a_model(guest: Pv) -> None:
    features = await guest.client.get_features()
    assert features & m.Feature.PV_IOMMU
    cfg = await guest.client.get_config()
    assert cfg["pv_iommu"] is True
    (dev,) = cfg["devices"]
    assert dev["model"] == "pv-iommu" and dev["mmio"] == {"base": 0, "size": 0}
    assert dev["irqs"] == [] and dev["segment"] == 0 and dev["requesters"] == [[0, 0xFF]]


async def test_no_mmio_window(guest: Pv) -> None:
    reply = await guest.client.call(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0))
    assert reply.status == -E.EINVAL


# -- framing of the sub-op structures ------------------------------------------------------

async def test_noop(guest: Pv) -> None:
    assert await guest.raw(Cmd.noop, b"") == (0, b"")
    assert (await guest.raw(Cmd.noop, b"\0" * 8))[0] == -E.EINVAL  # noop takes no structure


@pytest.mark.parametrize("subop", [13, 100, 127, 129, 0xFFFF_FFFF])
async def test_unknown_subop_is_eopnotsupp_unchanged(guest: Pv, subop: int) -> None:
    body = bytes(range(16))
    assert await guest.raw(subop, body) == (-E.EOPNOTSUPP, body)


@pytest.mark.parametrize("cmd, layout", [
    (Cmd.alloc_nested, pv.AllocNested), (Cmd.flush_nested, pv.FlushNested),
    (Cmd.attach_pasid, pv.AttachPasid), (Cmd.detach_pasid, pv.DetachPasid)])
async def test_extended_subops_not_supported(guest: Pv, cmd: Cmd, layout: c.Struct) -> None:
    body = b"\x55" * layout.sizeof()
    assert await guest.raw(cmd, body) == (-E.EOPNOTSUPP, body)
    caps = await guest.caps()
    assert not caps["cap_flags"] & (pv.IOMMUCAP_nested | pv.IOMMUCAP_pasid)


SIZED = [(cmd, layout) for cmd, layout in pv.LAYOUTS.items()
         if layout is not None and cmd not in (Cmd.alloc_nested, Cmd.flush_nested,
                                                Cmd.attach_pasid, Cmd.detach_pasid)]


@pytest.mark.parametrize("cmd, layout", SIZED)
@pytest.mark.parametrize("delta", [-1, 1, 8])
async def test_wrong_structure_size(guest: Pv, cmd: Cmd, layout: c.Struct, delta: int) -> None:
    size = layout.sizeof() + delta
    if cmd is Cmd.query_capabilities and size == pv.CapabilitiesExt.sizeof():
        size += 1
    body = bytes(size)
    assert await guest.raw(cmd, body) == (-E.EINVAL, body)


PADDED = [(cmd, layout, name) for cmd, layout in SIZED for name in pv.pad_fields(layout)]


@pytest.mark.parametrize("cmd, layout, pad", PADDED)
async def test_padding_is_reserved(guest: Pv, cmd: Cmd, layout: c.Struct, pad: str) -> None:
    await ready(guest)
    body = pv.pack(layout, **{pad: 1})
    status, data = await guest.raw(cmd, body)
    assert status == -E.EINVAL and data == body


async def test_reserved_head_word(guest: Pv) -> None:
    reply = await guest.client.call(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(0, 1))
    assert reply.status == -E.EINVAL


# -- query_capabilities and init ------------------------------------------------------------

async def test_capabilities_before_and_after_init(pv_guest: Factory) -> None:
    g = await pv_guest("max-contexts=5", "max-pages=64")
    status, v7 = await g.op(Cmd.query_capabilities, pv.Capabilities)
    assert status == 0
    assert v7 == {"max_iova_addr": (1 << 48) - 1,
                  "cap_flags": pv.IOMMUCAP_default_identity | pv.IOMMUCAP_identity,
                  "pgsize_mask": 4096, "max_pasid": 0, "max_ctx_no": 0, "pad0": 0}
    assert (await g.caps())["max_nr_pages"] == 64
    assert await g.init(max_ctx_no=100) == 0
    assert (await g.caps())["max_ctx_no"] == 5  # init grants at most max-contexts
    assert (await g.caps())["reserved"] == 0


async def test_capabilities_in_no_dma_mode(pv_guest: Factory) -> None:
    g = await pv_guest("no-dma=on")
    assert not (await g.caps())["cap_flags"] & pv.IOMMUCAP_default_identity


async def test_init_once(guest: Pv) -> None:
    assert await guest.init(max_ctx_no=3) == 0
    assert await guest.init(max_ctx_no=3) == -E.EACCES
    assert (await guest.caps())["max_ctx_no"] == 3


async def test_init_max_ctx_no_all_ones(guest: Pv) -> None:
    assert await guest.init(max_ctx_no=0xFFFF_FFFF) == -E.E2BIG
    assert await guest.init(max_ctx_no=1) == 0  # the failed init initialized nothing


# -- alloc_context and free_context -----------------------------------------------------------

async def test_alloc_needs_init_and_stops_at_the_limit(guest: Pv) -> None:
    assert (await guest.alloc())[0] == -E.ENOSPC
    assert await guest.init(max_ctx_no=2) == 0
    assert await guest.alloc() == (0, 1)
    assert await guest.alloc() == (0, 2)
    assert (await guest.alloc())[0] == -E.ENOSPC
    assert await guest.free(1) == 0
    assert await guest.alloc() == (0, 1)  # numbers are positions in the pool


async def test_alloc_flags(guest: Pv) -> None:
    await ready(guest, 0)
    assert (await guest.alloc(flags=1 << 1))[0] == -E.EINVAL
    status, ctx = await guest.alloc(flags=pv.IOMMU_ALLOC_identity)
    assert status == 0 and ctx == 1


async def test_free_errors(guest: Pv) -> None:
    (ctx,) = await ready(guest)
    assert await guest.free(0) == -E.EINVAL  # the default context
    assert await guest.free(7) == -E.ENOENT
    assert await guest.free(ctx, flags=1 << 1) == -E.EINVAL
    assert await guest.reattach(ctx, DEV) == 0
    assert await guest.free(ctx) == -E.EBUSY
    assert await guest.free(ctx, flags=pv.IOMMU_FREE_reattach_default) == 0
    assert await guest.free(ctx) == -E.ENOENT


async def test_free_with_reattach_moves_devices_to_default(guest: Pv) -> None:
    (ctx,) = await ready(guest)
    guest.ram.write(RAM_BASE + 0x3000, b"identity")
    assert await guest.reattach(ctx, DEV) == 0
    fault = await guest.dma_read(DEV, RAM_BASE + 0x3000)
    assert isinstance(fault, Fault) and fault.kind == 1  # the new context maps nothing
    assert await guest.free(ctx, flags=pv.IOMMU_FREE_reattach_default) == 0
    assert await guest.dma_read(DEV, RAM_BASE + 0x3000) == b"identity"


# -- reattach_device --------------------------------------------------------------------------

async def test_reattach_errors(guest: Pv) -> None:
    (ctx,) = await ready(guest)
    assert await guest.reattach(ctx, 0x100) == -E.ENOENT  # outside rids
    assert await guest.reattach(ctx, DEV, seg=1) == -E.ENOENT  # another segment
    assert await guest.reattach(5, DEV) == -E.ENOENT  # no such context
    assert await guest.reattach(ctx, DEV, pasid=1) == -E.EINVAL  # no IOMMUCAP_pasid
    assert await guest.reattach(ctx, DEV) == 0
    assert await guest.reattach(ctx, DEV) == 0  # already there
    assert await guest.reattach(0, DEV) == 0  # back to the default context


async def test_reattach_moves_phantom_functions_together(pv_guest: Factory) -> None:
    g = await pv_guest("phantom=0x20/2")
    (ctx,) = await ready(g)
    assert await g.map(ctx, dfn=0x40, gfn=GFN0 + 4) == (0, 1)
    g.ram.write(RAM_BASE + 0x4000, b"phantoms")
    assert await g.reattach(ctx, 0x22) == -E.ENOENT  # a phantom function is no device
    assert await g.reattach(ctx, 0x20) == 0
    for rid in (0x20, 0x22, 0x24, 0x26):
        assert await g.dma_read(rid, 0x40000) == b"phantoms"
    fault = await g.dma_read(0x21, 0x40000)  # function 1 is another device, still default
    assert isinstance(fault, Fault) and fault.kind == 1
    assert await g.reattach(0, 0x20) == 0
    for rid in (0x20, 0x22, 0x24, 0x26):
        assert await g.dma_read(rid, RAM_BASE + 0x4000) == b"phantoms"


async def test_phantom_functions_must_be_owned() -> None:
    from vmm.config import ConfigError

    with pytest.raises(ConfigError, match="phantom"):
        build_devices(["pv-iommu,rids=0-0x21,phantom=0x20/2"])
    with pytest.raises(ConfigError, match="STRIDE"):
        build_devices(["pv-iommu,phantom=0x20/3"])


async def test_one_pv_iommu_per_guest() -> None:
    from vmm.config import ConfigError

    with pytest.raises(ConfigError, match="one pv-iommu"):
        build_devices(["pv-iommu,rids=0-1", "pv-iommu,rids=2-3"])


# -- map_pages ----------------------------------------------------------------------------

async def test_map_errors_before_any_work(pv_guest: Factory) -> None:
    g = await pv_guest("max-pages=16")
    (ctx,) = await ready(g)
    assert await g.map(ctx, 0, GFN0, n=17) == (-E.E2BIG, 0)
    assert await g.map(0, 0, GFN0) == (-E.EINVAL, 0)  # the default context
    assert await g.map(9, 0, GFN0) == (-E.EINVAL, 0)  # no such context
    assert await g.map(ctx, 0, GFN0, pgsize=2 << 20) == (-E.EINVAL, 0)  # pgsize_mask: 4 KiB
    assert await g.map(ctx, 0, GFN0, flags=1 << 3) == (-E.EINVAL, 0)
    assert await g.map(ctx, 0, GFN0, flags=pv.IOMMU_MAP_cache) == (-E.EINVAL, 0)
    assert await g.map(ctx, 0, GFN0, n=16) == (0, 16)
    assert await g.map(ctx, 0x100, GFN0, n=0) == (0, 0)


async def test_map_partial_progress(guest: Pv) -> None:
    (ctx,) = await ready(guest)
    # Leaving guest RAM after 3 pages: a gfn the guest does not own.
    assert await guest.map(ctx, 0x10, GFN0 + RAM_PAGES - 3, n=8) == (-E.ENOENT, 3)
    # Running into a mapped dfn after 2 pages.
    assert await guest.map(ctx, 0x0E, GFN0, n=8) == (-E.EADDRINUSE, 2)
    assert await guest.lookup(ctx, 0x0F) == (0, GFN0 + 1)
    assert (await guest.lookup(ctx, 0x10))[1] == GFN0 + RAM_PAGES - 3  # not remapped
    # Past max_iova_addr after 1 page.
    top = (1 << 48 >> 12) - 1
    assert await guest.map(ctx, top, GFN0, n=4) == (-E.EINVAL, 1)
    assert await guest.map(ctx, 0x200, 0x1_0000_0000_0000 - 1, n=2) == (-E.ENOENT, 0)


async def test_map_runs_out_of_arena(guest: Pv) -> None:
    assert await guest.init(max_ctx_no=2, arena_order=0) == 0  # one page: 512 leaves
    _, a = await guest.alloc()
    _, b = await guest.alloc()
    assert await guest.map(a, 0, GFN0, n=256) == (0, 256)
    assert await guest.map(b, 0, GFN0, n=250) == (0, 250)
    assert await guest.map(b, 0x1000, GFN0, n=10) == (-E.ENOMEM, 6)
    assert await guest.unmap(a, 0, n=10) == (0, 10)
    assert await guest.map(b, 0x1006, GFN0, n=10) == (0, 10)
    assert await guest.free(a) == 0  # freeing returns the context's leaves
    assert await guest.map(b, 0x2000, GFN0, n=200) == (0, 200)


async def test_identity_context_cannot_be_edited(guest: Pv) -> None:
    assert await guest.init() == 0
    status, ctx = await guest.alloc(flags=pv.IOMMU_ALLOC_identity)
    assert status == 0
    assert await guest.map(ctx, GFN0, GFN0) == (-E.EADDRNOTAVAIL, 0)
    assert await guest.unmap(ctx, GFN0) == (-E.EADDRNOTAVAIL, 0)
    assert await guest.lookup(ctx, GFN0 + 2) == (0, GFN0 + 2)
    assert (await guest.lookup(ctx, 0x10))[0] == -E.ENOENT
    guest.ram.write(RAM_BASE, b"one2one!")
    assert await guest.reattach(ctx, DEV) == 0
    assert await guest.dma_read(DEV, RAM_BASE) == b"one2one!"


# -- unmap_pages ----------------------------------------------------------------------------

async def test_unmap(pv_guest: Factory) -> None:
    g = await pv_guest("max-pages=32")
    (ctx,) = await ready(g)
    assert await g.map(ctx, 0x20, GFN0, n=4) == (0, 4)
    assert await g.unmap(ctx, 0x20, n=33) == (-E.E2BIG, 0)
    assert await g.unmap(0, 0x20) == (-E.EINVAL, 0)
    assert await g.unmap(3, 0x20) == (-E.EINVAL, 0)
    assert await g.unmap(ctx, 0x20, pgsize=8192) == (-E.EINVAL, 0)
    assert await g.unmap(ctx, 0x21, n=8) == (-E.ENOENT, 3)  # 0x21-0x23, then unmapped
    assert await g.lookup(ctx, 0x20) == (0, GFN0)
    assert await g.unmap(ctx, 0x20) == (0, 1)
    assert await g.unmap(ctx, 0x20) == (-E.ENOENT, 0)


# -- lookup_page (the RFC's sub-op, number 128 here) ---------------------------------------

async def test_lookup(pv_guest: Factory) -> None:
    g = await pv_guest()
    (ctx,) = await ready(g)
    assert await g.map(ctx, 0x7, GFN0 + 9) == (0, 1)
    assert await g.lookup(ctx, 0x7) == (0, GFN0 + 9)
    assert (await g.lookup(ctx, 0x8))[0] == -E.ENOENT
    assert (await g.lookup(4, 0x7))[0] == -E.EINVAL
    assert await g.lookup(0, GFN0 + 5) == (0, GFN0 + 5)  # the default context: identity
    assert (await g.lookup(0, 0x5))[0] == -E.ENOENT  # identity over guest RAM only
    nodma = await pv_guest("no-dma=on")
    assert (await nodma.lookup(0, GFN0 + 5))[0] == -E.ENOENT


# -- remote_cmd ------------------------------------------------------------------------------

async def test_remote_cmd(guest: Pv) -> None:
    await ready(guest, 0)
    arg = guest.ram.alloc(4096)
    guest.ram.write(arg, pv.pack(pv.Alloc))
    for domid in (0, pv.DOMID_SELF):
        status, _ = await guest.op(Cmd.remote_cmd, pv.RemoteCmd, domid=domid,
                                   subop=Cmd.alloc_context, arg=arg)
        assert status == 0
    assert pv.unpack(pv.Alloc, guest.ram.read(arg, 8))["ctx_no"] == 2  # written back
    assert (await guest.op(Cmd.remote_cmd, pv.RemoteCmd, domid=1, subop=0, arg=arg))[0] \
        == -E.ENOENT
    assert (await guest.op(Cmd.remote_cmd, pv.RemoteCmd, domid=0, subop=Cmd.remote_cmd,
                           arg=arg))[0] == -E.EINVAL
    assert (await guest.op(Cmd.remote_cmd, pv.RemoteCmd, domid=0, subop=Cmd.free_context,
                           arg=0x1000))[0] == -E.EFAULT
    assert (await guest.op(Cmd.remote_cmd, pv.RemoteCmd, domid=0, subop=99, arg=arg))[0] \
        == -E.EOPNOTSUPP
    guest.ram.write(arg, pv.pack(pv.Free, ctx_no=0))
    assert (await guest.op(Cmd.remote_cmd, pv.RemoteCmd, domid=0, subop=Cmd.free_context,
                           arg=arg))[0] == -E.EINVAL  # the sub-op's own status


# -- DMA through contexts -------------------------------------------------------------------

async def test_dma_faults_of_contexts(guest: Pv) -> None:
    (ctx,) = await ready(guest)
    assert await guest.reattach(ctx, DEV) == 0
    assert await guest.map(ctx, 0x1, GFN0 + 1, flags=pv.IOMMU_MAP_readable) == (0, 1)
    guest.ram.write(RAM_BASE + 0x1000, b"readonly")
    assert await guest.dma_read(DEV, 0x1000) == b"readonly"
    assert await guest.dma_write(DEV, 0x1000, b"x") == Fault(2, 0, 0x1000, 2)
    assert await guest.dma_read(DEV, 0x2000) == Fault(1, 0, 0x2000, 2)
    assert await guest.client.translate(DEV, 0x1234) == Translation(RAM_BASE + 0x1234, 4096, 1)
    # A DMA crossing into an unmapped page faults at that page and writes nothing.
    assert await guest.map(ctx, 0x3, GFN0 + 3) == (0, 1)
    assert await guest.dma_write(DEV, 0x3FF8, b"\xff" * 16) == Fault(1, 0, 0x4000, 2)
    assert guest.ram.read(RAM_BASE + 0x3FF8, 8) == bytes(8)
    # No PASIDs (max_pasid 0).
    assert await guest.client.dma(DEV, 0x1000, 8, pasid=1) == Fault(7, 0, 0x1000, 0)
    # The default context: identity over guest RAM, nothing else.
    assert await guest.dma_read(OTHER, RAM_BASE + 0x1000) == b"readonly"
    assert await guest.dma_read(OTHER, 0x1000) == Fault(1, 0, 0x1000, 2)
    assert await guest.dma_read(OTHER, 1 << 62 | RAM_BASE) == Fault(1, 0, 1 << 62 | RAM_BASE, 2)
    assert await guest.client.translate(OTHER, RAM_BASE) == Translation(RAM_BASE, 4096, 7)


async def test_no_dma_mode(pv_guest: Factory) -> None:
    g = await pv_guest("no-dma=on")
    g.ram.write(RAM_BASE, b"prebootD")
    assert await g.dma_read(DEV, RAM_BASE) == Fault(7, 0, RAM_BASE, 0)
    assert await g.client.translate(DEV, RAM_BASE) == Fault(7, 0, RAM_BASE, 0)
    (ctx,) = await ready(g)
    assert await g.map(ctx, 0x0, GFN0) == (0, 1)
    assert await g.reattach(ctx, DEV) == 0
    assert await g.dma_read(DEV, 0x0) == b"prebootD"
    assert await g.dma_read(OTHER, RAM_BASE) == Fault(7, 0, RAM_BASE, 0)


async def test_dma_outside_rids_has_no_owner(guest: Pv) -> None:
    reply = await guest.client.call(Request.DMA, m.DMA.pack(0x100, m.NO_PASID, RAM_BASE, 8, 0, 0))
    assert reply.status == -E.ENODEV


# -- RESET ------------------------------------------------------------------------------------

async def test_reset_returns_to_before_init(guest: Pv) -> None:
    (ctx,) = await ready(guest)
    assert await guest.reattach(ctx, DEV) == 0
    guest.ram.write(RAM_BASE, b"afterRST")
    await guest.client.reset(0)
    assert (await guest.caps())["max_ctx_no"] == 0
    assert (await guest.alloc())[0] == -E.ENOSPC
    assert await guest.dma_read(DEV, RAM_BASE) == b"afterRST"  # back in the default context
    assert await guest.init() == 0


async def test_reset_keeps_no_dma(pv_guest: Factory) -> None:
    g = await pv_guest("no-dma=on")
    await g.client.reset()
    assert await g.dma_read(DEV, RAM_BASE) == Fault(7, 0, RAM_BASE, 0)


async def test_many_contexts_and_devices_are_independent(guest: Pv) -> None:
    ctxs = await ready(guest, 3)
    for i, ctx in enumerate(ctxs):
        rid = 0x40 + 8 * i
        assert await guest.reattach(ctx, rid) == 0
        assert await guest.map(ctx, 0x5, GFN0 + 16 + i) == (0, 1)
        guest.ram.write(RAM_BASE + ((16 + i) << 12), bytes([i]) * 8)
    for i in range(3):
        assert await guest.dma_read(0x40 + 8 * i, 0x5000) == bytes([i]) * 8


def test_structures_match_the_harness_view() -> None:
    # The client's dict view and the model's fast codecs agree on field order.
    sample: dict[str, Any] = {"ctx_no": 3, "gfn": 0x1234, "dfn": 5, "map_flags": 3,
                              "pgsize": 4096, "nr_pages": 7, "mapped": 2}
    raw = pv.pack(pv.MapPages, **sample)
    assert dict(zip(pv.MAP_PAGES.names, pv.MAP_PAGES.unpack(raw), strict=True)) == \
        {**sample, "pad0": 0, "pad1": 0}
