"""VT-d register file: declarations, capabilities, and the handshakes that need no queue.

Expected values marked "7.2 meas." are QEMU 7.2 measurements from reference/vtd.md §1d, §2d
and §9; tests named ``..._qemu_deviation`` pin where this model follows the spec instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from devices.model import DmaFault, DmaRequest, DmaTarget, FaultKind, Perm
from devices.regs import check_layout
from devices.testing import RecordingEnv
from devices.vtd import regs as r
from devices.vtd.device import VTd

GCMD, GSTS = 0x18, 0x1C
RTADDR, CCMD = 0x20, 0x28
FSTS, FECTL, FEDATA, FEADDR, FEUADDR = 0x34, 0x38, 0x3C, 0x40, 0x44
IQH, IQT, IQA, ICS, IECTL, IEDATA = 0x80, 0x88, 0x90, 0x9C, 0xA0, 0xA4
IRTA, PQA, PECTL = 0xB8, 0xD0, 0xE0
IVA, IOTLB = 0xF0, 0xF8
FRCD0 = 0x220
VCMD, VCRSP, VCCAP = 0xE00, 0xE10, 0xE30

TE, SRTP, QIE, IRE, SIRTP, CFI = 1 << 31, 1 << 30, 1 << 26, 1 << 25, 1 << 24, 1 << 23
TES, RTPS, QIES, IRES, IRTPS, CFIS = TE, SRTP, QIE, IRE, SIRTP, CFI

QEMU_NFR_MASK = r.CAP.NFR.mask
ESRTPS = r.CAP.ESRTPS.mask


def make(env: RecordingEnv | None = None, **options: Any) -> VTd:
    config = {name.replace("_", "-"): value for name, value in options.items()}
    return VTd(config, env if env is not None else RecordingEnv())


def gcmd_command(dev: VTd, bit: int, on: bool = True) -> None:
    """The spec's recipe (§11.4.4): GCMD = (GSTS & 0x96FFFFFF) with one bit set or cleared."""
    status = dev.mmio_read(GSTS, 4) & r.GSTS_PERSISTENT_MASK
    dev.mmio_write(GCMD, 4, status | bit if on else status & ~bit)


def enable_translation(dev: VTd) -> None:
    dev.mmio_write(RTADDR, 8, 0x10000)
    gcmd_command(dev, SRTP)
    gcmd_command(dev, TE)


# -- declarations ---------------------------------------------------------------------------


def test_static_declarations_have_no_problems() -> None:
    assert check_layout(r.REGISTERS, r.WINDOW) == []


@pytest.mark.parametrize("options", [
    {}, {"intremap": True}, {"scalable_mode": True, "pasid_bits": 20, "device_iotlb": True,
                             "pri": True, "vcmd": True, "nesting": True, "aw_bits": 57},
])
def test_declared_file_has_no_problems(options: dict[str, Any]) -> None:
    dev = make(**options)
    assert check_layout(r.declare(dev.cap, dev.ecap), r.WINDOW) == []


@pytest.mark.parametrize(("name", "offset", "width"), [
    ("VER", 0x0, 32), ("CAP", 0x8, 64), ("ECAP", 0x10, 64), ("GCMD", 0x18, 32),
    ("GSTS", 0x1C, 32), ("RTADDR", 0x20, 64), ("CCMD", 0x28, 64), ("FSTS", 0x34, 32),
    ("FECTL", 0x38, 32), ("FEDATA", 0x3C, 32), ("FEADDR", 0x40, 32), ("FEUADDR", 0x44, 32),
    ("PMEN", 0x64, 32), ("IQH", 0x80, 64), ("IQT", 0x88, 64), ("IQA", 0x90, 64),
    ("ICS", 0x9C, 32), ("IECTL", 0xA0, 32), ("IEDATA", 0xA4, 32), ("IEADDR", 0xA8, 32),
    ("IEUADDR", 0xAC, 32), ("IQERCD", 0xB0, 64), ("IRTA", 0xB8, 64), ("PQH", 0xC0, 64),
    ("PQT", 0xC8, 64), ("PQA", 0xD0, 64), ("PRS", 0xDC, 32), ("PECTL", 0xE0, 32),
    ("PEDATA", 0xE4, 32), ("PEADDR", 0xE8, 32), ("PEUADDR", 0xEC, 32), ("IVA", 0xF0, 64),
    ("IOTLB", 0xF8, 64), ("FRCD0_LO", 0x220, 64), ("FRCD0_HI", 0x228, 64),
    ("FRCD7_HI", 0x298, 64), ("VCMD", 0xE00, 64), ("VCRSP", 0xE10, 64), ("VCCAP", 0xE30, 64),
])
def test_register_offsets_follow_the_spec(name: str, offset: int, width: int) -> None:
    reg = next(reg for reg in r.REGISTERS if reg.name == name)
    assert (reg.offset, reg.width) == (offset, width)


