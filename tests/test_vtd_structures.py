"""VT-d in-memory structures: each construct declaration and the fast codec derived from it
agree on every field, reserved masks are those of the spec (and of QEMU's checks, where QEMU
got them right), and decoding raises only ``DecodeError``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from devices.vtd import context, descriptors, pasid, prq
from devices.vtd.descriptors import DescType, Support, check
from devices.vtd.layout import DecodeError, Layout
from devices.vtd.regs import IQEI_RESERVED, IQEI_TYPE

LAYOUTS: list[Layout[Any]] = [
    context.ROOT_ENTRY, context.CONTEXT_ENTRY, context.SM_ROOT_ENTRY, context.SM_CONTEXT_ENTRY,
    pasid.PASID_DIR_ENTRY, pasid.PASID_ENTRY, prq.PAGE_REQUEST, *descriptors.LAYOUTS.values(),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.name)
def test_fast_decode_agrees_with_construct(layout: Layout[Any]) -> None:
    rng = random.Random(layout.name)
    for _ in range(50):
        raw = rng.randbytes(layout.size)
        fast = layout.decode(raw)._asdict()
        assert fast == layout.parse_slow(raw)
        # Building from the fields gives the bytes back with the reserved bits cleared.
        words = layout.words(raw)
        clean = layout._struct.pack(*(w & ~m for w, m in zip(words, layout.rsvd, strict=True)))
        assert layout.build_slow(fast) == clean
        assert layout.encode(layout.decode(raw)) == clean


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.name)
def test_decode_errors_keep_the_bytes(layout: Layout[Any]) -> None:
    with pytest.raises(DecodeError) as info:
        layout.decode(b"\x01\x02\x03")
    assert info.value.raw == b"\x01\x02\x03"
    with pytest.raises(DecodeError):
        layout.parse_slow(b"\x01")


@pytest.mark.parametrize(("layout", "masks"), [
    # QEMU intel_iommu_internal.h (reference/vtd.md §2a, §3a), where it agrees with the spec.
    (descriptors.CONTEXT_CACHE_INV, (0xFFFC_0000_0000_F1C0, (1 << 64) - 1)),
    (descriptors.IOTLB_INV, (0xFFFF_FFFF_0000_F100, 0xF80)),
    (descriptors.IEC_INV, (0xFFFF_0000_07FF_F1E0, (1 << 64) - 1)),
    (descriptors.WAIT_DESC, (0xFFFF_F100, 0x3)),
    (descriptors.PASID_IOTLB_INV, (0xFFF0_0000_0000_F1C0, 0xF80, (1 << 64) - 1,
                                   (1 << 64) - 1)),
    (descriptors.PASID_CACHE_INV, (0xFFF0_0000_0000_F1C0, *((1 << 64) - 1,) * 3)),
    (context.CONTEXT_ENTRY, (0xFF0, 0xFFFF_FFFF_FF00_0080)),
    (context.ROOT_ENTRY, (0xFFE, (1 << 64) - 1)),
])
def test_reserved_masks(layout: Layout[Any], masks: tuple[int, ...]) -> None:
    assert layout.rsvd == masks


def test_page_group_response_masks_follow_the_spec_qemu_deviation() -> None:
    # QEMU reserves bit 5 of the low word; the spec makes it PDP (private data present).
    assert descriptors.PAGE_GROUP_RESPONSE.rsvd[:2] == (0xFFF0_0000_0000_01C0,
                                                        0xFFFF_FFFF_FFFF_F003)


ALL = Support(device_tlb=True, iec=True, scalable=True, page_requests=True, drain=True,
              dit=False, mhmv=15)


def _words(layout: Layout[Any], t: DescType, **fields: int) -> tuple[int, ...]:
    fields = {k: v for k, v in fields.items() if k in layout.record._fields}
    raw = layout.build(TYPE_LO=t & 0xF, TYPE_HI=t >> 4, **fields)
    return layout.words(raw) + (0,) * (4 - layout.size // 8)


def test_check_decodes_every_type() -> None:
    for t, layout in descriptors.LAYOUTS.items():
        fields = {"G": 1} if "G" in layout.record._fields else {}
        if t is DescType.PASID_IOTLB:
            fields = {"G": 2}
        got = check(_words(layout, t, **fields), True, ALL)
        assert not isinstance(got, int) and got[0] is t


@pytest.mark.parametrize("t", sorted(descriptors.WIDE_ONLY))
def test_wide_only_types_refused_in_128_bit_queues(t: DescType) -> None:
    words = _words(descriptors.LAYOUTS[t], t, G=3)
    assert check(words[:2], False, ALL) == IQEI_TYPE


def test_128_bit_type_with_upper_half_set_in_256_bit_queue() -> None:
    words = _words(descriptors.IOTLB_INV, DescType.IOTLB, G=1)
    assert check((*words[:3], 1), True, ALL) == IQEI_RESERVED


def test_unsupported_types_by_capability() -> None:
    none = ALL._replace(device_tlb=False, iec=False, scalable=False, page_requests=False)
    for t in (DescType.DEVICE_TLB, DescType.IEC, DescType.PASID_IOTLB, DescType.PASID_CACHE,
              DescType.PASID_DEVICE_TLB, DescType.PAGE_GROUP_RESPONSE):
        assert check(_words(descriptors.LAYOUTS[t], t, G=3), True, none) == IQEI_TYPE


def test_iec_mask_beyond_mhmv() -> None:
    assert check(_words(descriptors.IEC_INV, DescType.IEC, IM=16), True, ALL) == IQEI_RESERVED
    assert check(_words(descriptors.IEC_INV, DescType.IEC, IM=15), True, ALL)[0] is DescType.IEC  # type: ignore[index]


def test_pasid_cache_granularity_10_reserved() -> None:
    words = _words(descriptors.PASID_CACHE_INV, DescType.PASID_CACHE, G=2)
    assert check(words, True, ALL) == IQEI_RESERVED
