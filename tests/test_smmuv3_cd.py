"""Context descriptors and SubstreamIDs (IHI 0070 §5.2 S1*, §5.3, §5.4, §7.3.7-7.3.11):
linear and 2-level CD tables (4 KB and 64 KB leaves), S1CDMax/S1DSS, every C_BAD_CD and
C_BAD_SUBSTREAMID condition, F_CD_FETCH, stage-2 faults on CD fetches (CLASS = CD), and CD
caching until CMD_CFGI_CD / CMD_CFGI_CD_ALL."""

from __future__ import annotations

from typing import Any

import pytest

from devices.model import DmaFault, DmaTarget, FaultKind, Perm
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder
from devices.smmuv3.commands import Op
from devices.smmuv3.events import CLASS_CD, EventType
from devices.smmuv3.ste import S1DSS_BYPASS, S1DSS_SSID0, S1DSS_TERMINATE, Config
from devices.smmuv3.testing import SmmuRig, cd_fields, make_rig, s2_fields

PAGE = 4096


def page(rig: SmmuRig, n: int) -> int:
    return rig.data + n * PAGE


def s1_tables(rig: SmmuRig, *maps: tuple[int, int]) -> ArmS1Builder:
    s1 = ArmS1Builder(rig.mem, rig.alloc)
    for iova, gpa in maps:
        s1.map(iova, gpa, PAGE, Perm.R | Perm.W)
    return s1


def gpa_of(got: DmaTarget | DmaFault) -> int:
    assert isinstance(got, DmaTarget), got
    return got.gpa


def substream_stream(rig: SmmuRig, sid: int, cdmax: int, fmt: int = 0,
                     dss: int = S1DSS_TERMINATE, ssids: tuple[int, ...] = ()) -> int:
    """An S1 STE with a CD table; SSID n maps IOVA 0x1000 to data page n."""
    table = rig.cd_table(cdmax, fmt)
    for ssid in ssids:
        s1 = s1_tables(rig, (0x1000, page(rig, ssid)))
        rig.cd(rig.cd_address(table, ssid, fmt), **cd_fields(s1, ASID=(ssid + 1) & 0xFFFF))
    rig.ste(sid, Config=Config.S1, S1ContextPtr=table >> 6, S1CDMax=cdmax, S1Fmt=fmt,
            S1DSS=dss)
    return table


