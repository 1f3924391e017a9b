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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from devices.pagetable import Fault, Stage1Walker


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

    def msi(self, vector: int, address: int, data: int) -> bool:
        """Deliver an MSI: a 32-bit write of ``data`` to ``address``.

        Where ``address`` is guest RAM the write lands there (Linux's MSIPOLL); otherwise it
        goes to the front-end as an IRQ message with that MSI address and data.  Returns
        whether the write completed (False: it was aborted, which SMMUv3 reports as
        GERROR.MSI_*_ABT_ERR; protocol.md §1 "Interrupts" says when).
        """

    def atc_invalidate(self, requester: int, pasid: int, address: int, size: int) -> bool:
        """Tell a device to invalidate its ATC (back-end channel ATC_INVALIDATE).  Returns
        whether the message reached a channel that took it (False: the invalidation will
        never complete — SMMUv3 CERROR_ATC_INV_SYNC, VT-d ITE; protocol.md §1)."""

    def page_response(self, requester: int, pasid: int | None, group: int, code: int) -> None:
        """Answer a page request group to the device (back-end channel PAGE_RESPONSE)."""

    @property
    def host(self) -> HostPort:
        """The host IOMMU this model's translations go through."""


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
    """Where a translated input address lands: the guest-physical address (what TRANSLATE
    reports), the host-physical address the data really moves to (``None``: the session
    places ``gpa`` itself), the naturally aligned block around it with the same translation
    as the guest sees it, and the permissions granted."""

    gpa: int
    size: int
    perms: Perm
    hpa: int | None = None


Fill = Callable[[int, int], "tuple[int, int, int] | Fault | None"]
"""A context's miss handler: ``fill(iova, access)`` → ``(gpa, size, perms)`` of the naturally
aligned block around ``iova`` to install, a walker ``Fault`` to report as is, or ``None`` for
"not mapped" (a stage-2 translation fault)."""


class HostPort(Protocol):
    """The host IOMMU under the VMM (vmm.host.HostIOMMU), as a model drives it.

    A *context* is a host domain: a host-owned stage 2 (IOVA/IPA → HPA; its mappings are
    given by guest-physical address and placed by the host) plus stage-1 tables bound per
    PASID.  Models decode guest configuration and turn it into contexts, mappings, bindings
    and invalidations; the host translates and caches (the IOTLB).  ``pasid`` None is
    "no PASID".
    """

    def alloc_context(self, *, identity: bool = False,
                      fill: Callable[[int, int], tuple[int, int, int] | Fault | None] | None = None,
                      ) -> int:
        """A new context.  ``identity``: its stage 2 maps all guest RAM IPA = GPA (read,
        write, execute).  ``fill``: called on a stage-2 miss; what it returns is installed and
        kept until ``invalidate_s2`` drops it."""

    def free_context(self, ctx: int) -> None: ...

    def map(self, ctx: int, iova: int, gpa: int, size: int, perms: int) -> int:
        """Map ``size`` bytes (4 KiB multiple, aligned); 0 or a negative errno."""

    def unmap(self, ctx: int, iova: int, size: int) -> int:
        """Unmap a range; returns the bytes that were mapped in it."""

    def invalidate_s2(self, ctx: int, ipa: int = 0, size: int = 1 << 64) -> None:
        """Forget stage-2 mappings installed by ``fill`` in the range (and what was cached)."""

    def bind_stage1(self, ctx: int, pasid: int | None, walker: Stage1Walker,
                    asid: int = 0) -> None:
        """Bind a guest stage-1 table (nested): its table reads go through the context's
        stage 2.  A new bind for the same (ctx, pasid) replaces the old one."""

    def unbind_stage1(self, ctx: int, pasid: int | None) -> None: ...

    def translate(self, ctx: int, pasid: int | None, iova: int, access: int,
                  ) -> DmaTarget | Fault:
        """Translate one access through the context: IOTLB, then stage 1 (if bound for
        ``pasid``) and stage 2.  Faults come back as walker ``Fault`` values whose ``stage``
        says which stage decided."""

    def invalidate(self, ctx: int | None = None, *, pasid: Any = ..., asid: Any = ...,
                   iova: int = 0, size: int = 1 << 64, keep_global: bool = False,
                   global_any_asid: bool = False) -> None:
        """Drop cached translations (the IOTLB) matching the selectors (``...`` = any).
        ``keep_global``: global entries survive (Arm TLBI_NH_ASID; VT-d non-globals within a
        PASID); ``global_any_asid``: global entries of every ASID are hit too (TLBI_NH_VA)."""

    def alloc_pasid(self) -> int | None:
        """A free host PASID (VT-d virtual command), or None when none is left."""

    def free_pasid(self, pasid: int) -> bool: ...

    def gpa_to_hpa(self, gpa: int) -> int | None: ...


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