def test_iotlb_and_fault_records_sit_where_cap_and_ecap_say() -> None:
    dev = make()
    assert r.ECAP.IRO.get(dev.ecap) * 16 == IVA
    assert r.CAP.FRO.get(dev.cap) * 16 == FRCD0
    assert r.CAP.NFR.get(dev.cap) + 1 == len(r.FRCD_HI) == 8


def test_model_identity() -> None:
    assert VTd.model == "vtd"
    assert VTd.irq_names == ("fault", "invalidation", "page-request")
    assert (VTd.mmio_size, VTd.default_base) == (0x1000, 0xFED90000)
    names = [o.name for o in VTd.options]
    for name in ("id", "base", "rids", "aw-bits", "scalable-mode", "caching-mode",
                 "pasid-bits", "device-iotlb"):
        assert name in names


# -- CAP / ECAP -----------------------------------------------------------------------------


def test_default_cap_ecap() -> None:
    dev = make()
    assert dev.mmio_read(0x0, 4) == 0x10
    assert dev.mmio_read(0x8, 8) == 0x80D2078C222F0606
    assert dev.mmio_read(0x10, 8) == 0xF42  # QI, PT, IRO = 0xF


def test_intremap_matches_qemu_upstream_default_but_for_nfr() -> None:
    dev = make(intremap=True)
    assert dev.cap & ~QEMU_NFR_MASK == 0x80D2008C222F0606
    assert dev.ecap == 0xF00F4A


def test_aw39_caching_mode_device_iotlb_matches_qemu_7_2() -> None:
    dev = make(aw_bits=39, caching_mode=True, device_iotlb=True, intremap=True)
    assert dev.cap & ~(QEMU_NFR_MASK | ESRTPS) == 0x00D2008C22260286  # 7.2 meas.
    assert dev.ecap == 0xF00F4E  # 7.2 meas.


def test_scalable_mode_offers_both_stages() -> None:
    dev = make(scalable_mode=True, intremap=True)
    # QEMU upstream x-scalable-mode=on,x-flts=on, plus SSTS (we walk both stages).
    assert dev.cap & ~QEMU_NFR_MASK == 0x81D2008C222F0606
    assert dev.ecap == 0x0000880000F00F4A | r.ECAP.SSTS.mask
    assert r.ECAP.PASID.get(dev.ecap) == 0


def test_pasid_bits_set_pss_and_supervisor_requests() -> None:
    dev = make(scalable_mode=True, pasid_bits=20)
    assert r.ECAP.PASID.get(dev.ecap) == 1
    assert r.ECAP.PSS.get(dev.ecap) == 19
    assert r.ECAP.SRS.get(dev.ecap) == 1


def test_aw57_five_level() -> None:
    dev = make(aw_bits=57, scalable_mode=True)
    assert r.CAP.SAGAW.get(dev.cap) == 0b1110
    assert r.CAP.MGAW.get(dev.cap) == 56
    assert r.CAP.FS5LP.get(dev.cap) == 1


def test_aw39_scalable_mode_has_no_first_stage() -> None:
    dev = make(aw_bits=39, scalable_mode=True)
    assert r.CAP.SAGAW.get(dev.cap) == 0b0010
    assert (r.ECAP.SSTS.get(dev.ecap), r.ECAP.FSTS.get(dev.ecap)) == (1, 0)


