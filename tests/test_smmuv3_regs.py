"""The vSMMUv3 register interface (IHI 0070 §6.2-§6.3): declarations, reset values, handshakes."""

from __future__ import annotations

from typing import Any

import pytest

from devices.model import DmaFault, DmaRequest, DmaTarget, Env, FaultKind, Perm
from devices.regs import Register, check_layout
from devices.smmuv3 import regs as r
from devices.smmuv3.device import SMMUv3, parse_sid_range
from devices.testing import RecordingEnv

STAGES = ("s1", "s2", "nested")


def make(**config: Any) -> tuple[SMMUv3, RecordingEnv]:
    env = RecordingEnv()
    _env: Env = env  # RecordingEnv satisfies the Env protocol
    return SMMUv3(config, _env), env


def rd(dev: SMMUv3, reg: Register, size: int | None = None) -> int:
    return dev.mmio_read(reg.offset, size or reg.size)


def wr(dev: SMMUv3, reg: Register, value: int, size: int | None = None) -> None:
    dev.mmio_write(reg.offset, size or reg.size, value)


def dma(iova: int, sid: int = 0) -> DmaRequest:
    return DmaRequest(requester=sid, pasid=None, iova=iova, write=False, privileged=False,
                      execute=False)


# --- the declarations themselves -----------------------------------------------------------

def test_declarations_have_no_problems() -> None:
    assert check_layout(r.REGISTERS, r.FRAME_SIZE) == []


@pytest.mark.parametrize("reg", r.REGISTERS, ids=lambda reg: reg.name)
def test_declaration_masks(reg: Register) -> None:
    named = 0
    for f in reg.fields:
        assert 0 <= f.lsb <= f.msb < reg.width
        named |= f.mask
    # Every bit is either a named field or reserved, never both.
    assert named | reg.rsvd == reg.full_mask
    assert named & reg.rsvd == 0
    assert reg.reset & reg.rsvd == 0
    assert reg.reset & ~reg.full_mask == 0


def test_spec_offsets() -> None:
    expected = {
        "IDR0": 0x0, "IDR5": 0x14, "IIDR": 0x18, "AIDR": 0x1C, "CR0": 0x20, "CR0ACK": 0x24,
        "CR1": 0x28, "CR2": 0x2C, "STATUSR": 0x40, "GBPA": 0x44, "IRQ_CTRL": 0x50,
        "IRQ_CTRLACK": 0x54, "GERROR": 0x60, "GERRORN": 0x64, "GERROR_IRQ_CFG0": 0x68,
        "GERROR_IRQ_CFG1": 0x70, "GERROR_IRQ_CFG2": 0x74, "STRTAB_BASE": 0x80,
        "STRTAB_BASE_CFG": 0x88, "CMDQ_BASE": 0x90, "CMDQ_PROD": 0x98, "CMDQ_CONS": 0x9C,
        "EVENTQ_BASE": 0xA0, "EVENTQ_PROD": 0x100A8, "EVENTQ_CONS": 0x100AC,
        "EVENTQ_IRQ_CFG0": 0xB0, "EVENTQ_IRQ_CFG1": 0xB8, "EVENTQ_IRQ_CFG2": 0xBC,
        "PRIQ_BASE": 0xC0, "PRIQ_PROD": 0x100C8, "PRIQ_CONS": 0x100CC, "PRIQ_IRQ_CFG0": 0xD0,
        "PRIQ_IRQ_CFG1": 0xD8, "PRIQ_IRQ_CFG2": 0xDC, "PIDR4": 0xFD0, "PIDR0": 0xFE0,
        "CIDR0": 0xFF0, "CIDR3": 0xFFC,
    }
    by_name = {reg.name: reg for reg in r.REGISTERS}
    for name, offset in expected.items():
        assert by_name[name].offset == offset, name


# --- ID registers --------------------------------------------------------------------------

