"""The vSMMUv3 command queue (IHI 0070 chapter 4, §7.1): consumption, every command,
CERROR_ILL/CERROR_ABT with CONS left on the bad command, resume on GERRORN, CMD_SYNC
signalling (SIG_NONE, SIG_IRQ wired and MSI, Linux's MSIPOLL, SIG_SEV), bounded work."""

from __future__ import annotations

import pytest

from devices.smmuv3 import commands as c
from devices.smmuv3 import regs as r
from devices.smmuv3.commands import Op
from devices.smmuv3.testing import make_rig

ILL = r.CMDQ_CONS_ERR_CERROR_ILL
ABT = r.CMDQ_CONS_ERR_CERROR_ABT


def cons_rd(rig: object) -> int:
    from devices.smmuv3.testing import SmmuRig
    assert isinstance(rig, SmmuRig)
    return r.CMDQ_CONS.RD.get(rig.read(r.CMDQ_CONS))


def test_every_accepted_command_is_consumed() -> None:
    rig, env = make_rig({"ssidsize": 8})
    accepted = {
        Op.PREFETCH_CONFIG: {"StreamID": 1}, Op.PREFETCH_ADDR: {"StreamID": 1, "Address": 5},
        Op.CFGI_STE: {"StreamID": 1, "Leaf": 1}, Op.CFGI_STE_RANGE: {"Range": 4},
        Op.CFGI_CD: {"StreamID": 1, "SubstreamID": 3}, Op.CFGI_CD_ALL: {"StreamID": 1},
        Op.TLBI_NH_ALL: {"VMID": 1}, Op.TLBI_NH_ASID: {"ASID": 2, "VMID": 1},
        Op.TLBI_NH_VA: {"ASID": 2, "Address": 0x123, "Leaf": 1},
        Op.TLBI_NH_VAA: {"Address": 0x123, "TG": 1, "NUM": 3, "TTL": 3},
        Op.TLBI_S12_VMALL: {"VMID": 4}, Op.TLBI_S2_IPA: {"VMID": 4, "Address": 0x40000},
        Op.TLBI_NSNH_ALL: {}, Op.ATC_INV: {"StreamID": 7, "Size": 1, "Address": 0x10},
        Op.PRI_RESP: {"StreamID": 7, "PRGIndex": 3, "Resp": 2}, Op.SYNC: {},
    }
    for op, fields in accepted.items():
        assert rig.command(op, **fields) == 0, op.name
        assert not rig.cmdq_error, op.name
    assert rig.dev.cmdq.executed == len(accepted) + 3  # + setup's CFGI_ALL, NSNH_ALL, SYNC
    assert env.atc_invalidations == [(7, 0xFFFF_FFFF, 0x10 << 12 & ~0x1FFF, 8192)]
    assert env.page_responses == [(7, None, 3, 2)]


@pytest.mark.parametrize("opcode", [0x00, 0x07, 0x08, 0x14, 0x18, 0x1A, 0x20, 0x21, 0x22,
                                    0x23, 0x44, 0x45, 0x50, 0x58, 0x60, 0x70, 0x73, 0x80,
                                    0x8F, 0x90, 0xFF])
def test_reserved_and_unimplemented_opcodes_are_cerror_ill(opcode: int) -> None:
    rig, env = make_rig()
    before = cons_rd(rig)
    rig.submit(opcode.to_bytes(8, "little") + bytes(8))
    assert r.CMDQ_CONS.ERR.get(rig.read(r.CMDQ_CONS)) == ILL
    assert cons_rd(rig) == before  # CONS stays on the bad command
    assert rig.cmdq_error
    assert env.irqs == []  # GERROR_IRQEN is off


@pytest.mark.parametrize(("op", "fields"), [
    (Op.CFGI_STE, {"SSec": 1}),
    (Op.SYNC, {"CS": 3}),
    (Op.PRI_RESP, {"Resp": 3}),
    (Op.ATC_INV, {"Size": 53}),
    (Op.TLBI_NH_VA, {"TG": 1}),                       # TG without range or TTL: reserved
    (Op.TLBI_NH_VA, {"TG": 2, "TTL": 1, "NUM": 1}),   # 16 KB level 1 needs IDR5.DS
    (Op.TLBI_NH_VAA, {"TTL": 2}),                     # TTL with TG = 0 is RES0
    (Op.TLBI_S2_IPA, {"NUM": 2}),                     # NUM with TG = 0 is RES0
])
def test_illegal_field_values_are_cerror_ill(op: Op, fields: dict[str, int]) -> None:
    rig, _ = make_rig()
    assert rig.command(op, **fields) == ILL


