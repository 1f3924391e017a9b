"""The PRI queue (IHI 0070 chapter 8) and CMD_PRI_RESP: page requests queued with the
record layout, the automatic responses (PRIQEN = 0, overflow with STE.PPAR, queue abort),
stop markers, and responses to the device."""

from __future__ import annotations

import errno

from devices.smmuv3 import regs as r
from devices.smmuv3.commands import PRI_RESP_FAILURE, PRI_RESP_SUCCESS, Op
from devices.smmuv3.device import PRI_EXECUTE, PRI_LAST, PRI_PRIVILEGED, PRI_READ, PRI_WRITE
from devices.smmuv3.testing import make_rig

PRI_IRQ = r.IRQ_CTRL.PRI_IRQEN.mask


def test_page_request_is_queued_with_the_irq() -> None:
    rig, env = make_rig({"ssidsize": 8}, irqs=PRI_IRQ)
    flags = PRI_READ | PRI_WRITE | PRI_EXECUTE | PRI_PRIVILEGED | PRI_LAST
    assert rig.dev.page_request(5, 7, flags, 0x1234_5678, 33) == 0
    assert rig.dev.page_request(5, None, PRI_READ | PRI_EXECUTE, 0x9000, 34) == 0
    (a, b) = rig.page_requests()
    assert a == {"SSV": 1, "Last": 1, "W": 1, "R": 1, "X": 1, "Priv": 1, "SubstreamID": 7,
                 "StreamID": 5, "Address": 0x12345, "PRGIndex": 33}
    assert (b["SSV"], b["X"], b["Priv"], b["Last"], b["PRGIndex"]) == (0, 0, 0, 0, 34)
    assert env.irqs == [r.IRQ_PRIQ] * 2
    assert env.page_responses == []


def test_pri_resp_goes_to_the_device() -> None:
    rig, env = make_rig({"ssidsize": 8})
    rig.command(Op.PRI_RESP, StreamID=5, SSV=1, SubstreamID=7, PRGIndex=33, Resp=2)
    rig.command(Op.PRI_RESP, StreamID=6, PRGIndex=1, Resp=1)
    assert env.page_responses == [(5, 7, 33, 2), (6, None, 1, 1)]


def test_pri_disabled_answers_failure_without_pasid() -> None:
    rig, env = make_rig({"ssidsize": 8})
    rig.cr0(r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask | r.CR0.SMMUEN.mask)  # PRIQEN = 0
    rig.dev.page_request(5, 7, PRI_READ, 0x1000, 2)
    rig.dev.page_request(5, 7, PRI_LAST, 0, 3)  # a stop marker: no answer
    assert env.page_responses == [(5, None, 2, PRI_RESP_FAILURE)]


def test_overflow_answers_last_requests_per_ppar() -> None:
    rig, env = make_rig({"ssidsize": 8}, priq_log2=1)
    rig.ste(5, Config=0b100, PPAR=1)
    rig.ste(6, Config=0b100, PPAR=0)
    for i in range(2):
        rig.dev.page_request(5, 1, PRI_READ, 0x1000 * i, i)
    assert rig.read(r.PRIQ_PROD) == 0b10  # full
    rig.dev.page_request(5, 1, PRI_READ | PRI_LAST, 0, 9)   # overflows: answered
    rig.dev.page_request(5, 1, PRI_READ, 0, 10)            # Last = 0: silently dropped
    rig.dev.page_request(6, 2, PRI_READ | PRI_LAST, 0, 11)  # PPAR = 0: no PASID
    rig.dev.page_request(7, 3, PRI_READ | PRI_LAST, 0, 12)  # STE invalid: Failure
    rig.dev.page_request(7, None, PRI_READ | PRI_LAST, 0, 13)  # no PASID: Success
    assert r.PRIQ_PROD.OVFLG.get(rig.read(r.PRIQ_PROD)) == 1
    assert env.page_responses == [(5, 1, 9, PRI_RESP_SUCCESS), (6, None, 11, PRI_RESP_SUCCESS),
                                  (7, None, 12, PRI_RESP_FAILURE),
                                  (7, None, 13, PRI_RESP_SUCCESS)]
    # An active overflow inhibits new entries even once there is space (§8.1)...
    rig.write(r.PRIQ_CONS, rig.read(r.PRIQ_PROD) & 0b11)
    rig.dev.page_request(5, 1, PRI_READ, 0, 14)
    assert rig.page_requests() == []
    # ...until software acknowledges it.
    rig.write(r.PRIQ_CONS, rig.read(r.PRIQ_CONS) | r.PRIQ_CONS.OVACKFLG.mask)
    rig.dev.page_request(5, 1, PRI_READ, 0, 15)
    assert [e["PRGIndex"] for e in rig.page_requests()] == [15]


def test_unwritable_priq_is_priq_abt_err_and_failure() -> None:
    rig, env = make_rig()
    rig.cr0(0)
    rig.write(r.PRIQ_BASE, 0x80_0000_0000 | 2)
    rig.cr0(r.CR0.CMDQEN.mask | r.CR0.PRIQEN.mask | r.CR0.SMMUEN.mask)
    rig.dev.page_request(5, None, PRI_READ | PRI_LAST, 0, 1)
    assert r.GERROR.PRIQ_ABT_ERR.get(rig.read(r.GERROR)) == 1
    rig.dev.page_request(5, None, PRI_READ, 0, 2)  # while active: answered at once
    assert env.page_responses == [(5, None, 1, PRI_RESP_FAILURE), (5, None, 2,
                                                                    PRI_RESP_FAILURE)]


def test_requests_no_device_can_make_are_errors() -> None:
    rig, _ = make_rig({"ssidsize": 8, "sids": (0, 15)})
    assert rig.dev.page_request(16, None, PRI_READ, 0, 1) == -errno.ENODEV
    assert rig.dev.page_request(1, None, PRI_READ, 0, 512) == -errno.EINVAL
    assert rig.dev.page_request(1, 1 << 20, PRI_READ, 0, 1) == -errno.EINVAL


def test_without_substreams_the_pasid_is_dropped() -> None:
    rig, _ = make_rig()
    rig.dev.page_request(1, 9, PRI_READ | PRI_EXECUTE, 0x5000, 4)
    (e,) = rig.page_requests()
    assert (e["SSV"], e["SubstreamID"], e["X"]) == (0, 0, 0)