# Defaults: sids 0-0xffff, oas 44, ssidsize 0.  Versus QEMU: + ATS, NS1ATS, MSI, PRI, CD2L.
IDR0_BY_STAGE = {"s1": 0x0D4D3C1A, "s2": 0x0D453C19, "nested": 0x0D4D3C1B}
FIXED_ID_VALUES = {
    "IDR1": 0x02739810,  # SIDSIZE 16, PRIQS = EVENTQS = CMDQS = 19
    "IDR2": 0, "IDR3": 0x1404, "IDR4": 0, "IDR5": 0x74, "IIDR": 0, "AIDR": 0x2,
    "PIDR4": 0x04, "PIDR5": 0, "PIDR6": 0, "PIDR7": 0,
    "PIDR0": 0x84, "PIDR1": 0xB4, "PIDR2": 0xF0, "PIDR3": 0x10,
    "CIDR0": 0x0D, "CIDR1": 0xF0, "CIDR2": 0x05, "CIDR3": 0xB1,
}


@pytest.mark.parametrize("stage", STAGES)
def test_id_register_reset_values(stage: str) -> None:
    dev, _ = make(stage=stage)
    assert rd(dev, r.IDR0) == IDR0_BY_STAGE[stage]
    for reg in r.ID_REGISTERS[1:]:
        assert rd(dev, reg) == FIXED_ID_VALUES[reg.name], reg.name


@pytest.mark.parametrize("stage", STAGES)
def test_id_registers_are_read_only(stage: str) -> None:
    dev, _ = make(stage=stage)
    for reg in r.ID_REGISTERS:
        before = rd(dev, reg)
        wr(dev, reg, 0xFFFF_FFFF)
        wr(dev, reg, 0)
        assert rd(dev, reg) == before, reg.name


@pytest.mark.parametrize(("stage", "s1p", "s2p"), [("s1", 1, 0), ("s2", 0, 1), ("nested", 1, 1)])
def test_idr0_stages(stage: str, s1p: int, s2p: int) -> None:
    dev, _ = make(stage=stage)
    idr0 = rd(dev, r.IDR0)
    assert (r.IDR0.S1P.get(idr0), r.IDR0.S2P.get(idr0)) == (s1p, s2p)
    assert r.IDR0.CD2L.get(idr0) == s1p  # no stage 1, no context descriptors
    assert r.IDR0.ST_LEVEL.get(idr0) == r.IDR0_ST_LEVEL_2LVL
    assert r.IDR0.TTF.get(idr0) == r.IDR0_TTF_AARCH64
    assert r.IDR0.TTENDIAN.get(idr0) == r.IDR0_TTENDIAN_LE
    assert r.IDR0.STALL_MODEL.get(idr0) == r.IDR0_STALL_MODEL_TERMINATE
    assert r.IDR0.MSI.get(idr0) == r.IDR0.PRI.get(idr0) == r.IDR0.ATS.get(idr0) == 1


@pytest.mark.parametrize("oas", [32, 36, 40, 42, 44, 48, 52])
def test_idr5_oas(oas: int) -> None:
    dev, _ = make(oas=oas)
    idr5 = rd(dev, r.IDR5)
    assert r.IDR5.OAS.get(idr5) == r.IDR5_OAS_BITS[oas]
    assert r.IDR5.GRAN4K.get(idr5) == r.IDR5.GRAN16K.get(idr5) == r.IDR5.GRAN64K.get(idr5) == 1


@pytest.mark.parametrize(
    ("sids", "sidsize"),
    [((0, 0), 0), ((0, 1), 1), ((0, 0xFF), 8), ((0x100, 0x1FF), 9), ((0, 0xFFFF), 16),
     ((0, 0xFFFF_FFFF), 32)],
)
def test_idr1_sidsize(sids: tuple[int, int], sidsize: int) -> None:
    dev, _ = make(sids=sids)
    assert r.IDR1.SIDSIZE.get(rd(dev, r.IDR1)) == sidsize
    assert dev.requester_ranges == [sids]