def test_feature_options() -> None:
    dev = make(scalable_mode=True, pasid_bits=8, device_iotlb=True, pri=True, vcmd=True,
               nesting=True, snoop_control=True, pt=False)
    e = dev.ecap
    assert [f.get(e) for f in (r.ECAP.PRS, r.ECAP.PDS, r.ECAP.VCS, r.ECAP.NEST, r.ECAP.DT,
                               r.ECAP.SC, r.ECAP.PT)] == [1, 1, 1, 1, 1, 1, 0]


@pytest.mark.parametrize("options", [
    {"aw_bits": 40}, {"pasid_bits": 8}, {"pasid_bits": 21, "scalable_mode": True},
    {"pri": True, "scalable_mode": True, "pasid_bits": 8},
    {"nesting": True, "scalable_mode": True, "aw_bits": 39},
])
def test_inconsistent_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**options)


def test_cap_reads_as_two_halves() -> None:
    dev = make()
    assert dev.mmio_read(0x8, 4) == dev.cap & 0xFFFFFFFF
    assert dev.mmio_read(0xC, 4) == dev.cap >> 32


# -- GCMD / GSTS ----------------------------------------------------------------------------


def test_gcmd_reads_zero() -> None:
    dev = make()
    dev.mmio_write(GCMD, 4, TE)
    assert dev.mmio_read(GCMD, 4) == 0
    assert dev.mmio_read(GSTS, 4) == TES


def test_srtp_latches_rtaddr_and_sets_rtps() -> None:
    dev = make()
    dev.mmio_write(RTADDR, 8, 0x12345000)
    assert dev.mmio_read(GSTS, 4) == 0
    gcmd_command(dev, SRTP)
    assert dev.mmio_read(GSTS, 4) == RTPS  # 7.2 meas. 0x40000000
    assert dev.active_rtaddr == 0x12345000
    dev.mmio_write(RTADDR, 8, 0x99999000)
    assert dev.active_rtaddr == 0x12345000  # only SRTP latches
    gcmd_command(dev, SRTP)
    assert dev.active_rtaddr == 0x99999000


def test_one_command_per_write_recipe() -> None:
    dev = make()
    seen = []
    dev.mmio_write(RTADDR, 8, 0x10000)
    for bit in (SRTP, TE, QIE):
        gcmd_command(dev, bit)
        seen.append(dev.mmio_read(GSTS, 4))
    assert seen == [RTPS, RTPS | TES, RTPS | TES | QIES]  # 7.2 meas. ... 0xc4000000
    gcmd_command(dev, TE, on=False)
    assert dev.mmio_read(GSTS, 4) == RTPS | QIES


def test_gcmd_write_omitting_enabled_bit_disables_it() -> None:
    # The written value of a persistent bit is its requested state (0 = disable), in the
    # spec and in QEMU alike (7.2 meas.: GCMD=TE after QIE: GSTS 0xc4000000 -> 0xc0000000).
    dev = make()
    enable_translation(dev)
    gcmd_command(dev, QIE)
    dev.mmio_write(GCMD, 4, TE)
    assert dev.mmio_read(GSTS, 4) == RTPS | TES


def test_writing_gsts_back_relatches_the_root_table() -> None:
    dev = make()
    enable_translation(dev)
    dev.mmio_write(RTADDR, 8, 0x20000)
    dev.mmio_write(GCMD, 4, dev.mmio_read(GSTS, 4))  # RTPS is bit 30 = SRTP
    assert dev.active_rtaddr == 0x20000
    assert dev.mmio_read(GSTS, 4) == RTPS | TES


def test_several_commands_in_one_write_all_act() -> None:
    dev = make()
    dev.mmio_write(RTADDR, 8, 0x30000)
    dev.mmio_write(GCMD, 4, TE | SRTP | QIE)
    assert dev.mmio_read(GSTS, 4) == TES | RTPS | QIES
    assert dev.active_rtaddr == 0x30000


