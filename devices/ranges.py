"""Invalidation ranges of the architectures' commands, as (start, size) pairs.

Shared by the models (which decode commands) and the IOTLB (which drops entries).  Misuse
(fields wider than their encodings) raises ValueError: the caller's decode bug, never a
guest's value, because decoders mask fields to their widths first.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_ADDRESS_SPACE = 1 << 64


def arm_tlbi_range(address: int, *, tg: int, scale: int, num: int, ttl: int = 0) -> tuple[int, int]:
    """The input-address range of an SMMUv3 TLBI_NH_VA / _VAA / TLBI_S2_IPA command.

    IHI 0070 §4.4 (smmuv3.md §3).  ``address`` is the byte address (the command's Addr field
    already shifted into place).  TG=0 is the single-address form: it hits every entry covering
    ``address``, which for blocks of 4 KiB or more is the same as hitting its 4 KiB page.
    TG≠0: ``(NUM+1) · 2^SCALE`` granules of ``2^(2·TG+10)`` bytes from ``address`` aligned down
    to the granule.  TTL is a level hint that only permits skipping entries of other levels;
    ignoring it over-invalidates, which is allowed.
    """
    if not (0 <= tg <= 3 and 0 <= scale <= 31 and 0 <= num <= 31 and 0 <= ttl <= 3):
        raise ValueError(
            f"TLBI range fields out of range: tg={tg} scale={scale} num={num} ttl={ttl}"
        )
    if address < 0:
        raise ValueError("address must not be negative")
    if tg == 0:
        return address & ~(PAGE_SIZE - 1), PAGE_SIZE
    granule_shift = 2 * tg + 10
    start = address & ~((1 << granule_shift) - 1)
    return start, ((num + 1) << scale) << granule_shift


def vtd_iotlb_range(address: int, am: int) -> tuple[int, int]:
    """The range of a VT-d page-selective (PASID-based) IOTLB invalidation.

    VT-d §6.5.2.3 / §6.5.2.4 (vtd.md §2a): 2^AM pages at ADDR aligned down to 2^AM pages (the
    spec makes alignment software's duty; aligning down matches QEMU).  IH is not a range
    field: pass it as ``leaf_only``.  AM ≤ MAMV is the model's check, not this function's.
    """
    if not 0 <= am <= 63:
        raise ValueError(f"AM must fit in 6 bits, not {am}")
    if address < 0:
        raise ValueError("address must not be negative")
    size = PAGE_SIZE << am
    return address & ~(size - 1), size


def vtd_devtlb_range(address: int, s: int) -> tuple[int, int]:
    """The range of a VT-d device-TLB invalidation (and the PCIe ATS invalidate request).

    vtd.md §2a: S=0 ⇒ the 4 KiB page at ADDR; S=1 ⇒ 2^(k+1) pages, k = number of consecutive
    1 bits of ADDR from bit 12 up, base = ADDR with those bits cleared.  All ones in ADDR[63:12]
    (or in [62:12], PCIe's "entire range") covers the whole 64-bit space.
    """
    if s not in (0, 1):
        raise ValueError(f"S must be 0 or 1, not {s}")
    if address < 0:
        raise ValueError("address must not be negative")
    if not s:
        return address & ~(PAGE_SIZE - 1), PAGE_SIZE
    pfn = (address >> PAGE_SHIFT) & ((1 << (64 - PAGE_SHIFT)) - 1)
    ones = ((pfn + 1) & -(pfn + 1)).bit_length() - 1  # trailing 1s of pfn = trailing 0s of pfn+1
    size = PAGE_SIZE << (ones + 1)
    if size >= _ADDRESS_SPACE:
        return 0, _ADDRESS_SPACE
    return address & ~(size - 1) & (_ADDRESS_SPACE - 1), size
