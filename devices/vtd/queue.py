"""The invalidation queue: fetching descriptors from IQH to IQT and reporting invalid ones.

VT-d rev 5.10 §6.5.2 (queued invalidation: IQA base/DW/QS, IQH/IQT, "hardware fetches
descriptors from the head until head = tail"), §6.5.2.10-§6.5.2.11 (invalid descriptors,
FSTS.IQE, IQERCD.IQEI; the head stays at the descriptor that failed and fetching stops until
software clears IQE), §11.4.9.x (IQA_REG, IQH_REG, IQT_REG, IQERCD_REG).  Digest:
reference/vtd.md §2.

Work per register access is bounded: at most ``BUDGET`` descriptors run per call; what is
left runs at the next register access (the queue is the hardware's to drain in its own time;
a driver polling a wait descriptor's status also reads FSTS for IQE, as Linux does).

The checks on the queue itself, in the order made before each fetch:
1. IQA.DW = 1 while the unit reports neither SMTS nor ADMS, or DW = 0 while the active root
   table is in scalable mode (TTM = 01): IQEI 5.
2. An active root table with a reserved TTM (10, or 11 without ADMS): IQEI 7.
3. DW = 1 and IQT bit 4 set (a 256-bit queue's tail must be 32-byte aligned): IQEI 6.
4. IQT at or beyond the queue's end: IQEI 1.
Then per descriptor: a fetch from outside guest memory is IQEI 2; an undefined or unsupported
type IQEI 3; reserved bits or values IQEI 4 (descriptors.check).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from devices.model import MemoryPort

from . import descriptors
from .descriptors import DescType, Support
from .regs import (
    IQA,
    IQEI_FETCH,
    IQEI_TAIL,
    IQEI_TAIL_ALIGN,
    IQEI_TTM,
    IQEI_WIDTH,
    IQT,
    RTADDR,
    TTM_ABORT_DMA,
    TTM_LEGACY,
    TTM_SCALABLE,
)

BUDGET = 1024
"""Descriptors executed per register access at most."""

_NARROW = struct.Struct("<2Q")
_WIDE = struct.Struct("<4Q")

Handler = Callable[[DescType, Any], bool]
"""Executes one descriptor; True stops fetching after it (an invalidation time-out)."""


def queue_bytes(iqa: int) -> int:
    return 4096 << IQA.QS.get(iqa)


class InvalidationQueue:
    """Fetch, check and hand over descriptors; the device executes them."""

    def __init__(self, support: Support, smts: bool, adms: bool) -> None:
        self.support = support
        self.smts = smts
        self.adms = adms
        self.pending = False
        """Descriptors are left between IQH and IQT (the budget ran out)."""

    def queue_error(self, iqa: int, iqt: int, rtaddr: int) -> int | None:
        """The IQEI of a queue that cannot be fetched from, or None."""
        wide = IQA.DW.get(iqa)
        ttm = RTADDR.TTM.get(rtaddr)
        if (wide and not (self.smts or self.adms)) or (not wide and ttm == TTM_SCALABLE):
            return IQEI_WIDTH
        if ttm not in (TTM_LEGACY, TTM_SCALABLE) and not (ttm == TTM_ABORT_DMA and self.adms):
            return IQEI_TTM
        tail = iqt & IQT.QT.mask
        if wide and tail & 0x10:
            return IQEI_TAIL_ALIGN
        if tail >= queue_bytes(iqa):
            return IQEI_TAIL
        return None

    def run(self, mem: MemoryPort, iqa: int, head: int, iqt: int, rtaddr: int,
            execute: Handler) -> tuple[int, int | None]:
        """Process from ``head`` towards IQT; returns (new head, IQEI of a failure or None)."""
        self.pending = False
        err = self.queue_error(iqa, iqt, rtaddr)
        if err is not None:
            return head, err
        wide = bool(IQA.DW.get(iqa))
        step = 32 if wide else 16
        codec = _WIDE if wide else _NARROW
        base = IQA.IQA.get(iqa) << 12
        size = queue_bytes(iqa)
        tail = iqt & IQT.QT.mask
        head %= size
        for _ in range(BUDGET):
            if head == tail:
                return head, None
            raw = mem.read(base + head, step)
            if raw is None:
                return head, IQEI_FETCH
            checked = descriptors.check(codec.unpack(raw), wide, self.support)
            if isinstance(checked, int):
                return head, checked
            stop = execute(*checked)
            head = (head + step) % size
            if stop:
                return head, None
        self.pending = head != tail
        return head, None