def test_interrupt_remapping_commands_need_intremap() -> None:
    dev = make()
    dev.mmio_write(GCMD, 4, IRE | SIRTP | CFI)
    assert dev.mmio_read(GSTS, 4) == 0
    dev = make(intremap=True)
    dev.mmio_write(IRTA, 8, 0xABC000 | 7)
    gcmd_command(dev, SIRTP)
    assert dev.mmio_read(GSTS, 4) == IRTPS
    assert dev.active_irta == 0xABC007
    gcmd_command(dev, IRE)
    gcmd_command(dev, CFI)
    assert dev.mmio_read(GSTS, 4) == IRTPS | IRES | CFIS
    gcmd_command(dev, CFI, on=False)
    assert dev.mmio_read(GSTS, 4) == IRTPS | IRES


def test_wbf_is_ignored_without_rwbf() -> None:
    dev = make()
    dev.mmio_write(GCMD, 4, 1 << 27)
    assert dev.mmio_read(GSTS, 4) == 0


# -- queued invalidation enable -------------------------------------------------------------


def test_qie_enable_latches_iqa_and_zeroes_iqh() -> None:
    dev = make()
    dev.mmio_write(IQA, 8, 0x40000 | 1)
    gcmd_command(dev, QIE)
    assert dev.mmio_read(GSTS, 4) == QIES
    assert dev.active_iqa == 0x40001
    assert dev.mmio_read(IQH, 8) == 0
    dev.mmio_write(IQA, 8, 0x80000)
    assert dev.active_iqa == 0x40001
    assert dev.mmio_read(IQA, 8) == 0x80000  # stored, read back


def test_iqt_is_stored_and_handed_to_the_queue_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = make()
    calls: list[int] = []
    monkeypatch.setattr(dev, "_iqt_written", lambda: calls.append(dev.regs["IQT"]))
    dev.mmio_write(IQT, 8, 0xFFFF_FFFF_FFFF_FFFF)
    assert dev.mmio_read(IQT, 8) == 0x7FFF0  # 7.2 meas. mask
    gcmd_command(dev, QIE)  # Windows enables after writing IQT: the queue runs then too
    assert calls == [0x7FFF0, 0x7FFF0]


def test_qie_disable_refused_while_descriptors_pend() -> None:
    dev = make()
    gcmd_command(dev, QIE)
    dev.mmio_write(IQT, 8, 0x20)  # not processed yet: IQH stays 0
    gcmd_command(dev, QIE, on=False)
    assert dev.mmio_read(GSTS, 4) == QIES


def test_qie_disable_with_idle_queue_needs_no_wait_descriptor_qemu_deviation() -> None:
    dev = make()
    gcmd_command(dev, QIE)
    gcmd_command(dev, QIE, on=False)
    assert dev.mmio_read(GSTS, 4) == 0
    assert dev.mmio_read(IQH, 8) == 0


# -- fault status and events ----------------------------------------------------------------


def test_fsts_w1c_bits() -> None:
    dev = make()
    dev.regs["FSTS"] = 0x71 | 0x2 | (3 << 8)  # PFO IQE ICE ITE, PPF, FRI 3
    dev.mmio_write(FSTS, 4, 0xFFFFFFFF)
    assert dev.mmio_read(FSTS, 4) == 0x2 | (3 << 8)  # PPF and FRI are read-only


def test_fectl_reset_and_masks() -> None:
    dev = make()
    assert dev.mmio_read(FECTL, 4) == 0x80000000
    for offset, mask in ((FECTL, 0x80000000), (FEDATA, 0xFFFF), (FEADDR, 0xFFFFFFFC)):
        dev.mmio_write(offset, 4, 0xFFFFFFFF)
        assert dev.mmio_read(offset, 4) == mask  # 7.2 meas.


def test_fault_event_pends_while_masked_and_fires_on_unmask() -> None:
    env = RecordingEnv()
    dev = make(env)
    dev.mmio_write(FEDATA, 4, 0x41)
    dev.mmio_write(FEADDR, 4, 0xFEE00000)
    dev._raise_event("FECTL")
    assert dev.mmio_read(FECTL, 4) == 0xC0000000  # IM, IP
    assert env.msis == []
    dev.mmio_write(FECTL, 4, 0)
    assert env.msis == [(0, 0xFEE00000, 0x41)]
    assert dev.mmio_read(FECTL, 4) == 0


