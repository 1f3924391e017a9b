"""Guest memory as the fuzzer's oracles see it: every model access counted and checked.

``ObservedMemory`` sits where a model's ``Env.memory`` and the host's stage-2/stage-1 walks
reach guest RAM (``GuestSession.memory``, ``HostIOMMU.memory``, ``HostMemory.guest``).  It
forwards to the session's ``GuestMemory`` and keeps two oracles honest (DESIGN.md invariant 1):

- *bounded work*: ``accesses`` counts calls; the executor compares the count of one step with
  that step's bound.
- *no access outside guest RAM*: an access outside the regions must be answered ``None`` /
  ``False``; an exception out of guest memory, or a write reported done that does not lie
  inside RAM, is recorded in ``violation`` (the executor turns it into a failure after the
  step, so a model that swallows exceptions cannot hide it).

Model writes also feed the coverage map: the size and first byte of a record-sized write is an
event or status type the model produced.
"""

from __future__ import annotations

from typing import Any

from protocols.messages import RegionSpec
from vmm.fuzz.oracles import WorkExceeded
from vmm.memory import GuestMemory


class ObservedMemory:
    """A ``devices.model.MemoryPort`` over ``raw`` that counts and checks every access."""

    __slots__ = ("raw", "accesses", "limit", "violation", "features")

    def __init__(self, raw: GuestMemory) -> None:
        self.raw = raw
        self.accesses = 0
        self.limit = 1 << 62
        """Accesses allowed in the current step; one more raises ``WorkExceeded``."""
        self.violation: str | None = None
        self.features: set[int] | None = None
        """Where write features go (``None``: not collected)."""

    # -- what the host reads of the table -------------------------------------------------

    @property
    def generation(self) -> int:
        return self.raw.generation

    def ram_ranges(self) -> list[tuple[int, int]]:
        return self.raw.ram_ranges()

    def contains(self, gpa: int, length: int) -> bool:
        self.accesses += 1
        if self.accesses > self.limit:
            raise WorkExceeded
        try:
            return self.raw.contains(gpa, length)
        except Exception as exc:
            self._violate("contains", gpa, length, exc)
            return False

    # -- the memory table (the session's requests, not model accesses) ------------------------

    def set_table(self, entries: list[tuple[RegionSpec, int]]) -> None:
        self.raw.set_table(entries)

    def add(self, spec: RegionSpec, fd: int) -> None:
        self.raw.add(spec, fd)

    def remove(self, gpa: int, size: int) -> None:
        self.raw.remove(gpa, size)

    def clear(self) -> None:
        self.raw.clear()

    # -- accesses ---------------------------------------------------------------------------

    def _violate(self, what: str, gpa: object, length: object, exc: BaseException) -> None:
        if self.violation is None:
            self.violation = (f"guest-memory {what}({gpa!r}, {length!r}) raised "
                              f"{type(exc).__name__}: {exc}")

    def _wrote(self, gpa: int, length: int) -> None:
        if not self.raw.contains(gpa, length) and self.violation is None:
            self.violation = f"write of {length} bytes at {gpa:#x} reported done outside RAM"
        features = self.features
        if features is not None:
            features.add(hash(("w", length)))

    def _step(self) -> None:
        """Count one access against the step's work bound."""
        self.accesses += 1
        if self.accesses > self.limit:
            raise WorkExceeded

    def _read(self, op: str, gpa: int, length: int, *args: int) -> Any:
        self._step()
        try:
            return getattr(self.raw, op)(gpa, *args)
        except Exception as exc:
            self._violate(op, gpa, length, exc)
            return None

    def _write(self, op: str, gpa: int, length: int, arg: Any) -> bool:
        self._step()
        try:
            done: bool = getattr(self.raw, op)(gpa, arg)
        except Exception as exc:
            self._violate(op, gpa, length, exc)
            return False
        if done:
            self._wrote(gpa, length)
        return done

    def read(self, gpa: int, length: int) -> bytes | None:
        data: bytes | None = self._read("read", gpa, length, length)
        return data

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        done = self._write("write", gpa, len(data), data)
        features = self.features
        if done and features is not None and len(data) >= 16:
            features.add(hash(("record", len(data), data[0])))
        return done

    def read_u32(self, gpa: int) -> int | None:
        value: int | None = self._read("read_u32", gpa, 4)
        return value

    def read_u64(self, gpa: int) -> int | None:
        value: int | None = self._read("read_u64", gpa, 8)
        return value

    def write_u32(self, gpa: int, value: int) -> bool:
        return self._write("write_u32", gpa, 4, value)

    def write_u64(self, gpa: int, value: int) -> bool:
        return self._write("write_u64", gpa, 8, value)


class ScratchMemory:
    """Guest memory whose writes go to a private copy of the pages they touch: the view of an
    oracle's cold walk, which may set A/D bits or record a fault like any walk, but must not
    change what the guest sees."""

    __slots__ = ("raw", "pages")

    def __init__(self, raw: GuestMemory) -> None:
        self.raw = raw
        self.pages: dict[int, bytearray] = {}

    @property
    def generation(self) -> int:
        return self.raw.generation

    def ram_ranges(self) -> list[tuple[int, int]]:
        return self.raw.ram_ranges()

    def contains(self, gpa: int, length: int) -> bool:
        return self.raw.contains(gpa, length)

    def read(self, gpa: int, length: int) -> bytes | None:
        data = self.raw.read(gpa, length)
        if data is None or not self.pages:
            return data
        out = bytearray(data)
        for page in range(gpa >> 12, (gpa + length - 1 >> 12) + 1 if length > 0 else 0):
            copy = self.pages.get(page)
            if copy is None:
                continue
            lo, hi = max(gpa, page << 12), min(gpa + length, (page + 1) << 12)
            out[lo - gpa : hi - gpa] = copy[lo - (page << 12) : hi - (page << 12)]
        return bytes(out)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        length = len(data)
        if not self.raw.contains(gpa, length):
            return False
        view = memoryview(data)
        for page in range(gpa >> 12, (gpa + length - 1 >> 12) + 1 if length > 0 else 0):
            copy = self.pages.get(page)
            if copy is None:
                base = self.raw.read(page << 12, 4096)
                copy = self.pages[page] = bytearray(base if base is not None else bytes(4096))
            lo, hi = max(gpa, page << 12), min(gpa + length, (page + 1) << 12)
            copy[lo - (page << 12) : hi - (page << 12)] = view[lo - gpa : hi - gpa]
        return True

    def read_u32(self, gpa: int) -> int | None:
        data = self.read(gpa, 4)
        return None if data is None else int.from_bytes(data, "little")

    def read_u64(self, gpa: int) -> int | None:
        data = self.read(gpa, 8)
        return None if data is None else int.from_bytes(data, "little")

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.write(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.write(gpa, (value & (1 << 64) - 1).to_bytes(8, "little"))

    # The table never changes under a cold walk; these exist for ``SessionMemory``.
    def set_table(self, entries: list[tuple[RegionSpec, int]]) -> None:
        raise RuntimeError("scratch guest memory: no table change")

    def add(self, spec: RegionSpec, fd: int) -> None:
        raise RuntimeError("scratch guest memory: no table change")

    def remove(self, gpa: int, size: int) -> None:
        raise RuntimeError("scratch guest memory: no table change")

    def clear(self) -> None:
        raise RuntimeError("scratch guest memory: no table change")