def test_requesters_key_is_accepted() -> None:
    dev, _ = make(requesters=(0x10, 0x1F))
    assert dev.requester_ranges == [(0x10, 0x1F)]
    assert r.IDR1.SIDSIZE.get(rd(dev, r.IDR1)) == 5


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("ssidsize", [0, 1, 8, 20])
def test_idr1_ssidsize(stage: str, ssidsize: int) -> None:
    dev, _ = make(stage=stage, ssidsize=ssidsize)
    expected = 0 if stage == "s2" else ssidsize
    assert r.IDR1.SSIDSIZE.get(rd(dev, r.IDR1)) == expected


@pytest.mark.parametrize(
    "config",
    [{"stage": "s3"}, {"oas": 46}, {"ssidsize": 21}, {"s1-mode": "eager"},
     {"sids": (5, 4)}, {"sids": (0, 1 << 32)}],
)
def test_bad_options_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**config)


def test_options_and_class_constants() -> None:
    defaults = {o.name: o.default for o in SMMUv3.options}
    assert defaults == {"id": 0, "base": 0x09050000, "sids": (0, 0xFFFF), "stage": "nested",
                        "oas": 44, "ssidsize": 0, "s1-mode": "nested"}
    assert SMMUv3.model == "smmuv3"
    assert SMMUv3.irq_names == ("evtq", "priq", "cmdq-sync", "gerror")
    assert SMMUv3.mmio_size == 0x20000
    assert SMMUv3.default_base == 0x09050000


def test_parse_sid_range() -> None:
    assert parse_sid_range("0-0xffff") == (0, 0xFFFF)
    assert parse_sid_range("16-31") == (16, 31)
    assert parse_sid_range("7") == (7, 7)
    for bad in ("5-4", "x", "1-", "-1-2"):
        with pytest.raises(ValueError):
            parse_sid_range(bad)


# --- handshakes ----------------------------------------------------------------------------

def test_cr0_is_acknowledged_without_reserved_or_unimplemented_bits() -> None:
    dev, _ = make()
    wr(dev, r.CR0, 0xFFFF_FFFF)
    implemented = (r.CR0.SMMUEN.mask | r.CR0.PRIQEN.mask | r.CR0.EVENTQEN.mask
                   | r.CR0.CMDQEN.mask | r.CR0.ATSCHK.mask)  # VMW, DPT_WALK_EN not advertised
    assert rd(dev, r.CR0) == implemented
    assert rd(dev, r.CR0ACK) == implemented
    wr(dev, r.CR0, r.CR0.EVENTQEN.mask)
    assert rd(dev, r.CR0ACK) == r.CR0.EVENTQEN.mask
    wr(dev, r.CR0ACK, 0)  # read-only
    assert rd(dev, r.CR0ACK) == r.CR0.EVENTQEN.mask


def test_gbpa_changes_only_with_update() -> None:
    dev, _ = make()
    assert rd(dev, r.GBPA) == r.GBPA.SHCFG.prep(r.GBPA_SHCFG_INCOMING)
    wr(dev, r.GBPA, r.GBPA.ABORT.mask)  # no UPDATE: ignored
    assert rd(dev, r.GBPA) == 0x1000
    wr(dev, r.GBPA, r.GBPA.UPDATE.mask | r.GBPA.ABORT.mask | 0x7FE0_C0E0)  # + reserved bits
    assert rd(dev, r.GBPA) == r.GBPA.ABORT.mask  # UPDATE reads 0: the update is done
    wr(dev, r.GBPA, r.GBPA.UPDATE.mask | r.GBPA.SHCFG.prep(r.GBPA_SHCFG_ISH))
    assert rd(dev, r.GBPA) == r.GBPA.SHCFG.prep(r.GBPA_SHCFG_ISH)


def test_irq_ctrl_is_acknowledged() -> None:
    dev, _ = make()
    wr(dev, r.IRQ_CTRL, 0xFFFF_FFFF)
    assert rd(dev, r.IRQ_CTRL) == rd(dev, r.IRQ_CTRLACK) == 0x7
    wr(dev, r.IRQ_CTRL, r.IRQ_CTRL.EVENTQ_IRQEN.mask)
    assert rd(dev, r.IRQ_CTRLACK) == r.IRQ_CTRL.EVENTQ_IRQEN.mask