def test_unmasked_fault_event_is_sent_at_once() -> None:
    env = RecordingEnv()
    dev = make(env)
    dev.mmio_write(FECTL, 4, 0)
    dev.mmio_write(FEUADDR, 4, 0x1)
    dev.mmio_write(FEADDR, 4, 0x1000)
    dev._raise_event("FECTL")
    assert env.msis == [(0, 0x1_0000_1000, 0)]


def test_clearing_every_fault_condition_withdraws_the_pending_event() -> None:
    env = RecordingEnv()
    dev = make(env)
    dev.regs["FSTS"] = 0x10  # IQE
    dev._raise_event("FECTL")
    dev.mmio_write(FSTS, 4, 0x10)
    assert dev.mmio_read(FECTL, 4) == 0x80000000
    dev.mmio_write(FECTL, 4, 0)
    assert env.msis == []


def test_frcd_f_is_w1c_and_recomputes_ppf() -> None:
    dev = make()
    dev.regs["FRCD2_LO"] = 0x5000
    dev.regs["FRCD2_HI"] = (1 << 63) | (5 << 32) | 0x18
    dev.regs["FSTS"] = 0x2 | (2 << 8)
    dev.mmio_write(FRCD0 + 0x28, 8, 0xFFFF_FFFF_FFFF_FFFF)  # only F is writable
    assert dev.mmio_read(FRCD0 + 0x28, 8) == (5 << 32) | 0x18
    assert dev.mmio_read(FRCD0 + 0x20, 8) == 0x5000
    assert dev.mmio_read(FSTS, 4) == 2 << 8


def test_frcd_f_clears_through_the_high_half() -> None:
    dev = make()
    dev.regs["FRCD0_HI"] = (1 << 63) | 0x18
    dev.mmio_write(FRCD0 + 0xC, 4, 0x80000000)
    assert dev.mmio_read(FRCD0 + 8, 8) == 0x18


def test_ics_w1c_withdraws_invalidation_event() -> None:
    dev = make()
    dev.regs["ICS"] = 1
    dev._raise_event("IECTL")
    assert dev.mmio_read(IECTL, 4) == 0xC0000000
    dev.mmio_write(ICS, 4, 1)
    assert (dev.mmio_read(ICS, 4), dev.mmio_read(IECTL, 4)) == (0, 0x80000000)


def test_iedata_is_16_bits_qemu_deviation() -> None:
    dev = make()
    dev.mmio_write(IEDATA, 4, 0xFFFFFFFF)
    assert dev.mmio_read(IEDATA, 4) == 0xFFFF  # QEMU stores 32 bits


def test_feuaddr_is_read_write_qemu_deviation() -> None:
    dev = make()
    dev.mmio_write(FEUADDR, 4, 0x12345678)
    assert dev.mmio_read(FEUADDR, 4) == 0x12345678  # QEMU: read-only 0


def test_pectl_resets_masked_qemu_deviation() -> None:
    dev = make(scalable_mode=True, pasid_bits=8, device_iotlb=True, pri=True)
    assert dev.mmio_read(PECTL, 4) == 0x80000000  # QEMU resets PECTL to 0


def test_iqercd_is_implemented_read_only_qemu_deviation() -> None:
    dev = make()
    dev.regs["IQERCD"] = r.IQERCD.IQEI.prep(r.IQEI_TYPE)
    dev.mmio_write(0xB0, 8, 0)
    assert dev.mmio_read(0xB0, 8) == r.IQEI_TYPE


# -- register-based invalidation ------------------------------------------------------------


def test_ccmd_global_handshake() -> None:
    dev = make()
    dev.mmio_write(CCMD, 8, (1 << 63) | (1 << 61))
    assert dev.mmio_read(CCMD, 8) == 0x2800000000000000  # 7.2 meas.