@pytest.mark.parametrize(("cdmax", "fmt"), [(3, 0), (8, 1), (12, 1), (12, 2), (20, 2)])
def test_cd_tables_linear_and_two_level(cdmax: int, fmt: int) -> None:
    rig, _ = make_rig({"ssidsize": 20})
    ssids = tuple(sorted({0, 1, (1 << cdmax) - 1, min(1 << 6, (1 << cdmax) - 2),
                          (1 << cdmax) // 3}))
    substream_stream(rig, 1, cdmax, fmt, ssids=ssids)
    for ssid in ssids:
        assert gpa_of(rig.dma(1, 0x1010, pasid=ssid)) == page(rig, ssid) + 0x10
    assert rig.events() == []


def test_2_pow_20_substreams() -> None:
    rig, _ = make_rig({"ssidsize": 20})
    substream_stream(rig, 1, 20, 2, ssids=((1 << 20) - 1,))
    assert gpa_of(rig.dma(1, 0x1000, pasid=(1 << 20) - 1)) == page(rig, (1 << 20) - 1)
    got = rig.dma(1, 0x1000, pasid=1 << 20)
    assert isinstance(got, DmaFault) and got.code == EventType.C_BAD_SUBSTREAMID


def test_single_cd_serves_non_substream_traffic() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    substream_stream(rig, 1, 0, ssids=(0,))
    assert gpa_of(rig.dma(1, 0x1000)) == page(rig, 0)


@pytest.mark.parametrize(("options", "cdmax", "pasid"), [
    ({"ssidsize": 4}, 0, 0),       # substreams disabled in the STE
    ({"ssidsize": 4}, 2, 4),       # beyond 2^S1CDMax
    ({}, 0, 1),                    # SSIDSIZE = 0
])
def test_bad_substreamid(options: dict[str, Any], cdmax: int, pasid: int) -> None:
    rig, _ = make_rig(options)
    substream_stream(rig, 1, cdmax, ssids=(0,))
    assert rig.dma(1, 0x1000, pasid=pasid) == DmaFault(
        FaultKind.BAD_CONFIG, EventType.C_BAD_SUBSTREAMID, 0x1000, 0)
    (ev,) = rig.events()
    assert (ev["Type"], ev["SubstreamID"]) == (EventType.C_BAD_SUBSTREAMID, pasid)


@pytest.mark.parametrize("config", [Config.BYPASS, Config.S2])
def test_substreamid_without_stage1_is_c_bad_substreamid(config: Config) -> None:
    rig, _ = make_rig({"ssidsize": 4})
    fields = {}
    if config == Config.S2:
        fields = s2_fields(ArmS2Builder(rig.mem, rig.alloc, tsz=24))
    rig.ste(1, Config=config, **fields)
    got = rig.dma(1, 0x1000, pasid=2)
    assert isinstance(got, DmaFault) and got.code == EventType.C_BAD_SUBSTREAMID


def test_s1dss_terminate_is_f_stream_disabled() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    substream_stream(rig, 1, 2, dss=S1DSS_TERMINATE, ssids=(0, 1))
    assert rig.dma(1, 0x1000) == DmaFault(FaultKind.BLOCKED, EventType.F_STREAM_DISABLED,
                                          0x1000, 0)
    (ev,) = rig.events()
    assert ev.fields == {"Type": EventType.F_STREAM_DISABLED, "StreamID": 1}
    assert gpa_of(rig.dma(1, 0x1000, pasid=0)) == page(rig, 0)


def test_s1dss_bypass_skips_stage1() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    substream_stream(rig, 1, 2, dss=S1DSS_BYPASS, ssids=(1,))
    got = rig.dma(1, rig.data + 0x123)
    assert isinstance(got, DmaTarget) and (got.gpa, got.size) == (rig.data + 0x123, 4096)
    assert gpa_of(rig.dma(1, 0x1000, pasid=1)) == page(rig, 1)


def test_s1dss_ssid0_gives_cd0_to_plain_traffic_and_refuses_substream_0() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    substream_stream(rig, 1, 2, dss=S1DSS_SSID0, ssids=(0, 2))
    assert gpa_of(rig.dma(1, 0x1000)) == page(rig, 0)
    assert gpa_of(rig.dma(1, 0x1000, pasid=2)) == page(rig, 2)
    got = rig.dma(1, 0x1000, pasid=0)
    assert isinstance(got, DmaFault) and got.code == EventType.F_STREAM_DISABLED


def test_reserved_s1dss_behaves_as_terminate() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    substream_stream(rig, 1, 2, dss=3, ssids=(0,))
    got = rig.dma(1, 0x1000)
    assert isinstance(got, DmaFault) and got.code == EventType.F_STREAM_DISABLED


def test_l1cd_invalid_is_c_bad_substreamid() -> None:
    rig, _ = make_rig({"ssidsize": 12})
    substream_stream(rig, 1, 12, fmt=1, ssids=(5,))
    got = rig.dma(1, 0x1000, pasid=0x345)  # its L1CD (index 13) was never made valid
    assert isinstance(got, DmaFault) and got.code == EventType.C_BAD_SUBSTREAMID
    (ev,) = rig.events()
    assert ev["SubstreamID"] == 0x345


def test_unreadable_cd_is_f_cd_fetch_with_fetchaddr_in_dw3_not_qemu_dw2() -> None:
    """smmuv3.md §10: QEMU writes the F_CD_FETCH address in dw2; §7.3.10 puts it in dw3."""
    rig, _ = make_rig({"ssidsize": 4})
    rig.ste(1, Config=Config.S1, S1ContextPtr=0x40_0000_0000 >> 6, S1CDMax=2)
    assert rig.dma(1, 0x1000, pasid=3) == DmaFault(FaultKind.EXTERNAL_ABORT,
                                                   EventType.F_CD_FETCH, 0x1000, 0)
    (ev,) = rig.events()
    assert ev["FetchAddr"] << 3 == 0x40_0000_0000 + 3 * 64
    raw = rig.mem.read(rig.evtq, 32)
    assert raw is not None and int.from_bytes(raw[16:24], "little") == 0


@pytest.mark.parametrize("bad", [
    {"V": 0}, {"AA64": 0}, {"ENDI": 1}, {"HA": 1}, {"HD": 1}, {"S": 1}, {"A": 0},
    {"TG0": 3}, {"T0SZ": 15}, {"T0SZ": 40}, {"ttb0": 1 << 48},
    {"EPD1": 0, "TG1": 0},                     # TG1 = 0b00 is reserved (TG1 encoding)
])
def test_illegal_cds_are_c_bad_cd(bad: dict[str, Any]) -> None:
    rig, _ = make_rig()
    table = rig.cd_table(0)
    s1 = s1_tables(rig)
    rig.cd(table, **{**cd_fields(s1), **bad})
    rig.ste(1, Config=Config.S1, S1ContextPtr=table >> 6)
    assert rig.dma(1, 0x1000) == DmaFault(FaultKind.BAD_CONFIG, EventType.C_BAD_CD, 0x1000, 0)
    (ev,) = rig.events()
    assert ev["Type"] == EventType.C_BAD_CD


def test_ttb_beyond_ips_is_c_bad_cd_not_an_address_size_fault() -> None:
    """§7.3.14: a TTB out of range "before the TTW begins" makes the CD invalid."""
    rig, _ = make_rig()
    table = rig.cd_table(0)
    rig.cd(table, **cd_fields(s1_tables(rig), IPS=0, ttb0=1 << 32))
    rig.ste(1, Config=Config.S1, S1ContextPtr=table >> 6)
    got = rig.dma(1, 0x1000)
    assert isinstance(got, DmaFault) and got.code == EventType.C_BAD_CD


@pytest.mark.parametrize("ips", [6, 7])
def test_ips_above_the_oas_behaves_as_the_oas_not_a_qemu_abort(ips: int) -> None:
    """smmuv3.md §8 item 2: QEMU asserts on IPS codes above its table."""
    rig, _ = make_rig()
    table = rig.cd_table(0)
    rig.cd(table, **cd_fields(s1_tables(rig, (0x1000, page(rig, 1))), IPS=ips))
    rig.ste(1, Config=Config.S1, S1ContextPtr=table >> 6)
    assert gpa_of(rig.dma(1, 0x1000)) == page(rig, 1)


def test_nested_cd_fetch_stage2_fault_is_class_cd() -> None:
    rig, _ = make_rig()
    s2 = ArmS2Builder(rig.mem, rig.alloc, tsz=24)
    rig.ste(1, Config=Config.NESTED, S1ContextPtr=0x7000_0000 >> 6, **s2_fields(s2))
    assert rig.dma(1, 0x1000) == DmaFault(FaultKind.TRANSLATION, EventType.F_TRANSLATION,
                                          0x1000, 2)
    (ev,) = rig.events()
    assert (ev["S2"], ev["CLASS"], ev["IPA"] << 12) == (1, CLASS_CD, 0x7000_0000)


def test_nested_cd_fetch_fault_not_recorded_without_s2r() -> None:
    rig, _ = make_rig()
    s2 = ArmS2Builder(rig.mem, rig.alloc, tsz=24)
    rig.ste(1, Config=Config.NESTED, S1ContextPtr=0x7000_0000 >> 6, **s2_fields(s2, S2R=0))
    got = rig.dma(1, 0x1000)
    assert isinstance(got, DmaFault) and got.stage == 2
    assert rig.events() == []


def test_rewritten_cd_is_not_used_before_cfgi_cd() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    table = substream_stream(rig, 1, 2, ssids=(1,))
    assert gpa_of(rig.dma(1, 0x1000, pasid=1)) == page(rig, 1)
    s1 = s1_tables(rig, (0x1000, page(rig, 9)))
    rig.cd(table + 64, **cd_fields(s1, ASID=50))
    assert gpa_of(rig.dma(1, 0x1000, pasid=1)) == page(rig, 1)
    rig.command(Op.CFGI_CD, StreamID=1, SubstreamID=2)  # another CD: no effect
    assert gpa_of(rig.dma(1, 0x1000, pasid=1)) == page(rig, 1)
    rig.command(Op.CFGI_CD, StreamID=1, SubstreamID=1)
    assert gpa_of(rig.dma(1, 0x1000, pasid=1)) == page(rig, 9)


def test_cfgi_cd_all_drops_every_cd_of_the_stream() -> None:
    rig, _ = make_rig({"ssidsize": 4})
    table = substream_stream(rig, 1, 2, ssids=(1, 2))
    for ssid in (1, 2):
        rig.dma(1, 0x1000, pasid=ssid)
        rig.cd(table + 64 * ssid, **cd_fields(s1_tables(rig, (0x1000, page(rig, 7)))))
    rig.command(Op.CFGI_CD_ALL, StreamID=1)
    for ssid in (1, 2):
        assert gpa_of(rig.dma(1, 0x1000, pasid=ssid)) == page(rig, 7)
