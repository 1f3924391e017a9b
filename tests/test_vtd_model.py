"""The VT-d model driven directly (no socket) through ``devices.vtd.testing.Programmer``:
what is easier to see from inside — the bounded invalidation queue, the host contexts and
bindings the model holds, caching-mode shadowing, page-request dispositions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devices.model import DmaFault, DmaRequest, DmaTarget, Perm
from devices.testing import RecordingEnv
from devices.vtd import hostmap, queue
from devices.vtd.device import VTd
from devices.vtd.pasid import Pgtt
from devices.vtd.prq import PageRequestResult
from devices.vtd.testing import IQH, Programmer, cc_inv, devtlb_inv, iotlb_inv, pc_inv, wait
from vmm.memory import GuestMemory, anonymous_memory

BASE = 0x4000_0000
SID = 0x18


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = anonymous_memory([(BASE, 32 << 20)])
    yield memory
    memory.clear()


def make(mem: GuestMemory, **options: Any) -> tuple[VTd, Programmer, RecordingEnv]:
    env = RecordingEnv(memory=mem)  # type: ignore[arg-type]
    dev = VTd({k.replace("_", "-"): v for k, v in options.items()}, env)
    return dev, Programmer(dev, mem, BASE + (16 << 20)), env


def req(iova: int, *, sid: int = SID, pasid: int | None = None, write: bool = False,
        record: bool = True) -> DmaRequest:
    return DmaRequest(sid, pasid, iova, write, False, False, record)


def test_queue_work_is_bounded_per_register_access(mem: GuestMemory) -> None:
    dev, p, _ = make(mem)
    p.enable(qs=4)  # 4096 slots
    total = 3 * queue.BUDGET
    start = p.tail
    p.submit(*[iotlb_inv()] * total)
    assert dev.regs["IQH"] == start + queue.BUDGET * 16  # one budget per access
    assert dev.queue.pending
    dev.mmio_read(IQH, 8)
    dev.mmio_read(IQH, 8)
    assert dev.regs["IQH"] == p.tail and not dev.queue.pending


def test_host_contexts_stay_bounded(mem: GuestMemory) -> None:
    dev, p, env = make(mem)
    buf = p.alloc.alloc(4096)
    ss = p.second_stage()
    ss.map(0x1000, buf, 4096)
    for did in range(1, 300):
        p.legacy_context(did, did, ss)  # bus 0..1, one domain each
    p.enable()
    for did in range(1, 300):
        got = dev.translate(req(0x1000, sid=did))
        assert isinstance(got, DmaTarget) and got.gpa == buf
    assert len(dev.hostmap.domains) <= hostmap.MAX_CONTEXTS
    assert len(env.host.contexts) <= hostmap.MAX_CONTEXTS + 1  # type: ignore[attr-defined]


def test_caching_mode_installs_shadow_on_invalidation(mem: GuestMemory) -> None:
    dev, p, env = make(mem, caching_mode=True)
    ss = p.second_stage()
    p.legacy_context(SID, 5, ss)
    p.enable()
    assert isinstance(dev.translate(req(0x9000)), DmaFault)  # the domain exists now
    buf = p.alloc.alloc(4096)
    ss.map(0x2000, buf, 4096)
    assert p.sync(iotlb_inv(3, 5, 0x2000, 0))
    (dom,) = dev.hostmap.domains.values()
    assert env.host.lookup(dom.ctx, 0x2000) == (buf, 7)  # type: ignore[attr-defined]


def test_pasid_binding_dropped_when_the_entry_goes(mem: GuestMemory) -> None:
    dev, p, env = make(mem, scalable_mode=True, pasid_bits=20)
    fs = p.first_stage()
    fs.map(0x7000, p.alloc.alloc(4096), 4096)
    p.sm_context(SID)
    slot = p.pasid_entry(SID, 5, Pgtt.FIRST_STAGE, 4, fs=fs)
    p.enable()
    assert isinstance(dev.translate(req(0x7000, pasid=5)), DmaTarget)
    assert [(pasid, sid) for _, pasid, sid in dev.hostmap.bindings()] == [(5, SID)]
    mem.write(slot, bytes(64))
    assert p.sync(pc_inv())
    assert dev.hostmap.bindings() == []
    assert isinstance(dev.translate(req(0x7000, pasid=5)), DmaFault)


def test_pasid_selective_cache_invalidation_binds_at_once(mem: GuestMemory) -> None:
    dev, p, _ = make(mem, scalable_mode=True, pasid_bits=20)
    p.sm_context(SID)
    p.pasid_entry(SID, 0, Pgtt.PASS_THROUGH, 1)
    p.enable()
    assert isinstance(dev.translate(req(0x7000)), DmaTarget)  # the device is known
    fs = p.first_stage()
    p.pasid_entry(SID, 9, Pgtt.FIRST_STAGE, 4, fs=fs)
    assert p.sync(pc_inv(1, 4, 9))
    assert [(pasid, sid) for _, pasid, sid in dev.hostmap.bindings()] == [(9, SID)]


def test_reset_frees_every_host_context(mem: GuestMemory) -> None:
    dev, p, env = make(mem)
    p.legacy_context(SID, 5, p.second_stage())
    p.enable()
    dev.translate(req(0x1000))
    assert dev.hostmap.domains
    dev.reset()
    assert not dev.hostmap.domains
    assert set(env.host.contexts) == {0}  # type: ignore[attr-defined]


def test_translate_never_records(mem: GuestMemory) -> None:
    dev, p, _ = make(mem)
    p.legacy_context(SID, 5, p.second_stage())
    p.enable()
    assert isinstance(dev.translate(req(0x1000, record=False)), DmaFault)
    assert dev.regs["FSTS"] == 0


@pytest.mark.parametrize(("setup", "flags", "result", "responses"), [
    ("queued", 0x11, PageRequestResult.QUEUED, []),
    ("pre_clear", 0x11, PageRequestResult.AUTO_INVALID, [(SID, None, 3, 1)]),
    ("pre_clear", 0x01, PageRequestResult.DROPPED, []),
    ("full", 0x11, PageRequestResult.AUTO_SUCCESS, [(SID, None, 3, 0)]),
])
def test_page_request_dispositions(mem: GuestMemory, setup: str, flags: int,
                                   result: PageRequestResult,
                                   responses: list[tuple[int, int | None, int, int]]) -> None:
    dev, p, env = make(mem, scalable_mode=True, pasid_bits=8, device_iotlb=True, pri=True)
    p.sm_context(SID, pre=int(setup != "pre_clear"), dte=1)
    p.enable()
    dev.mmio_write(0xD0, 8, p.alloc.alloc(4096))
    if setup == "full":
        dev.mmio_write(0xDC, 4, 0)
        dev.regs["PRS"] = 2  # PRO already set
    assert dev.page_request(SID, None, flags, 0x5000, 3) == 0
    assert dev.last_page_request is result
    assert env.page_responses == responses


def test_context_cache_invalidation_by_domain(mem: GuestMemory) -> None:
    dev, p, _ = make(mem)
    ss = p.second_stage()
    ss.map(0x1000, p.alloc.alloc(4096), 4096, Perm.R)
    slot = p.legacy_context(SID, 5, ss)
    p.enable()
    assert isinstance(dev.translate(req(0x1000)), DmaTarget)
    mem.write(slot, bytes(16))
    assert p.sync(cc_inv(2, did=6))  # another domain: the entry stays cached
    assert isinstance(dev.translate(req(0x1000)), DmaTarget)
    assert p.sync(cc_inv(2, did=5), wait())
    assert isinstance(dev.translate(req(0x1000)), DmaFault)


def test_ccmd_domain_selective_is_performed_as_such_qemu_deviation(mem: GuestMemory) -> None:
    # QEMU performs a domain-selective context invalidation as global and reports CAIG = 01.
    dev, p, _ = make(mem)
    dev.mmio_write(0x28, 8, 1 << 63 | 2 << 61 | 5)
    assert dev.mmio_read(0x28, 8) == 2 << 61 | 2 << 59 | 5


# -- invalidation time-out (§6.5.2.10) ----------------------------------------------------


def test_lost_device_tlb_invalidation_aborts_the_next_wait_with_ite(mem: GuestMemory) -> None:
    dev, p, env = make(mem, device_iotlb=True)
    p.enable()
    dev.mmio_write(0x38, 4, 0)  # FECTL unmasked
    env.atc_ok = False
    start = p.read(IQH, 8)
    assert not p.sync(devtlb_inv(SID, 0x4000), wait(iflag=1), value=5)
    assert dev.regs.get("FSTS", "ITE") == 1
    assert dev.regs.get("IQERCD", "ITESID") == SID
    assert p.read(IQH, 8) == start + 2 * 16  # past the aborted wait; the rest not fetched
    assert dev.regs["ICS"] == 0  # the aborted wait's interrupt was not sent
    assert [v for v, _, _ in env.msis] == [dev.irq_names.index("fault")]
    env.atc_ok = True
    dev.mmio_write(0x34, 4, 1 << 6)  # software clears ITE: fetching resumes at IQH
    assert mem.read_u32(p.status) == 5  # the next wait completes
    assert dev.regs["ICS"] == 0  # the aborted one stays aborted
    assert p.read(IQH, 8) == p.tail


def test_delivered_device_tlb_invalidation_completes(mem: GuestMemory) -> None:
    dev, p, env = make(mem, device_iotlb=True)
    p.enable()
    assert p.sync(devtlb_inv(SID, 0x4000))
    assert dev.regs.get("FSTS", "ITE") == 0 and len(env.atc_invalidations) == 1


def test_reset_forgets_a_lost_device_tlb_invalidation(mem: GuestMemory) -> None:
    dev, p, env = make(mem, device_iotlb=True)
    p.enable()
    env.atc_ok = False
    p.submit(devtlb_inv(SID, 0x4000))
    assert dev.ite_sid == SID
    dev.reset()
    assert dev.ite_sid is None
