"""Circular queues in memory: geometry and index arithmetic (Arm IHI 0070 §3.5).

A queue has 2^LOG2SIZE entries (the *_BASE register, capped by the IDR1 maximum when it is
written); PROD and CONS hold the index in bits [LOG2SIZE-1:0] and the wrap bit at
[LOG2SIZE].  Empty: index and wrap equal; full: index equal, wrap different.  Incrementing
the (index, wrap) pair is one addition modulo 2^(LOG2SIZE+1) (Cloud Hypervisor's tests:
LOG2SIZE 2, next(0b011) = 0b100, next(0b111) = 0b000).  The base is aligned by the SMMU to
the larger of the queue size and 32 bytes (§6.3.26 CMDQ_BASE.ADDR: low bits are ignored).
Flag bits above the wrap bit (CMDQ_CONS.ERR, *_PROD.OVFLG, *_CONS.OVACKFLG) are not part
of the pointer: ``ptr`` masks them off.
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUE_ALIGN_MIN = 32


@dataclass(frozen=True, slots=True)
class Queue:
    base: int
    """Byte address of entry 0, aligned as the SMMU aligns it."""
    log2size: int
    entry_size: int

    @classmethod
    def from_base(cls, addr: int, log2size: int, entry_size: int) -> Queue:
        """From *_BASE.ADDR (as a byte address) and LOG2SIZE."""
        span = max(entry_size << log2size, QUEUE_ALIGN_MIN)
        return cls(addr & ~(span - 1), log2size, entry_size)

    @property
    def mask(self) -> int:
        """The pointer bits: index plus wrap."""
        return (2 << self.log2size) - 1

    @property
    def entries(self) -> int:
        return 1 << self.log2size

    def ptr(self, register: int) -> int:
        return register & self.mask

    def next(self, ptr: int) -> int:
        return (ptr + 1) & self.mask

    def empty(self, prod: int, cons: int) -> bool:
        return (prod ^ cons) & self.mask == 0

    def full(self, prod: int, cons: int) -> bool:
        return (prod ^ cons) & self.mask == 1 << self.log2size

    def used(self, prod: int, cons: int) -> int:
        """Entries between CONS and PROD (pointers of an inconsistent pair count modulo
        twice the size, so the result is at most 2^(LOG2SIZE+1) - 1)."""
        return (prod - cons) & self.mask

    def address(self, ptr: int) -> int:
        return self.base + (ptr & (self.entries - 1)) * self.entry_size
