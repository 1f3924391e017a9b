"""The contract between an IOMMU model and the process around it.

A model is sans-IO (DESIGN.md): it is driven by plain calls (MMIO accesses, reset, DMA
translation requests) and reaches its surroundings only through an ``Env``: guest memory,
interrupt lines, MSI writes and messages to the device on the back-end channel.  The daemon,
replay and the fuzzer each provide an Env; the model cannot tell them apart.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class MemoryPort(Protocol):
    """Guest-physical memory as a model sees it (vmm.memory.GuestMemory satisfies it)."""

    def read(self, gpa: int, length: int) -> bytes | None: ...
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool: ...
    def read_u32(self, gpa: int) -> int | None: ...
    def read_u64(self, gpa: int) -> int | None: ...
    def write_u32(self, gpa: int, value: int) -> bool: ...
    def write_u64(self, gpa: int, value: int) -> bool: ...


class Env(Protocol):
    """What a model may use of the world around it."""

    @property
    def memory(self) -> MemoryPort: ...

    def irq(self, vector: int) -> None:
        """Pulse the wired interrupt ``vector`` (an index into the model's ``irqs``)."""

    def msi(self, vector: int, address: int, data: int) -> None:
        """Deliver an MSI: a 32-bit write of ``data`` to ``address``.

        Where ``address`` is guest RAM the write lands there (Linux's MSIPOLL); otherwise it
        goes to the front-end as an IRQ message with that MSI address and data.
        """

    def atc_invalidate(self, requester: int, pasid: int, address: int, size: int) -> None:
        """Tell a device to invalidate its ATC (back-end channel ATC_INVALIDATE)."""


class FaultKind(enum.IntEnum):
    """protocol.md, "DMA and TRANSLATE": the classification of a DMA fault record."""

    TRANSLATION = 1
    PERMISSION = 2
    ACCESS_FLAG = 3
    ADDRESS_SIZE = 4
    BAD_CONFIG = 5
    EXTERNAL_ABORT = 6
    BLOCKED = 7
    NO_MEMORY = 8


class Perm(enum.IntFlag):
    R = 1
    W = 2
    X = 4


@dataclass(frozen=True, slots=True)
class DmaFault:
    """The fault record of a DMA or TRANSLATE reply (protocol.md)."""

    kind: FaultKind
    code: int
    address: int
    stage: int


@dataclass(frozen=True, slots=True)
class DmaTarget:
    """Where a translated input address lands: a guest-physical address, the naturally
    aligned block around it with the same translation, and the permissions granted."""

    gpa: int
    size: int
    perms: Perm


@dataclass(frozen=True, slots=True)
class DmaRequest:
    """One page of a device transaction, as a model translates it."""

    requester: int
    pasid: int | None
    iova: int
    write: bool
    privileged: bool
    execute: bool
    record: bool = True
    """False for TRANSLATE: the fault is answered but never recorded."""


@dataclass(frozen=True)
class Option:
    """One device option of ``--device MODEL,name=value``."""

    name: str
    kind: str  # "int", "bool", "str", "range"
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    parse: Callable[[str], Any] | None = None


class IommuModel(ABC):
    """Base of every IOMMU model the daemon can hold."""

    model: ClassVar[str]
    irq_names: ClassVar[tuple[str, ...]]
    options: ClassVar[tuple[Option, ...]]
    default_base: ClassVar[int]
    mmio_size: ClassVar[int]

    def __init__(self, config: dict[str, Any], env: Env) -> None:
        self.config = config
        self.env = env

    @property
    def requester_ranges(self) -> list[tuple[int, int]]:
        """Inclusive requester ranges this model translates for (GET_CONFIG ``requesters``)."""
        lo, hi = self.config.get("requesters", (0, 0xFFFF))
        return [(lo, hi)]

    @abstractmethod
    def mmio_read(self, offset: int, size: int) -> int:
        """A guest read; offset and size already checked against the window by the caller."""

    @abstractmethod
    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """A guest write; offset, size and value already checked by the caller."""

    @abstractmethod
    def reset(self) -> None:
        """Return to the reset state (protocol RESET)."""

    @abstractmethod
    def translate(self, req: DmaRequest) -> DmaTarget | DmaFault:
        """Translate one access; faults are data, recorded as the architecture says."""
