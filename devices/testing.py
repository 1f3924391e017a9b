"""Test doubles for device models, shipped as real code (STYLE.md 9).

``RecordingEnv`` is an ``Env`` that records every interrupt, MSI and ATC invalidation a
model sends, in order, over a ``FlatMemory``: one zero-filled block of guest-physical RAM.
Tests then read like specifications: "this write raised exactly one GERROR interrupt".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devices.model import HostPort


class FlatMemory:
    """``size`` bytes of guest RAM at ``base``; accesses outside it fail (None / False)."""

    generation = 0

    def __init__(self, base: int = 0, size: int = 1 << 20) -> None:
        self.base = base
        self.data = bytearray(size)

    def ram_ranges(self) -> list[tuple[int, int]]:
        return [(self.base, len(self.data))]

    def _span(self, gpa: int, length: int) -> slice | None:
        start = gpa - self.base
        if start < 0 or length < 0 or start + length > len(self.data):
            return None
        return slice(start, start + length)

    def read(self, gpa: int, length: int) -> bytes | None:
        span = self._span(gpa, length)
        return None if span is None else bytes(self.data[span])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        span = self._span(gpa, len(data))
        if span is None:
            return False
        self.data[span] = data
        return True

    def read_u32(self, gpa: int) -> int | None:
        raw = self.read(gpa, 4)
        return None if raw is None else int.from_bytes(raw, "little")

    def read_u64(self, gpa: int) -> int | None:
        raw = self.read(gpa, 8)
        return None if raw is None else int.from_bytes(raw, "little")

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.write(gpa, value.to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.write(gpa, value.to_bytes(8, "little"))


@dataclass
class RecordingEnv:
    """An ``Env`` that remembers what the model did to the world, in order."""

    memory: FlatMemory = field(default_factory=FlatMemory)
    irqs: list[int] = field(default_factory=list)
    """Wired interrupt vectors pulsed."""
    msis: list[tuple[int, int, int]] = field(default_factory=list)
    """(vector, address, data) of every MSI."""
    atc_invalidations: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(requester, pasid, address, size) of every ATC invalidation."""
    page_responses: list[tuple[int, int | None, int, int]] = field(default_factory=list)
    """(requester, pasid, group, response code) of every page response."""
    msi_ok: bool = True
    """What ``msi`` answers: False makes every MSI write abort (recorded all the same)."""
    atc_ok: bool = True
    """What ``atc_invalidate`` answers: False makes every ATC invalidation time out."""
    _host: Any = None

    @property
    def host(self) -> HostPort:
        """A real host IOMMU over ``memory``, made on first use (the daemon's kind)."""
        if self._host is None:
            from vmm.host import HostIOMMU  # the process layer; imported only by tests

            self._host = HostIOMMU(self.memory)
        return self._host  # type: ignore[no-any-return]

    def irq(self, vector: int) -> None:
        self.irqs.append(vector)

    def msi(self, vector: int, address: int, data: int) -> bool:
        self.msis.append((vector, address, data))
        return self.msi_ok

    def atc_invalidate(self, requester: int, pasid: int, address: int, size: int) -> bool:
        self.atc_invalidations.append((requester, pasid, address, size))
        return self.atc_ok

    def page_response(self, requester: int, pasid: int | None, group: int, code: int) -> None:
        self.page_responses.append((requester, pasid, group, code))

    def clear(self) -> None:
        """Forget what was recorded so far (memory is kept)."""
        self.irqs.clear()
        self.msis.clear()
        self.atc_invalidations.clear()
        self.page_responses.clear()