def test_ccmd_all_ones_high_half_runs_device_selective() -> None:
    dev = make()
    dev.mmio_write(CCMD + 4, 4, 0xFFFFFFFF)
    assert dev.mmio_read(CCMD + 4, 4) == 0x78000000  # 7.2 meas.
    dev.mmio_write(CCMD, 4, 0xFFFFFFFF)
    assert dev.mmio_read(CCMD, 4) == 0x0000FFFF  # 7.2 meas.: FM and SID are write-only


def test_ccmd_without_granularity_reports_error() -> None:
    dev = make()
    dev.mmio_write(CCMD, 8, 1 << 63)
    assert dev.mmio_read(CCMD, 8) == 0


@pytest.mark.parametrize(("iotlb", "iva", "readback"), [
    ((1 << 63) | (1 << 60), 0, 0x1200000000000000),
    ((1 << 63) | (2 << 60) | (5 << 32), 0, 0x2400000500000000),
    ((1 << 63) | (3 << 60) | (5 << 32), 0x5000, 0x3600000500000000),
    ((1 << 63) | (3 << 60) | (5 << 32), 19, 0x3000000500000000),  # AM > MAMV
])
def test_iotlb_handshake(iotlb: int, iva: int, readback: int) -> None:
    dev = make()
    dev.mmio_write(IVA, 8, iva)
    dev.mmio_write(IOTLB, 8, iotlb)
    assert dev.mmio_read(IOTLB, 8) == readback  # 7.2 meas.
    assert dev.mmio_read(IVA, 8) == 0  # write-only


def test_iotlb_all_ones_high_half() -> None:
    dev = make()
    dev.mmio_write(IOTLB + 4, 4, 0xFFFFFFFF)
    assert dev.mmio_read(IOTLB + 4, 4) == 0x3603FFFF  # 7.2 meas.


def test_register_invalidation_while_qi_enabled_completes_with_error_qemu_deviation() -> None:
    dev = make()
    gcmd_command(dev, QIE)
    dev.mmio_write(CCMD, 8, (1 << 63) | (1 << 61))
    dev.mmio_write(IOTLB, 8, (1 << 63) | (1 << 60))
    assert dev.mmio_read(CCMD, 8) == 1 << 61  # ICC clear, CAIG 00: QEMU ignores the write
    assert dev.mmio_read(IOTLB, 8) == 1 << 60


def test_register_invalidation_in_scalable_mode_reports_error_qemu_deviation() -> None:
    dev = make(scalable_mode=True)
    dev.mmio_write(RTADDR, 8, 0x10000 | (r.TTM_SCALABLE << 10))
    gcmd_command(dev, SRTP)
    dev.mmio_write(CCMD, 8, (1 << 63) | (1 << 61))
    assert dev.mmio_read(CCMD, 8) == 1 << 61  # QEMU ignores TTM and performs it


# -- access sizes and undefined offsets -----------------------------------------------------


def test_8_byte_access_to_32_bit_register_reads_zero_and_is_ignored() -> None:
    dev = make()
    assert dev.mmio_read(FECTL, 8) == 0
    dev.mmio_write(FECTL, 8, 0)
    assert dev.mmio_read(FECTL, 4) == 0x80000000
    dev.mmio_write(GCMD, 8, TE)  # QEMU bug #3: this once aborted
    assert dev.mmio_read(GSTS, 4) == 0


def test_64_bit_register_as_32_bit_halves() -> None:
    dev = make()
    dev.mmio_write(RTADDR, 4, 0xFFFFFFFF)
    dev.mmio_write(RTADDR + 4, 4, 0x12345678)
    assert dev.mmio_read(RTADDR, 4) == 0xFFFFFC00  # 7.2 meas.
    assert dev.mmio_read(RTADDR + 4, 4) == 0x12345678
    assert dev.mmio_read(RTADDR, 8) == 0x12345678_FFFFFC00


@pytest.mark.parametrize(("offset", "size"), [
    (0x4, 4), (0x58, 8), (0x100, 8), (0x2A0, 8), (0x300, 4), (0xFF8, 8),
    (0x38, 2), (0x38, 1), (0x20, 2),
])
def test_undefined_accesses_read_zero_and_ignore_writes(offset: int, size: int) -> None:
    dev = make()
    before = dict(dev.regs.values)
    dev.mmio_write(offset, size, (1 << (8 * size)) - 1)
    assert dev.mmio_read(offset, size) == 0
    assert dev.regs.values == before


