"""The event queue (IHI 0070 §7.2, §7.4) and the SMMU's interrupts (§3.18): records at PROD,
nothing while EVENTQEN = 0, overflow through EVENTQ_PROD.OVFLG (not QEMU's GERROR),
EVENTQ_ABT_ERR on an unwritable queue, wired lines and MSIs for EVTQ and GERROR."""

from __future__ import annotations

from devices.model import DmaFault
from devices.smmuv3 import regs as r
from devices.smmuv3.events import EventType
from devices.smmuv3.testing import SmmuRig, make_rig

EVTQ_IRQ = r.IRQ_CTRL.EVENTQ_IRQEN.mask
GERROR_IRQ = r.IRQ_CTRL.GERROR_IRQEN.mask


def bad_ste(rig: SmmuRig, n: int, sid: int = 3) -> None:
    for i in range(n):
        got = rig.dma(sid, 0x1000 * i)
        assert isinstance(got, DmaFault) and got.code == EventType.C_BAD_STE


def test_records_are_written_at_prod_with_the_irq() -> None:
    rig, env = make_rig(irqs=EVTQ_IRQ)
    bad_ste(rig, 3)
    assert r.EVENTQ_PROD.WR.get(rig.read(r.EVENTQ_PROD)) == 3
    assert env.irqs == [r.IRQ_EVTQ] * 3
    assert [e.type for e in rig.events()] == [EventType.C_BAD_STE] * 3


def test_no_irq_without_eventq_irqen() -> None:
    rig, env = make_rig()
    bad_ste(rig, 1)
    assert env.irqs == [] and len(rig.events()) == 1


def test_evtq_msi() -> None:
    rig, env = make_rig(irqs=EVTQ_IRQ)
    rig.write(r.EVENTQ_IRQ_CFG0, 0x0800_0000)
    rig.write(r.EVENTQ_IRQ_CFG1, 0x55)
    bad_ste(rig, 1)
    assert env.msis == [(r.IRQ_EVTQ, 0x0800_0000, 0x55)] and env.irqs == []


def test_disabled_queue_drops_events_silently() -> None:
    rig, _ = make_rig()
    rig.cr0(r.CR0.CMDQEN.mask | r.CR0.SMMUEN.mask)
    bad_ste(rig, 2)
    assert rig.read(r.EVENTQ_PROD) == 0
    assert rig.read(r.GERROR) == 0


def test_overflow_toggles_ovflg_not_qemu_gerror() -> None:
    """smmuv3.md §8 item 5: QEMU raises GERROR.EVENTQ_ABT_ERR on a full queue; the spec
    (§7.4) discards the record and toggles EVENTQ_PROD.OVFLG once per overflow."""
    rig, env = make_rig(evtq_log2=2, irqs=GERROR_IRQ)
    bad_ste(rig, 4)
    prod = rig.read(r.EVENTQ_PROD)
    assert r.EVENTQ_PROD.OVFLG.get(prod) == 0 and prod == 0b100  # full
    bad_ste(rig, 3)
    prod = rig.read(r.EVENTQ_PROD)
    assert r.EVENTQ_PROD.OVFLG.get(prod) == 1 and prod & 0b111 == 0b100
    assert rig.read(r.GERROR) == 0 and env.irqs == []
    # Consuming and acknowledging (OVACKFLG := OVFLG) lets a new overflow show.
    assert len(rig.events()) == 4
    assert r.EVENTQ_CONS.OVACKFLG.get(rig.read(r.EVENTQ_CONS)) == 1
    bad_ste(rig, 5)
    assert r.EVENTQ_PROD.OVFLG.get(rig.read(r.EVENTQ_PROD)) == 0


def test_unacknowledged_overflow_still_delivers_when_space_frees() -> None:
    rig, _ = make_rig(evtq_log2=1)
    bad_ste(rig, 3)
    prod = rig.read(r.EVENTQ_PROD)
    rig.write(r.EVENTQ_CONS, prod & 0b11)  # consume without acknowledging
    bad_ste(rig, 1)
    assert rig.read(r.EVENTQ_PROD) & 0b11 != prod & 0b11


def test_unwritable_queue_is_eventq_abt_err_and_prod_stays() -> None:
    rig, env = make_rig(irqs=GERROR_IRQ)
    rig.cr0(0)
    rig.write(r.EVENTQ_BASE, 0x80_0000_0000 | 4)
    rig.cr0(r.CR0.CMDQEN.mask | r.CR0.EVENTQEN.mask | r.CR0.SMMUEN.mask)
    bad_ste(rig, 2)
    assert r.GERROR.EVENTQ_ABT_ERR.get(rig.read(r.GERROR)) == 1
    assert rig.read(r.EVENTQ_PROD) == 0
    assert env.irqs == [r.IRQ_GERROR]  # once: the queue is not writable while it is active


def test_gerror_msi() -> None:
    rig, env = make_rig(irqs=GERROR_IRQ)
    rig.write(r.GERROR_IRQ_CFG0, 0x0800_1000)
    rig.write(r.GERROR_IRQ_CFG1, 7)
    rig.submit(bytes(16))
    assert env.msis == [(r.IRQ_GERROR, 0x0800_1000, 7)]


def test_eventq_prod_is_read_only_while_the_queue_runs() -> None:
    rig, _ = make_rig()
    rig.write(r.EVENTQ_PROD, 5)
    assert rig.read(r.EVENTQ_PROD) == 0


def test_reset_empties_everything() -> None:
    rig, _ = make_rig()
    rig.ste(1, Config=0b100)
    rig.dma(1, 0)
    bad_ste(rig, 1)
    rig.dev.reset()
    assert rig.read(r.CR0) == 0 and rig.read(r.EVENTQ_PROD) == 0
    assert len(rig.dev.cache) == 0 and len(rig.dev.pool) == 0
