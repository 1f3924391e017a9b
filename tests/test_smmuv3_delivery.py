"""What the vSMMUv3 does when the world does not take what it sends (IHI 0070 §4.7.3, §7.1,
§7.5): an ATC invalidation no device will complete fails the next CMD_SYNC with
CERROR_ATC_INV_SYNC; an aborted MSI activates the matching GERROR.MSI_*_ABT_ERR."""

from __future__ import annotations

from devices.model import DmaFault
from devices.smmuv3 import commands as c
from devices.smmuv3 import regs as r
from devices.smmuv3.commands import Op
from devices.smmuv3.events import EventType
from devices.smmuv3.testing import SmmuRig, make_rig

ATC_SYNC = r.CMDQ_CONS_ERR_CERROR_ATC_INV_SYNC
GERROR_IRQ = r.IRQ_CTRL.GERROR_IRQEN.mask
EVTQ_IRQ = r.IRQ_CTRL.EVENTQ_IRQEN.mask


def cons_rd(rig: SmmuRig) -> int:
    return r.CMDQ_CONS.RD.get(rig.read(r.CMDQ_CONS))


def active(rig: SmmuRig) -> int:
    return rig.read(r.GERROR) ^ rig.read(r.GERRORN)


def test_undelivered_atc_inv_fails_the_next_sync_which_linux_reruns_in_place() -> None:
    rig, env = make_rig(irqs=GERROR_IRQ)
    env.atc_ok = False
    start = cons_rd(rig)
    assert rig.command(Op.ATC_INV, StreamID=7, Size=0, Address=0x10) == 0
    assert cons_rd(rig) == start + 1  # the ATC_INV itself is consumed
    assert rig.sync(CS=c.CS_SIG_IRQ, MSIAddress=0x0800_0040 >> 2, MSIData=1) == ATC_SYNC
    assert cons_rd(rig) == start + 1  # CONS stays on the CMD_SYNC
    assert active(rig) == r.GERROR.CMDQ_ERR.mask
    assert env.irqs == [r.IRQ_GERROR] and env.msis == []  # no completion signal
    # Linux (arm_smmu_cmdq_skip_err): leave the CMD_SYNC, acknowledge; it runs again.
    rig.ack_gerror()
    assert cons_rd(rig) == start + 2 and not active(rig)
    assert env.msis == [(r.IRQ_CMD_SYNC, 0x0800_0040, 1)]
    assert env.irqs == [r.IRQ_GERROR, r.IRQ_CMD_SYNC]
    assert r.CMDQ_CONS.ERR.get(rig.read(r.CMDQ_CONS)) == ATC_SYNC


def test_delivered_atc_inv_and_ignored_atc_inv_sync_normally() -> None:
    rig, env = make_rig()
    assert rig.command(Op.ATC_INV, StreamID=7, Size=0, Address=0x10) == 0
    assert rig.sync() == 0 and not active(rig)
    env.atc_ok = False
    rig.cr0(r.CR0.CMDQEN.mask)  # SMMUEN = 0: ATC_INV is IGNORED, nothing is sent
    count = len(env.atc_invalidations)
    rig.command(Op.ATC_INV, StreamID=7, Size=0, Address=0x10)
    assert rig.sync() == 0 and not active(rig)
    assert len(env.atc_invalidations) == count


def test_one_failed_sync_per_batch_of_lost_invalidations() -> None:
    rig, env = make_rig()
    env.atc_ok = False
    for sid in (1, 2, 3):
        rig.command(Op.ATC_INV, StreamID=sid, Size=52)
    assert rig.sync() == ATC_SYNC
    env.atc_ok = True
    rig.ack_gerror()
    assert not active(rig)
    assert rig.sync() == ATC_SYNC  # the code stays until the next error; no new error
    assert not active(rig)


def test_reset_forgets_lost_invalidations() -> None:
    rig, env = make_rig()
    env.atc_ok = False
    rig.command(Op.ATC_INV, StreamID=1, Size=52)
    rig.dev.reset()
    assert not rig.dev.cmdq.atc_inv_timed_out


def test_aborted_cmd_sync_msi_is_msi_cmdq_abt_err_and_the_sync_completes() -> None:
    rig, env = make_rig(irqs=GERROR_IRQ)
    env.msi_ok = False
    start = cons_rd(rig)
    assert rig.sync(CS=c.CS_SIG_IRQ, MSIAddress=0x0800_0040 >> 2, MSIData=1) == 0
    assert cons_rd(rig) == start + 1
    assert active(rig) == r.GERROR.MSI_CMDQ_ABT_ERR.mask
    assert env.irqs == [r.IRQ_GERROR, r.IRQ_CMD_SYNC]


def test_aborted_evtq_msi_is_msi_eventq_abt_err() -> None:
    rig, env = make_rig(irqs=EVTQ_IRQ | GERROR_IRQ)
    rig.write(r.EVENTQ_IRQ_CFG0, 0x0800_0000)
    env.msi_ok = False
    got = rig.dma(3, 0x1000)
    assert isinstance(got, DmaFault) and got.code == EventType.C_BAD_STE
    assert active(rig) == r.GERROR.MSI_EVENTQ_ABT_ERR.mask
    assert env.irqs == [r.IRQ_GERROR]
    assert [e.type for e in rig.events()] == [EventType.C_BAD_STE]  # the record is there


def test_aborted_gerror_msi_sets_msi_gerror_abt_err_without_another_interrupt() -> None:
    rig, env = make_rig(irqs=GERROR_IRQ)
    rig.write(r.GERROR_IRQ_CFG0, 0x0800_1000)
    env.msi_ok = False
    rig.submit(bytes(16))  # CERROR_ILL
    assert active(rig) == r.GERROR.CMDQ_ERR.mask | r.GERROR.MSI_GERROR_ABT_ERR.mask
    assert env.msis == [(r.IRQ_GERROR, 0x0800_1000, 0)]  # §7.5.1: no second GERROR MSI
    assert env.irqs == []


def test_aborted_evtq_and_gerror_msis_chain_once() -> None:
    rig, env = make_rig(irqs=EVTQ_IRQ | GERROR_IRQ)
    rig.write(r.EVENTQ_IRQ_CFG0, 0x0800_0000)
    rig.write(r.GERROR_IRQ_CFG0, 0x0800_1000)
    env.msi_ok = False
    rig.dma(3, 0x1000)
    rig.dma(3, 0x2000)  # MSI_EVENTQ_ABT_ERR already active: not toggled again
    assert active(rig) == (r.GERROR.MSI_EVENTQ_ABT_ERR.mask
                           | r.GERROR.MSI_GERROR_ABT_ERR.mask)
    assert [v for v, _, _ in env.msis] == [r.IRQ_EVTQ, r.IRQ_GERROR, r.IRQ_EVTQ]