@pytest.mark.parametrize(("offset", "size"), [
    (0x64, 4), (IRTA, 8), (PQA, 8), (PECTL, 4), (VCMD, 8), (VCCAP, 8),
])
def test_registers_of_absent_features_are_rsvdz(offset: int, size: int) -> None:
    dev = make()
    dev.mmio_write(offset, size, (1 << (8 * size)) - 1)
    assert dev.mmio_read(offset, size) == 0


def test_irta_mask_with_intremap() -> None:
    dev = make(intremap=True)
    dev.mmio_write(IRTA, 4, 0xFFFFFFFF)
    assert dev.mmio_read(IRTA, 4) == 0xFFFFF80F  # 7.2 meas.


# -- virtual commands -----------------------------------------------------------------------


def test_vcmd_null_command_and_undefined_commands() -> None:
    dev = make(scalable_mode=True, pasid_bits=8, vcmd=True)
    assert dev.mmio_read(VCCAP, 8) == 0b11  # NS and PAS (rev 5.10 bit positions)
    dev.mmio_write(VCMD, 8, r.VCMD_NULL)
    assert dev.mmio_read(VCRSP, 8) == 0
    dev.mmio_write(VCMD, 8, 0x7F)
    assert r.VCRSP.SC.get(dev.mmio_read(VCRSP, 8)) == r.VCRSP_SC_UNDEFINED
    assert dev.mmio_read(VCMD, 8) == 0x7F


def test_vcmd_write_while_in_progress_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = make(scalable_mode=True, pasid_bits=8, vcmd=True)
    monkeypatch.setattr(dev, "_run_vcmd", lambda cmd, operand: None)
    dev.mmio_write(VCMD, 8, r.VCMD_ALLOC_PASID)
    assert dev.mmio_read(VCRSP, 8) == 1  # IP
    dev.mmio_write(VCMD, 8, r.VCMD_FREE_PASID | (5 << 16))
    assert dev.mmio_read(VCMD, 8) == r.VCMD_ALLOC_PASID


# -- translation and reset ------------------------------------------------------------------


def _req(iova: int) -> DmaRequest:
    return DmaRequest(requester=0x18, pasid=None, iova=iova, write=True, privileged=False,
                      execute=False)


def test_translation_disabled_passes_dma_through() -> None:
    dev = make()
    assert dev.translate(_req(0x1234_5678)) == DmaTarget(0x1234_5678, 4096,
                                                          Perm.R | Perm.W | Perm.X)
    assert dev.translate(_req(1 << 52)) == DmaFault(FaultKind.ADDRESS_SIZE, 0, 1 << 52, 0)


def test_translation_enabled_walks_the_root_table() -> None:
    dev = make()
    enable_translation(dev)  # an all-zero root table: root entry not present, fault 0x1
    assert dev.translate(_req(0x5000)) == DmaFault(FaultKind.BAD_CONFIG, 0x1, 0x5000, 0)


def test_reset_restores_every_register() -> None:
    dev = make(intremap=True)
    fresh = dict(dev.regs.values)
    enable_translation(dev)
    gcmd_command(dev, QIE)
    for offset, size in ((FECTL, 4), (FEDATA, 4), (IQT, 8), (IQA, 8), (IRTA, 8), (CCMD, 8)):
        dev.mmio_write(offset, size, 0x0F0F_F0F0)
    dev.reset()
    assert dev.regs.values == fresh
    assert (dev.active_rtaddr, dev.active_irta, dev.active_iqa) == (0, 0, 0)
    assert dev.translate(_req(0x5000)) == DmaTarget(0x5000, 4096, Perm.R | Perm.W | Perm.X)


def test_requester_range_comes_from_config() -> None:
    dev = VTd({"requesters": (0x100, 0x1FF)}, RecordingEnv())
    assert dev.requester_ranges == [(0x100, 0x1FF)]
