"""The PV-IOMMU model driven by plain calls (sans-IO), over a real HostIOMMU."""

from __future__ import annotations

import errno as E
from typing import Any

import pytest

from devices.model import DmaFault, DmaRequest, DmaTarget
from devices.pviommu.device import PvIommu, State, parse_phantoms, phantom_functions
from devices.testing import FlatMemory, RecordingEnv
from protocols import pviommu as pv
from protocols.pviommu import Cmd

RAM = 0x4000_0000


class FailingAttach:
    """A host whose attach of one requester fails: for the all-or-nothing rule."""

    def __init__(self, inner: Any, bad: int) -> None:
        self.inner = inner
        self.bad = bad

    def attach(self, segment: int, requester: int, ctx: int) -> int:
        if requester == self.bad and ctx != 0:
            return -E.EIO
        status: int = self.inner.attach(segment, requester, ctx)
        return status

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make(**options: Any) -> tuple[PvIommu, RecordingEnv]:
    env = RecordingEnv(memory=FlatMemory(RAM, 1 << 20))
    config = {"rids": (0, 0xFF), "id": 0, **options}
    return PvIommu(config, env), env


def op(model: PvIommu, cmd: Cmd, layout: Any, **fields: int) -> tuple[int, dict[str, int]]:
    status, body = model.pv_op(cmd, pv.pack(layout, **fields))
    return status, pv.unpack(layout, body)


def test_phantom_grammar() -> None:
    assert parse_phantoms("0x10/2:0x21/4") == ((0x10, 2), (0x21, 4))
    assert parse_phantoms("") == ()
    assert phantom_functions(0x10, 2) == [0x12, 0x14, 0x16]
    assert phantom_functions(0x21, 4) == [0x25]
    for bad in ("0x10", "0x10/3", "0x17/1", "zz/1", "0x10000/1"):
        with pytest.raises(ValueError):
            parse_phantoms(bad)


def test_states() -> None:
    model, _ = make()
    assert model.state is State.UNINITIALIZED
    assert op(model, Cmd.init, pv.Init, max_ctx_no=2)[0] == 0
    assert model.state is State.INITIALIZED
    model.reset()
    assert model.state is State.UNINITIALIZED


def test_reattach_is_all_or_nothing() -> None:
    model, env = make(phantom="0x20/2")
    host = env.host
    model.host = FailingAttach(host, bad=0x24)  # type: ignore[assignment]
    assert op(model, Cmd.init, pv.Init, max_ctx_no=2)[0] == 0
    status, alloc = op(model, Cmd.alloc_context, pv.Alloc)
    assert status == 0
    status, _ = op(model, Cmd.reattach_device, pv.ReattachDevice, ctx_no=alloc["ctx_no"],
                   bus=0, devfn=0x20)
    assert status == -E.EIO
    assert all(host.device_context(0, rid) in (None, 0) for rid in (0x20, 0x22, 0x24, 0x26))


def test_translate_uses_the_device_context() -> None:
    model, env = make()
    assert op(model, Cmd.init, pv.Init, max_ctx_no=1)[0] == 0
    _, alloc = op(model, Cmd.alloc_context, pv.Alloc)
    ctx = alloc["ctx_no"]
    assert op(model, Cmd.map_pages, pv.MapPages, ctx_no=ctx, gfn=(RAM >> 12) + 2, dfn=7,
              map_flags=pv.IOMMU_MAP_writeable, pgsize=4096, nr_pages=1) == \
        (0, {"ctx_no": ctx, "pad0": 0, "pad1": 0, "gfn": (RAM >> 12) + 2, "dfn": 7,
             "map_flags": 2, "pgsize": 4096, "nr_pages": 1, "mapped": 1})
    assert op(model, Cmd.reattach_device, pv.ReattachDevice, ctx_no=ctx, devfn=5)[0] == 0
    got = model.translate(DmaRequest(5, None, 0x7010, True, False, False))
    assert isinstance(got, DmaTarget) and got.gpa == RAM + 0x2010
    assert model.translate(DmaRequest(5, None, 0x7010, False, False, False)) == \
        DmaFault(2, 0, 0x7010, 2)  # write-only mapping read
    assert isinstance(model.translate(DmaRequest(6, None, RAM, False, False, False)), DmaTarget)


def test_batch_limit_follows_the_host() -> None:
    model, _ = make(**{"max-pages": 4096})
    assert model.max_pages == 512  # HostCaps.max_pages_per_op
