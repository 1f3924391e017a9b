"""SMMUv3 structure layouts (IHI 0070 chapters 4, 5, 7, 8): the construct declarations and
the fast codec derived from them agree; field positions match the spec and Linux; the Linux
kunit STE/CD encodings (smmuv3.md §9.2) decode to the fields they were built from."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.smmuv3 import commands, events
from devices.smmuv3.cd import CD, L1CD
from devices.smmuv3.layout import DecodeError, Layout
from devices.smmuv3.priq import PRIQ_ENTRY
from devices.smmuv3.ste import L1STD, STE

ALL_LAYOUTS: dict[str, Layout] = {
    "STE": STE, "L1STD": L1STD, "CD": CD, "L1CD": L1CD, "PRIQ": PRIQ_ENTRY,
    **{layout.name: layout for layout in commands.LAYOUTS.values()},
    **{layout.name: layout for layout in events.LAYOUTS.values()},
}


@pytest.mark.parametrize("name", sorted(ALL_LAYOUTS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_fast_codec_matches_construct(name: str, data: st.DataObject) -> None:
    layout = ALL_LAYOUTS[name]
    raw = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    assert layout.decode(raw) == layout.parse_slow(raw)
    fields = layout.decode(raw)
    assert layout.build(**fields) == layout.build_slow(**fields)
    # Reserved bits aside, building what was decoded gives the bytes back.
    dws = layout.dwords(raw)
    rebuilt = layout.dwords(layout.build(**fields))
    assert [w & ~m for w, m in zip(dws, layout.reserved, strict=True)] == list(rebuilt)


@pytest.mark.parametrize("name", sorted(ALL_LAYOUTS))
def test_fields_tile_each_dword(name: str) -> None:
    layout = ALL_LAYOUTS[name]
    named = [0] * (layout.size // 8)
    for slot in layout.slots.values():
        bits = slot.mask << slot.shift
        assert not named[slot.dw] & bits, "overlapping fields"
        named[slot.dw] |= bits
    for dw, (got, res) in enumerate(zip(named, layout.reserved, strict=True)):
        assert got | res == (1 << 64) - 1 and not got & res, f"dword {dw}"


def test_decode_rejects_the_wrong_size_keeping_the_bytes() -> None:
    with pytest.raises(DecodeError) as info:
        STE.decode(b"\x01" * 63)
    assert info.value.raw == b"\x01" * 63


def test_build_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        STE.build(Config=8)
    with pytest.raises(KeyError):
        STE.build(NoSuchField=1)


# -- positions, against the spec's bit numbers (§5.2, §5.4) and Linux's masks --------------

@pytest.mark.parametrize(("layout", "field", "absolute_lsb", "width"), [
    (STE, "V", 0, 1), (STE, "Config", 1, 3), (STE, "S1Fmt", 4, 2), (STE, "S1ContextPtr", 6, 50),
    (STE, "S1CDMax", 59, 5), (STE, "S1DSS", 64, 2), (STE, "S1CIR", 66, 2), (STE, "S1COR", 68, 2),
    (STE, "S1CSH", 70, 2), (STE, "MEV", 83, 1), (STE, "S1STALLD", 91, 1), (STE, "EATS", 92, 2),
    (STE, "STRW", 94, 2), (STE, "SHCFG", 108, 2), (STE, "S2VMID", 128, 16),
    (STE, "S2T0SZ", 160, 6), (STE, "S2SL0", 166, 2), (STE, "S2TG", 174, 2), (STE, "S2PS", 176, 3),
    (STE, "S2AA64", 179, 1), (STE, "S2ENDI", 180, 1), (STE, "S2AFFD", 181, 1),
    (STE, "S2PTW", 182, 1), (STE, "S2HD", 183, 1), (STE, "S2HA", 184, 1), (STE, "S2S", 185, 1),
    (STE, "S2R", 186, 1), (STE, "S2TTB", 196, 52),
    (CD, "T0SZ", 0, 6), (CD, "TG0", 6, 2), (CD, "EPD0", 14, 1), (CD, "ENDI", 15, 1),
    (CD, "T1SZ", 16, 6), (CD, "TG1", 22, 2), (CD, "EPD1", 30, 1), (CD, "V", 31, 1),
    (CD, "IPS", 32, 3), (CD, "AFFD", 35, 1), (CD, "WXN", 36, 1), (CD, "TBI0", 38, 1),
    (CD, "TBI1", 39, 1), (CD, "PAN", 40, 1), (CD, "AA64", 41, 1), (CD, "HD", 42, 1),
    (CD, "HA", 43, 1), (CD, "S", 44, 1), (CD, "R", 45, 1), (CD, "A", 46, 1), (CD, "ASET", 47, 1),
    (CD, "ASID", 48, 16), (CD, "NSCFG0", 64, 1), (CD, "HAD0", 65, 1), (CD, "TTB0", 68, 52),
    (CD, "HAD1", 129, 1), (CD, "TTB1", 132, 52), (CD, "MAIR0", 192, 32), (CD, "MAIR1", 224, 32),
    (L1STD, "Span", 0, 5), (L1STD, "L2Ptr", 6, 50), (L1CD, "V", 0, 1), (L1CD, "L2Ptr", 12, 44),
])
def test_field_positions(layout: Layout, field: str, absolute_lsb: int, width: int) -> None:
    slot = layout[field]
    assert 64 * slot.dw + slot.shift == absolute_lsb
    assert slot.mask == (1 << width) - 1


def test_command_field_positions_match_linux() -> None:
    sync = commands.LAYOUTS[commands.Op.SYNC]
    assert (sync["CS"].shift, sync["MSH"].shift, sync["MSIAttr"].shift) == (12, 22, 24)
    assert (sync["MSIData"].shift, sync["MSIAddress"].dw, sync["MSIAddress"].shift) == (32, 1, 2)
    va = commands.LAYOUTS[commands.Op.TLBI_NH_VA]
    assert [va[n].shift for n in ("NUM", "SCALE", "VMID", "ASID")] == [12, 20, 32, 48]
    assert [va[n].shift for n in ("Leaf", "TTL", "TG", "Address")] == [0, 8, 10, 12]
    atc = commands.LAYOUTS[commands.Op.ATC_INV]
    assert (atc["Global"].shift, atc["SSV"].shift, atc["SubstreamID"].shift) == (9, 11, 12)
    pri = commands.LAYOUTS[commands.Op.PRI_RESP]
    assert (pri["PRGIndex"].shift, pri["Resp"].shift) == (0, 12)


def test_event_field_positions() -> None:
    fault = events.LAYOUTS[events.EventType.F_TRANSLATION]
    assert [64 * fault[n].dw + fault[n].shift for n in
            ("SSV", "SubstreamID", "StreamID", "Stall", "PnU", "InD", "RnW", "S2", "CLASS",
             "TTRnW", "InputAddr", "IPA")] == [11, 12, 32, 95, 97, 98, 99, 103, 104, 108, 128,
                                               204]
    fetch = events.LAYOUTS[events.EventType.F_CD_FETCH]
    assert 64 * fetch["FetchAddr"].dw + fetch["FetchAddr"].shift == 195  # dw3, not dw2
    assert "SSV" not in events.LAYOUTS[events.EventType.C_BAD_SUBSTREAMID].slots
    assert set(events.LAYOUTS[events.EventType.F_STREAM_DISABLED].slots) == {"StreamID", "Type"}


# -- Linux kunit encodings (smmuv3.md §9.2) ------------------------------------------------

def _ste(*dws: int) -> dict[str, int]:
    raw = b"".join(w.to_bytes(8, "little") for w in dws) + bytes(64 - 8 * len(dws))
    return STE.decode(raw)


def test_kunit_abort_and_bypass_stes() -> None:
    assert _ste(0x1)["Config"] == 0 and _ste(0x1)["V"] == 1
    bypass = _ste(0x9, 0x0000_1000_0000_0000)
    assert (bypass["V"], bypass["Config"], bypass["SHCFG"]) == (1, 0b100, 1)


def test_kunit_cd_table_ste() -> None:
    s = _ste(0xF800_F0F0_F0F0_F0EB, 0x0800_00D4)
    assert (s["V"], s["Config"], s["S1Fmt"], s["S1CDMax"]) == (1, 0b101, 2, 31)
    assert s["S1ContextPtr"] << 6 == 0xF0F0_F0F0_F0C0
    assert (s["S1DSS"], s["S1CIR"], s["S1COR"], s["S1CSH"], s["S1STALLD"]) == (0, 1, 1, 3, 1)
    assert _ste(0xF800_F0F0_F0F0_F0EB, 0x0000_1000_0800_00D5)["S1DSS"] == 1
    assert _ste(0xF800_F0F0_F0F0_F0EB, 0x0800_00D6)["S1DSS"] == 2


def test_kunit_s2_ste() -> None:
    s = _ste(0xD, 0x0000_1000_1000_0000, 0x0449_B6C4_0000_0000, 0x000D_BEEF_DEAD_BEE0)
    assert (s["Config"], s["EATS"], s["SHCFG"]) == (0b110, 1, 1)
    assert (s["S2T0SZ"], s["S2SL0"], s["S2IR0"], s["S2OR0"], s["S2SH0"], s["S2TG"],
            s["S2PS"]) == (4, 3, 2, 1, 3, 2, 1)
    assert (s["S2AA64"], s["S2PTW"], s["S2R"], s["S2VMID"]) == (1, 1, 1, 0)
    assert s["S2TTB"] << 4 == 0x000D_BEEF_DEAD_BEE0


def test_kunit_s1_cds() -> None:
    for asid, dw0 in ((1997, 0x07CD_E201_C000_3684), (778, 0x030A_E201_C000_3684)):
        raw = b"".join(w.to_bytes(8, "little") for w in
                       (dw0, 0x000D_BEEF_DEAD_BEE0, 0, 0x0ABC_DEF0_1234_5678)) + bytes(32)
        d = CD.decode(raw)
        assert (d["ASID"], d["V"], d["AA64"], d["R"], d["A"], d["ASET"], d["EPD1"]) == \
            (asid, 1, 1, 1, 1, 1, 1)
        assert (d["T0SZ"], d["TG0"], d["IR0"], d["OR0"], d["SH0"], d["IPS"]) == (4, 2, 2, 1, 3, 1)
        assert d["TTB0"] << 4 == 0x000D_BEEF_DEAD_BEE0
        assert d["MAIR1"] << 32 | d["MAIR0"] == 0x0ABC_DEF0_1234_5678
