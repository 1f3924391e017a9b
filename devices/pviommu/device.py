"""The Xen PV-IOMMU (RFC v7 interface, reference/protocols.md §7) as an IOMMU model.

The guest drives it with PV_IOMMU_OP (protocol.md) instead of MMIO: ``pv_op(subop, body)``
decodes one sub-op structure (protocols/pviommu.py), runs it against host contexts and
answers ``(status, structure as updated)``.  DMA of its requesters is translated through the
context each requester is attached to.  The project's exact reading of every rule is in
protocols/protocol.md, "PV_IOMMU_OP structures"; in short:

* Contexts are host contexts (``env.host``): context 0 is the host's default context
  (identity over guest RAM, or blocking everything with ``no-dma=on``, Xen's
  ``dom0-iommu=no-dma``); ``init`` grants up to ``max-contexts`` more, numbered 1..N, each an
  empty host context (or an identity one with ``IOMMU_ALLOC_identity``).  The default context
  can be neither changed (map/unmap: ``-EINVAL``) nor freed (``-EINVAL``).
* Devices are the requesters of ``rids`` on this model's segment, named by
  ``{seg, bus, devfn}``; all start in context 0.  A device with phantom functions
  (``phantom=RID/STRIDE``) moves with them, all or nothing (XSA-449).
* map/unmap run page by page in order and stop at the first failure; ``mapped``/``unmapped``
  report progress whatever the status.  A batch above ``max-pages`` is ``-E2BIG`` before any
  work.  Page-table memory is Xen's arena: ``512 << min(arena_order, 12)`` leaf entries across
  all contexts, ``-ENOMEM`` beyond.
* Where Xen's header and code disagree the code wins (protocol.md): ``-EADDRINUSE`` for a dfn
  already mapped, ``-ENOENT`` for a gfn outside guest RAM and for a device that does not exist.

State (STYLE.md 6): ``UNINITIALIZED --init--> INITIALIZED --RESET--> UNINITIALIZED``.
"""

from __future__ import annotations

import enum
import errno as E
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

from devices.model import (
    DmaFault,
    DmaRequest,
    DmaTarget,
    Env,
    FaultKind,
    IommuModel,
    Option,
)
from devices.pagetable import ACCESS_R, ACCESS_W, ACCESS_X, Fault
from protocols import pviommu as pv
from protocols.pviommu import Cmd

log = logging.getLogger(__name__)

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
MAX_IOVA_BITS = 48
MAX_IOVA_ADDR = (1 << MAX_IOVA_BITS) - 1
"""``max_iova_addr``: a 48-bit device address space (4-level tables), as Xen reports for a
48-bit-AGAW VT-d or a 48-bit SMMU stage 2."""
LEAVES_PER_ARENA_PAGE = 512
ARENA_ORDER_MAX = 12
MAX_RID = 0xFFFF
NOT_SUPPORTED = frozenset({Cmd.alloc_nested, Cmd.flush_nested, Cmd.attach_pasid,
                           Cmd.detach_pasid})
"""v7 answers these -EOPNOTSUPP (their capability bits are clear)."""


class State(enum.Enum):
    UNINITIALIZED = "uninitialized"
    INITIALIZED = "initialized"


class PvHost(Protocol):
    """What the PV-IOMMU uses of ``vmm.host.HostIOMMU`` (beyond ``devices.model.HostPort``)."""

    @property
    def caps(self) -> Any: ...
    def alloc_context(self, *, identity: bool = False, fill: Any = None) -> int: ...
    def free_context(self, ctx: int) -> None: ...
    def set_no_dma(self, blocked: bool) -> None: ...
    def attach(self, segment: int, requester: int, ctx: int) -> int: ...
    def device_context(self, segment: int, requester: int) -> int | None: ...
    def map_pages(self, ctx: int, dfn: int, gfn: int, count: int, perms: int,
                  ) -> tuple[int, int]: ...
    def unmap_pages(self, ctx: int, dfn: int, count: int) -> tuple[int, int]: ...
    def lookup(self, ctx: int, iova: int) -> tuple[int, int] | int: ...
    def gpa_to_hpa(self, gpa: int) -> int | None: ...
    def translate(self, ctx: int, pasid: int | None, iova: int, access: int,
                  ) -> DmaTarget | Fault: ...