def test_gerror_toggles_and_gerrorn_acknowledges() -> None:
    dev, env = make()
    cmdq_err = r.GERROR.CMDQ_ERR
    dev.raise_gerror(cmdq_err)
    assert rd(dev, r.GERROR) == cmdq_err.mask
    assert dev.gerror_active == cmdq_err.mask
    dev.raise_gerror(cmdq_err)  # already active: no second toggle
    assert rd(dev, r.GERROR) == cmdq_err.mask
    wr(dev, r.GERROR, 0)  # read-only to software
    assert rd(dev, r.GERROR) == cmdq_err.mask
    wr(dev, r.GERRORN, rd(dev, r.GERROR))  # the acknowledgement
    assert dev.gerror_active == 0
    dev.raise_gerror(cmdq_err)  # toggles back to 0, which is active again
    assert rd(dev, r.GERROR) == 0
    assert dev.gerror_active == cmdq_err.mask
    assert env.irqs == [] and env.msis == []  # GERROR_IRQEN was never set


def test_gerror_interrupt_wired_then_msi() -> None:
    dev, env = make()
    wr(dev, r.IRQ_CTRL, r.IRQ_CTRL.GERROR_IRQEN.mask)
    dev.raise_gerror(r.GERROR.SFM_ERR)
    dev.raise_gerror(r.GERROR.SFM_ERR)  # not a new error: no interrupt
    assert env.irqs == [3]
    wr(dev, r.GERROR_IRQ_CFG0, 0x8000_0003)  # ADDR[51:2]: the low bits are reserved
    wr(dev, r.GERROR_IRQ_CFG1, 0x1234)
    dev.raise_gerror(r.GERROR.EVENTQ_ABT_ERR)
    assert env.msis == [(3, 0x8000_0000, 0x1234)]
    assert env.irqs == [3]


def test_queue_base_log2size_is_clamped() -> None:
    dev, _ = make()
    for reg in (r.CMDQ_BASE, r.EVENTQ_BASE, r.PRIQ_BASE):
        wr(dev, reg, 0x4000_0000_1234_5660 | 31)
        value = rd(dev, reg)
        assert reg.field("LOG2SIZE").get(value) == r.QUEUE_LOG2SIZE_MAX
        assert reg.field("ADDR").get(value) << 5 == 0x1234_5660
        wr(dev, reg, 7)
        assert rd(dev, reg) == 7


def test_prod_cons_stored_on_the_right_page() -> None:
    dev, _ = make()
    for reg in (r.CMDQ_PROD, r.CMDQ_CONS, r.EVENTQ_PROD, r.EVENTQ_CONS, r.PRIQ_PROD,
                r.PRIQ_CONS):
        wr(dev, reg, 0xFFFF_FFFF)
        assert rd(dev, reg) == reg.full_mask & ~reg.rsvd, reg.name
    # Page 1 is not an alias of page 0 (module docstring of devices.smmuv3.regs).
    for twin in (0xA8, 0xAC, 0xC8, 0xCC):
        dev.mmio_write(twin, 4, 0xFFFF_FFFF)
        assert dev.mmio_read(twin, 4) == 0
    assert dev.mmio_read(r.PAGE1 + r.IDR0.offset, 4) == 0
    assert dev.mmio_read(r.PAGE1 + r.CMDQ_PROD.offset, 4) == 0


# --- the access rule -----------------------------------------------------------------------

def test_64bit_register_halves() -> None:
    dev, _ = make()
    base = r.STRTAB_BASE.offset
    dev.mmio_write(base, 4, 0xDEAD_BEEF)
    dev.mmio_write(base + 4, 4, 0xFFFF_FFFF)
    # ADDR[51:6] and RA[62] only.
    assert rd(dev, r.STRTAB_BASE) == 0x400F_FFFF_DEAD_BEC0
    assert dev.mmio_read(base, 4) == 0xDEAD_BEC0
    assert dev.mmio_read(base + 4, 4) == 0x400F_FFFF
    dev.mmio_write(base + 4, 4, 0)  # the low half stays
    assert rd(dev, r.STRTAB_BASE) == 0xDEAD_BEC0