@pytest.mark.parametrize(("op", "dw", "bit"), [
    (Op.CFGI_STE, 0, 12), (Op.CFGI_STE, 1, 1), (Op.SYNC, 0, 8), (Op.SYNC, 1, 0),
    (Op.TLBI_NH_ALL, 0, 48), (Op.TLBI_NSNH_ALL, 1, 63), (Op.TLBI_NH_VA, 0, 25),
    (Op.PREFETCH_CONFIG, 1, 0), (Op.ATC_INV, 0, 10),
])
def test_res0_bits_are_cerror_ill(op: Op, dw: int, bit: int) -> None:
    rig, _ = make_rig()
    raw = bytearray(c.build(op))
    raw[8 * dw + bit // 8] |= 1 << (bit % 8)
    rig.submit(bytes(raw))
    assert r.CMDQ_CONS.ERR.get(rig.read(r.CMDQ_CONS)) == ILL


@pytest.mark.parametrize(("stage", "op"), [
    ("s2", Op.TLBI_NH_ALL), ("s2", Op.TLBI_NH_ASID), ("s2", Op.TLBI_NH_VA),
    ("s2", Op.TLBI_NH_VAA), ("s2", Op.CFGI_CD), ("s2", Op.CFGI_CD_ALL),
    ("s1", Op.TLBI_S2_IPA), ("s1", Op.TLBI_S12_VMALL),
])
def test_commands_of_a_missing_stage_are_cerror_ill(stage: str, op: Op) -> None:
    rig, _ = make_rig({"stage": stage})
    assert rig.command(op) == ILL


def test_error_stops_consumption_and_gerrorn_resumes_it() -> None:
    rig, env = make_rig(irqs=r.IRQ_CTRL.GERROR_IRQEN.mask)
    start = cons_rd(rig)
    rig.submit(c.build(Op.TLBI_NSNH_ALL))
    rig.submit(bytes(16))                     # opcode 0: CERROR_ILL
    rig.submit(c.build(Op.SYNC, CS=c.CS_SIG_IRQ))
    assert cons_rd(rig) == start + 1
    assert env.irqs == [r.IRQ_GERROR]
    assert r.GERROR.CMDQ_ERR.get(rig.read(r.GERROR)) == 1
    # Linux: replace the bad command by a CMD_SYNC, then acknowledge.
    rig.mem.write(rig.cmdq + 16 * (start + 1), c.build(Op.SYNC))
    rig.ack_gerror()
    assert cons_rd(rig) == start + 3
    assert not rig.cmdq_error
    assert env.irqs == [r.IRQ_GERROR, r.IRQ_CMD_SYNC]
    # The error code stays until the next error (software reads it only after GERROR).
    assert r.CMDQ_CONS.ERR.get(rig.read(r.CMDQ_CONS)) == ILL


def test_second_error_while_active_does_not_toggle_gerror_again() -> None:
    rig, _ = make_rig()
    rig.submit(bytes(16))
    gerror = rig.read(r.GERROR)
    rig.submit(bytes(16))  # not consumed: the error is still active
    assert rig.read(r.GERROR) == gerror


def test_unreadable_queue_is_cerror_abt_and_retried_after_ack() -> None:
    rig, _ = make_rig()
    rig.cr0(0)
    rig.write(r.CMDQ_BASE, 0x10_0000_0000 | 4)  # not guest RAM
    rig.write(r.CMDQ_CONS, 0)
    rig.write(r.CMDQ_PROD, 1)
    rig.cr0(r.CR0.CMDQEN.mask)
    assert r.CMDQ_CONS.ERR.get(rig.read(r.CMDQ_CONS)) == ABT
    assert cons_rd(rig) == 0 and rig.cmdq_error
    # Move the queue back into RAM (while disabled) and retry by acknowledging.
    rig.cr0(0)
    rig.write(r.CMDQ_BASE, rig.cmdq | rig.cmdq_log2)
    rig.mem.write(rig.cmdq, c.build(Op.SYNC))
    rig.cr0(r.CR0.CMDQEN.mask)
    rig.ack_gerror()
    assert cons_rd(rig) == 1 and not rig.cmdq_error


def test_disabled_queue_is_not_consumed_until_enabled() -> None:
    rig, _ = make_rig()
    rig.cr0(r.CR0.SMMUEN.mask)
    start = cons_rd(rig)
    rig.submit(c.build(Op.SYNC))
    assert cons_rd(rig) == start
    rig.cr0(r.CR0.SMMUEN.mask | r.CR0.CMDQEN.mask)
    assert cons_rd(rig) == start + 1


def test_cmdq_cons_is_read_only_while_the_queue_runs() -> None:
    rig, _ = make_rig()
    before = rig.read(r.CMDQ_CONS)
    rig.write(r.CMDQ_CONS, 0x1F)
    assert rig.read(r.CMDQ_CONS) == before


def test_queue_wraps() -> None:
    rig, _ = make_rig(cmdq_log2=2)
    for _ in range(11):
        assert rig.sync() == 0
    cons = rig.read(r.CMDQ_CONS)
    # 3 setup commands + 11 syncs = 14 = 0b1110: index 2, wrap 1 (bit 2 is the wrap bit).
    assert cons == 14 & 0b111
    assert rig.read(r.CMDQ_PROD) == cons


def test_one_prod_write_consumes_a_full_queue() -> None:
    rig, _ = make_rig(cmdq_log2=3)
    prod = rig.read(r.CMDQ_PROD)
    for i in range(8):
        rig.mem.write(rig.cmdq + 16 * ((prod + i) % 8), c.build(Op.SYNC))
    rig.write(r.CMDQ_PROD, (prod + 8) & 0xF)  # full: index equal, wrap different
    assert rig.read(r.CMDQ_CONS) == rig.read(r.CMDQ_PROD)


def test_inconsistent_pointers_are_bounded_work() -> None:
    """A PROD more than a queue ahead of CONS describes at most 2^(LOG2SIZE+1) - 1 entries;
    the consumer executes that many and stops, it never loops."""
    rig, _ = make_rig(cmdq_log2=3)
    for i in range(8):
        rig.mem.write(rig.cmdq + 16 * i, c.build(Op.SYNC))
    rig.cr0(0)
    rig.write(r.CMDQ_CONS, 0)
    rig.write(r.CMDQ_PROD, 0)
    rig.cr0(r.CR0.CMDQEN.mask)
    executed = rig.dev.cmdq.executed
    rig.write(r.CMDQ_PROD, 0b1111)
    assert rig.dev.cmdq.executed - executed == 15
    assert rig.read(r.CMDQ_CONS) == 0b1111


def test_giant_log2size_is_capped_to_idr1() -> None:
    rig, _ = make_rig()
    rig.cr0(0)
    rig.write(r.CMDQ_BASE, rig.cmdq | 31)
    assert r.CMDQ_BASE.LOG2SIZE.get(rig.read(r.CMDQ_BASE)) == 19


# -- CMD_SYNC ------------------------------------------------------------------------------

def test_sync_sig_none_and_sev_signal_nothing() -> None:
    rig, env = make_rig()
    rig.sync(CS=c.CS_SIG_NONE)
    rig.sync(CS=c.CS_SIG_SEV)  # IDR0.SEV = 0: no event to send
    assert env.irqs == [] and env.msis == []


def test_sync_sig_irq_wired() -> None:
    rig, env = make_rig()
    rig.sync(CS=c.CS_SIG_IRQ)
    assert env.irqs == [r.IRQ_CMD_SYNC] and env.msis == []


def test_sync_sig_irq_msi_and_the_wired_line() -> None:
    """§4.7.3: the MSI when MSIAddress != 0, and the wired output regardless."""
    rig, env = make_rig()
    rig.sync(CS=c.CS_SIG_IRQ, MSIAddress=0x0800_0040 >> 2, MSIData=0xABCD, MSH=3, MSIAttr=0xF)
    assert env.msis == [(r.IRQ_CMD_SYNC, 0x0800_0040, 0xABCD)]
    assert env.irqs == [r.IRQ_CMD_SYNC]


def test_linux_msipoll_writes_into_the_sync_entry_before_cons_passes_it() -> None:
    rig, env = make_rig()
    prod = r.CMDQ_PROD.WR.get(rig.read(r.CMDQ_PROD))
    entry = rig.cmdq + 16 * (prod % (1 << rig.cmdq_log2))
    seen: list[int] = []

    def msi(vector: int, address: int, data: int) -> bool:
        seen.append(r.CMDQ_CONS.RD.get(rig.read(r.CMDQ_CONS)))
        return rig.mem.write_u32(address, data)  # the daemon's Env writes RAM MSIs into RAM
    env.msi = msi  # type: ignore[method-assign]
    rig.sync(CS=c.CS_SIG_IRQ, MSIAddress=entry >> 2, MSIData=0, MSH=3, MSIAttr=0xF)
    assert rig.mem.read_u32(entry) == 0
    assert seen == [prod]  # CONS still pointed at the CMD_SYNC when the MSI was written


# -- CFGI ranges -------------------------------------------------------------------------

@pytest.mark.parametrize(("sid", "rng", "dropped"), [
    (5, 0, {4, 5}), (5, 1, {4, 5, 6, 7}), (9, 2, {8, 9, 10, 11, 12, 13, 14, 15}),
    (0x77, c.CFGI_ALL_RANGE, set(range(16))),
])
def test_cfgi_ste_range_covers_an_aligned_block(sid: int, rng: int, dropped: set[int]) -> None:
    rig, _ = make_rig()
    for s in range(16):
        rig.ste(s, Config=0b100)
        rig.dma(s, 0x1000)
    assert set(rig.dev.cache.streams) == set(range(16))
    rig.command(Op.CFGI_STE_RANGE, StreamID=sid, Range=rng)
    assert set(rig.dev.cache.streams) == set(range(16)) - dropped


def test_cfgi_of_an_out_of_range_streamid_has_no_effect() -> None:
    rig, _ = make_rig({"sids": (0, 255)})
    rig.ste(3, Config=0b100)
    rig.dma(3, 0)
    assert rig.command(Op.CFGI_STE, StreamID=3 | 0x100) == 0
    assert 3 in rig.dev.cache.streams