def parse_phantoms(text: str) -> tuple[tuple[int, int], ...]:
    """``"RID/STRIDE[:RID/STRIDE...]"`` → ((rid, stride), ...).  A device with phantom
    functions (PCIe Extended Tags via function numbers) issues requests as function
    ``f + k·stride`` of its slot for k ≥ 1; stride is 1, 2 or 4."""
    out: list[tuple[int, int]] = []
    if not text:
        return ()
    for item in text.split(":"):
        rid_text, sep, stride_text = item.partition("/")
        try:
            rid = int(rid_text, 0)
            stride = int(stride_text, 0) if sep else 0
        except ValueError:
            raise ValueError(f"phantom '{item}': expected RID/STRIDE, e.g. 0x100/2") from None
        if not 0 <= rid <= MAX_RID or stride not in (1, 2, 4):
            raise ValueError(f"phantom '{item}': RID 0-0xffff and STRIDE 1, 2 or 4")
        if (rid & 7) + stride > 7:
            raise ValueError(f"phantom '{item}': function {rid & 7} has no phantom function "
                             f"at stride {stride} within its slot")
        out.append((rid, stride))
    return tuple(out)


def phantom_functions(rid: int, stride: int) -> list[int]:
    """The requester IDs a device's phantom functions use (same slot, function + k·stride)."""
    slot, fn = rid & ~7, rid & 7
    return [slot | f for f in range(fn + stride, 8, stride)]


def _checked_phantoms(text: str) -> str:
    parse_phantoms(text)  # ValueError names the mistake
    return text


def _int_within(low: int, high: int) -> Callable[[str], int]:
    """An option parser for an integer in ``low``-``high``."""
    def parse(text: str) -> int:
        value = int(text, 0)
        if not low <= value <= high:
            raise ValueError(f"{value} is not within {low}-{high}")
        return value
    return parse