def test_64bit_access_to_32bit_register_is_raz_wi() -> None:
    dev, _ = make()
    dev.mmio_write(r.CR0.offset, 8, 1)
    assert rd(dev, r.CR0) == 0
    assert dev.mmio_read(r.IDR0.offset, 8) == 0


@pytest.mark.parametrize("size", [1, 2])
def test_narrow_accesses_read_zero_and_are_ignored(size: int) -> None:
    dev, _ = make()
    assert dev.mmio_read(r.IDR0.offset, size) == 0
    assert dev.mmio_read(r.AIDR.offset, size) == 0
    dev.mmio_write(r.CR0.offset, size, 1)
    dev.mmio_write(r.STRTAB_BASE.offset, size, 0xC0)
    assert rd(dev, r.CR0) == 0
    assert rd(dev, r.STRTAB_BASE) == 0


def test_undefined_offsets_are_raz_wi() -> None:
    dev, _ = make()
    before = dict(dev.regs.values)
    for offset in (0x30, 0x48, 0x58, 0xE0, 0x100, 0x800, 0x8000, 0xFCC, 0x10000, 0x10098,
                   0x1FFF8):
        for size in (4, 8):
            dev.mmio_write(offset, size, (1 << (8 * size)) - 1)
            assert dev.mmio_read(offset, size) == 0, hex(offset)
    assert dev.regs.values == before


@pytest.mark.parametrize("reg", r.REGISTERS, ids=lambda reg: reg.name)
def test_reserved_bits_read_as_zero(reg: Register) -> None:
    dev, _ = make()
    wr(dev, r.GBPA, 0)  # GBPA only changes with UPDATE; make sure writes below count
    wr(dev, reg, reg.full_mask)
    assert rd(dev, reg) & reg.rsvd == 0


# --- reset ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_reset_restores_every_register(stage: str) -> None:
    dev, _ = make(stage=stage, oas=48, ssidsize=5)
    fresh = dict(dev.regs.values)
    for reg in r.REGISTERS:
        wr(dev, reg, reg.full_mask)
    wr(dev, r.GBPA, r.GBPA.UPDATE.mask | r.GBPA.ABORT.mask)
    dev.raise_gerror(r.GERROR.CMDQ_ERR)
    assert dev.regs.values != fresh
    dev.reset()
    assert dev.regs.values == fresh
    assert rd(dev, r.IDR0) == dev.regs.register("IDR0").reset
    assert r.IDR5.OAS.get(rd(dev, r.IDR5)) == r.IDR5_OAS_48_BIT


# --- translation while disabled ------------------------------------------------------------

def test_disabled_smmu_bypasses() -> None:
    dev, _ = make()
    assert dev.translate(dma(0x1234_5678)) == DmaTarget(0x1234_5678, 4096,
                                                        Perm.R | Perm.W | Perm.X)


def test_disabled_smmu_outside_oas_is_an_address_size_fault() -> None:
    dev, _ = make(oas=40)
    assert isinstance(dev.translate(dma((1 << 40) - 1)), DmaTarget)
    assert dev.translate(dma(1 << 40)) == DmaFault(FaultKind.ADDRESS_SIZE, 0, 1 << 40, 0)


def test_gbpa_abort_blocks() -> None:
    dev, env = make()
    wr(dev, r.GBPA, r.GBPA.UPDATE.mask | r.GBPA.ABORT.mask)
    assert dev.translate(dma(0x1000)) == DmaFault(FaultKind.BLOCKED, 0, 0x1000, 0)
    assert env.irqs == [] and env.msis == []


def test_enabled_smmu_reads_the_zeroed_stream_table() -> None:
    """STRTAB_BASE resets to 0: StreamID 0 finds an all-zero STE there (V = 0)."""
    dev, _ = make()
    wr(dev, r.CR0, r.CR0.SMMUEN.mask)
    assert dev.translate(dma(0x2000)) == DmaFault(FaultKind.BAD_CONFIG, 0x04, 0x2000, 0)
    assert dev.translate(dma(0x2000, sid=1)) == DmaFault(FaultKind.BAD_CONFIG, 0x02, 0x2000, 0)