class PvIommu(IommuModel):
    """Xen's PV-IOMMU: guest-managed IOMMU contexts over the host IOMMU."""

    model: ClassVar[str] = "pv-iommu"
    irq_names: ClassVar[tuple[str, ...]] = ()
    default_base: ClassVar[int] = 0
    mmio_size: ClassVar[int] = 0
    options: ClassVar[tuple[Option, ...]] = (
        Option("id", "int", 0, "device id in GET_CONFIG"),
        Option("rids", "range", (0, MAX_RID), "requester IDs (bus<<8|devfn) of its devices"),
        Option("no-dma", "bool", False,
               "the default context blocks all DMA (Xen's dom0-iommu=no-dma)"),
        Option("max-contexts", "int", 128,
               "contexts init may grant besides the default one (capabilities max_ctx_no)",
               parse=_int_within(0, 0xFFFF)),
        Option("max-pages", "int", 256,
               "largest map/unmap batch in pages (bounded by the host's max_pages_per_op)",
               parse=_int_within(1, 1 << 16)),
        Option("phantom", "str", "",
               "devices with phantom functions: RID/STRIDE[:RID/STRIDE...]",
               parse=_checked_phantoms),
    )

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Rules across options (ValueError): phantom functions lie inside ``rids``."""
        lo, hi = options.get("rids") or (0, MAX_RID)
        for rid, stride in parse_phantoms(str(options.get("phantom", ""))):
            for f in [rid, *phantom_functions(rid, stride)]:
                if not lo <= f <= hi:
                    raise ValueError(f"phantom function {f:#x} of device {rid:#x} is outside "
                                     f"rids {lo:#x}-{hi:#x}")

    def __init__(self, config: dict[str, Any], env: Env) -> None:
        super().__init__(config, env)
        lo, hi = config.get("requesters") or config.get("rids") or (0, MAX_RID)
        self.rids = (int(lo), int(hi))
        self.segment = int(getattr(env, "segment", config.get("id", 0)))
        self.no_dma = bool(config.get("no-dma", False))
        self.max_contexts = int(config.get("max-contexts", 128))
        self.host = cast(PvHost, env.host)
        self.max_pages = min(int(config.get("max-pages", 256)),
                             int(self.host.caps.max_pages_per_op))
        self.phantoms: dict[int, list[int]] = {}
        self.phantom_of: dict[int, int] = {}
        for rid, stride in parse_phantoms(str(config.get("phantom", ""))):
            functions = phantom_functions(rid, stride)
            self.phantoms[rid] = functions
            for f in functions:
                self.phantom_of[f] = rid
        self.state = State.UNINITIALIZED
        self.granted = 0
        self.arena_leaves = 0
        self.contexts: dict[int, int] = {}
        """ctx_no → host context."""
        self.identity: set[int] = set()
        """ctx_no of the identity contexts (IOMMU_ALLOC_identity)."""
        self.identity_hosts: set[int] = set()
        self.mapped: dict[int, int] = {}
        """ctx_no → 4 KiB leaves in use (the arena account)."""
        self.mapped_total = 0
        self.host.set_no_dma(self.no_dma)
        self._handlers: dict[Cmd, Callable[[bytes], tuple[int, bytes]]] = {
            Cmd.noop: self._noop,
            Cmd.query_capabilities: self._query_capabilities,
            Cmd.init: self._init,
            Cmd.alloc_context: self._alloc_context,
            Cmd.free_context: self._free_context,
            Cmd.reattach_device: self._reattach_device,
            Cmd.map_pages: self._map_pages,
            Cmd.unmap_pages: self._unmap_pages,
            Cmd.remote_cmd: self._remote_cmd,
            Cmd.lookup_page: self._lookup_page,
        }

    # -- state -----------------------------------------------------------------------------

    def _transition(self, new: State) -> None:
        if new is not self.state:
            log.debug("pv-iommu %s → %s", self.state.value, new.value)
            self.state = new

    # -- IommuModel --------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        return 0  # no window: the connection refuses every MMIO access before this

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        return None

    def reset(self) -> None:
        """Back to before ``init``: only the default context, every device in it."""
        for ctx_no in sorted(self.contexts):
            self.host.free_context(self.contexts[ctx_no])
        self.contexts.clear()
        self.identity.clear()
        self.identity_hosts.clear()
        self.mapped.clear()
        self.mapped_total = 0
        self.granted = 0
        self.arena_leaves = 0
        self.host.set_no_dma(self.no_dma)
        self._transition(State.UNINITIALIZED)

    def translate(self, req: DmaRequest) -> DmaTarget | DmaFault:
        """Translate through the requester's context (context 0 when never attached)."""
        iova = req.iova
        if req.pasid is not None:
            # max_pasid 0 and no IOMMUCAP_pasid: requests with a PASID have no context.
            return DmaFault(FaultKind.BLOCKED, 0, iova, 0)
        host = self.host
        ctx = host.device_context(self.segment, req.requester) or 0
        if ctx == 0:
            if self.no_dma:
                return DmaFault(FaultKind.BLOCKED, 0, iova, 0)
            if host.gpa_to_hpa(iova & ~(PAGE - 1)) is None:
                return DmaFault(FaultKind.TRANSLATION, 0, iova, 2)  # identity covers RAM only
        elif ctx in self.identity_hosts and host.gpa_to_hpa(iova & ~(PAGE - 1)) is None:
            return DmaFault(FaultKind.TRANSLATION, 0, iova, 2)
        access = (ACCESS_W if req.write else ACCESS_R) | (ACCESS_X if req.execute else 0)
        # Xen's mappings carry no execute right: an execute request on a context mapping is
        # a permission fault (kind 2); only the identity default context grants everything.
        result = host.translate(ctx, None, iova, access)
        if isinstance(result, Fault):
            if result.kind == FaultKind.BLOCKED:
                return DmaFault(FaultKind.BLOCKED, 0, iova, 0)
            return DmaFault(result.kind, 0, iova, 2)
        return result

    # -- PV_IOMMU_OP -----------------------------------------------------------------------

    def pv_op(self, subop: int, body: bytes) -> tuple[int, bytes]:
        """One PV_IOMMU_OP: (status, the structure as updated)."""
        try:
            cmd = Cmd(subop)
        except ValueError:
            return -E.EOPNOTSUPP, body
        if cmd in NOT_SUPPORTED:
            return -E.EOPNOTSUPP, body
        size = pv.struct_size(cmd, len(body))
        if size is None or len(body) != size:
            return -E.EINVAL, body
        return self._handlers[cmd](body)

    def _noop(self, body: bytes) -> tuple[int, bytes]:
        return 0, body

    def _query_capabilities(self, body: bytes) -> tuple[int, bytes]:
        ext = len(body) == pv.CAPABILITIES_EXT.size
        codec = pv.CAPABILITIES_EXT if ext else pv.CAPABILITIES
        fields = codec.unpack(body)
        if fields[5] or (ext and fields[7]):  # pad0, reserved
            return -E.EINVAL, body
        flags = pv.IOMMUCAP_identity
        if not self.no_dma:
            flags |= pv.IOMMUCAP_default_identity
        values = [MAX_IOVA_ADDR, flags, PAGE, 0, self.granted, 0]
        if ext:
            values += [self.max_pages, 0]
        return 0, codec.pack(*values)

    def _init(self, body: bytes) -> tuple[int, bytes]:
        max_ctx_no, arena_order = pv.INIT.unpack(body)
        if self.state is State.INITIALIZED:
            return -E.EACCES, body
        if max_ctx_no == 0xFFFF_FFFF:
            return -E.E2BIG, body  # Xen passes max_ctx_no + 1 on
        self.granted = min(max_ctx_no, self.max_contexts)
        self.arena_leaves = LEAVES_PER_ARENA_PAGE << min(arena_order, ARENA_ORDER_MAX)
        self._transition(State.INITIALIZED)
        return 0, body

    def _alloc_context(self, body: bytes) -> tuple[int, bytes]:
        ctx_no, pad0, alloc_flags = pv.ALLOC.unpack(body)
        if pad0 or alloc_flags & ~pv.ALLOC_FLAGS:
            return -E.EINVAL, body
        free = next((n for n in range(1, self.granted + 1) if n not in self.contexts), None)
        if free is None:
            return -E.ENOSPC, body
        identity = bool(alloc_flags & pv.IOMMU_ALLOC_identity)
        host_ctx = self.host.alloc_context(identity=identity)
        if host_ctx < 0:
            return -E.ENOSPC, body  # the host IOMMU has no context left
        self.contexts[free] = host_ctx
        self.mapped[free] = 0
        if identity:
            self.identity.add(free)
            self.identity_hosts.add(host_ctx)
        return 0, pv.ALLOC.pack(free, 0, alloc_flags)

    def _free_context(self, body: bytes) -> tuple[int, bytes]:
        ctx_no, pad0, free_flags = pv.FREE.unpack(body)
        if pad0 or free_flags & ~pv.FREE_FLAGS:
            return -E.EINVAL, body
        if ctx_no == pv.IOMMU_DEFAULT_CONTEXT:
            return -E.EINVAL, body
        host_ctx = self.contexts.get(ctx_no)
        if host_ctx is None:
            return -E.ENOENT, body
        if not free_flags & pv.IOMMU_FREE_reattach_default and self._devices_in(host_ctx):
            return -E.EBUSY, body
        self.host.free_context(host_ctx)  # its devices go back to the default context
        del self.contexts[ctx_no]
        self.identity.discard(ctx_no)
        self.identity_hosts.discard(host_ctx)
        self.mapped_total -= self.mapped.pop(ctx_no, 0)
        return 0, body

    def _devices_in(self, host_ctx: int) -> bool:
        devices = getattr(self.host, "devices", None)
        if isinstance(devices, dict):
            return any(ctx == host_ctx and seg == self.segment
                       for (seg, _), ctx in devices.items())
        lo, hi = self.rids
        return any(self.host.device_context(self.segment, r) == host_ctx
                   for r in range(lo, hi + 1))

    def _reattach_device(self, body: bytes) -> tuple[int, bytes]:
        ctx_no, seg, bus, devfn, pad0, pasid = pv.REATTACH_DEVICE.unpack(body)
        if pad0:
            return -E.EINVAL, body
        rid = bus << 8 | devfn
        if seg != self.segment or not self.rids[0] <= rid <= self.rids[1] \
                or rid in self.phantom_of:
            return -E.ENOENT, body  # not a device of this domain (a phantom is no device)
        if ctx_no == pv.IOMMU_DEFAULT_CONTEXT:
            host_ctx = 0
        elif ctx_no in self.contexts:
            host_ctx = self.contexts[ctx_no]
        else:
            return -E.ENOENT, body
        if pasid:
            return -E.EINVAL, body  # no IOMMUCAP_pasid
        status = self._attach_all([rid, *self.phantoms.get(rid, ())], host_ctx)
        return status, body

    def _attach_all(self, rids: list[int], host_ctx: int) -> int:
        """Attach every function or none: on a failure the ones moved go back."""
        host = self.host
        before = [(r, host.device_context(self.segment, r) or 0) for r in rids]
        for i, r in enumerate(rids):
            status = host.attach(self.segment, r, host_ctx)
            if status < 0:
                for back, old in reversed(before[:i]):
                    host.attach(self.segment, back, old)
                return status
        return 0

    def _map_target(self, ctx_no: int) -> int | None:
        """The host context a map/unmap may edit, or None (-EINVAL: default or unknown)."""
        if ctx_no == pv.IOMMU_DEFAULT_CONTEXT:
            return None
        return self.contexts.get(ctx_no)

    def _map_pages(self, body: bytes) -> tuple[int, bytes]:
        (ctx_no, pad0, pad1, gfn, dfn, map_flags, pgsize, nr_pages,
         _mapped) = pv.MAP_PAGES.unpack(body)
        if pad0 or pad1:
            return -E.EINVAL, body
        status, done = self._map(ctx_no, gfn, dfn, map_flags, pgsize, nr_pages)
        return status, pv.MAP_PAGES.pack(ctx_no, 0, 0, gfn, dfn, map_flags, pgsize, nr_pages,
                                         done)

    def _map(self, ctx_no: int, gfn: int, dfn: int, map_flags: int, pgsize: int,
             count: int) -> tuple[int, int]:
        if count > self.max_pages:
            return -E.E2BIG, 0
        host_ctx = self._map_target(ctx_no)
        if host_ctx is None:
            return -E.EINVAL, 0
        if pgsize != PAGE or map_flags & ~pv.MAP_FLAGS:
            return -E.EINVAL, 0
        perms = int(map_flags & (pv.IOMMU_MAP_readable | pv.IOMMU_MAP_writeable))
        if not perms:
            return -E.EINVAL, 0  # a mapping the device can use neither way
        if ctx_no in self.identity:
            return (-E.EADDRNOTAVAIL if count else 0), 0
        # Stop short where a limit of this model bites first; the host reports its own.
        limit, limit_status = count, 0
        room = max(0, (MAX_IOVA_ADDR >> PAGE_SHIFT) + 1 - dfn)
        if room < limit:
            limit, limit_status = room, -E.EINVAL
        arena = self.arena_leaves - self.mapped_total
        if arena < limit:
            limit, limit_status = arena, -E.ENOMEM
        ram = self._ram_run(gfn, limit)
        if ram < limit:
            limit, limit_status = ram, -E.ENOENT
        done, status = self.host.map_pages(host_ctx, dfn, gfn, limit, perms) if limit \
            else (0, 0)
        self.mapped[ctx_no] += done
        self.mapped_total += done
        if status == 0 and done < count:
            status = limit_status
        return status, done

    def _ram_run(self, gfn: int, count: int) -> int:
        """How many pages from ``gfn`` on are guest RAM (up to ``count``)."""
        if count <= 0:
            return 0
        gpa = gfn << PAGE_SHIFT
        host = self.host
        if gpa >> 64 == 0 and host.gpa_to_hpa(gpa) is not None:
            end = gpa + (count << PAGE_SHIFT)
            contiguous = getattr(getattr(host, "placement", None), "contiguous", None)
            if end <= 1 << 64 and contiguous is not None and contiguous(gpa, end - gpa):
                return count
        for i in range(count):
            page = (gfn + i) << PAGE_SHIFT
            if page >> 64 or host.gpa_to_hpa(page) is None:
                return i
        return count

    def _unmap_pages(self, body: bytes) -> tuple[int, bytes]:
        (ctx_no, pad0, pad1, dfn, pgsize, nr_pages, _unmapped,
         pad2) = pv.UNMAP_PAGES.unpack(body)
        if pad0 or pad1 or pad2:
            return -E.EINVAL, body
        status, done = self._unmap(ctx_no, dfn, pgsize, nr_pages)
        return status, pv.UNMAP_PAGES.pack(ctx_no, 0, 0, dfn, pgsize, nr_pages, done, 0)

    def _unmap(self, ctx_no: int, dfn: int, pgsize: int, count: int) -> tuple[int, int]:
        if count > self.max_pages:
            return -E.E2BIG, 0
        host_ctx = self._map_target(ctx_no)
        if host_ctx is None:
            return -E.EINVAL, 0
        if pgsize != PAGE:
            return -E.EINVAL, 0
        if ctx_no in self.identity:
            return (-E.EADDRNOTAVAIL if count else 0), 0
        room = max(0, (MAX_IOVA_ADDR >> PAGE_SHIFT) + 1 - dfn)
        limit = min(count, room)  # nothing is mapped beyond max_iova_addr
        done, status = self.host.unmap_pages(host_ctx, dfn, limit) if limit else (0, 0)
        self.mapped[ctx_no] -= done
        self.mapped_total -= done
        if status == 0 and done < count:
            status = -E.ENOENT
        return status, done

    def _lookup_page(self, body: bytes) -> tuple[int, bytes]:
        ctx_no, pad0, pad1, dfn, _gfn = pv.LOOKUP_PAGE.unpack(body)
        if pad0 or pad1:
            return -E.EINVAL, body
        iova = dfn << PAGE_SHIFT
        if iova >> 64:
            return -E.ENOENT, body
        if ctx_no == pv.IOMMU_DEFAULT_CONTEXT or ctx_no in self.identity:
            if (ctx_no == 0 and self.no_dma) or self.host.gpa_to_hpa(iova) is None:
                return -E.ENOENT, body  # identity covers guest RAM only
            return 0, pv.LOOKUP_PAGE.pack(ctx_no, 0, 0, dfn, dfn)
        host_ctx = self.contexts.get(ctx_no)
        if host_ctx is None:
            return -E.EINVAL, body
        found = self.host.lookup(host_ctx, iova)
        if isinstance(found, int):
            return -E.ENOENT, body
        return 0, pv.LOOKUP_PAGE.pack(ctx_no, 0, 0, dfn, found[0] >> PAGE_SHIFT)

    def _remote_cmd(self, body: bytes) -> tuple[int, bytes]:
        """Run a sub-op on a domain's behalf; its structure is read from and written back
        to guest memory at ``arg``.  The guest is the hardware domain (domain 0)."""
        domid, subop, pad0, arg = pv.REMOTE_CMD.unpack(body)
        if pad0:
            return -E.EINVAL, body
        if domid not in (0, pv.DOMID_SELF):
            return -E.ENOENT, body  # no such domain
        if subop == Cmd.remote_cmd:
            return -E.EINVAL, body  # no nested remote_cmd
        try:
            cmd = Cmd(subop)
        except ValueError:
            return -E.EOPNOTSUPP, body
        if cmd in NOT_SUPPORTED:
            return -E.EOPNOTSUPP, body
        layout = pv.LAYOUTS[cmd]
        size = 0 if layout is None else int(layout.sizeof())
        memory = self.env.memory
        arg_body = memory.read(arg, size) if size else b""
        if arg_body is None:
            return -E.EFAULT, body
        status, out = self._handlers[cmd](arg_body)
        if size and out != arg_body and not memory.write(arg, out):
            return -E.EFAULT, body
        return status, body
