"""One guest's state in the daemon: its memory, its IOMMU models, its interrupt routes.

``GuestSession`` is the ``protocols.session.Backend`` of a connection.  It is sans-IO: the
socket server, replay and the fuzzer build one and drive it with plain calls.
"""

from __future__ import annotations

import errno as E
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devices.model import DmaFault, DmaRequest, HostPort, IommuModel, MemoryPort
from protocols import messages as m
from protocols.messages import RegionSpec
from protocols.session import FaultReply, RequestError
from vmm.channel import BackendChannel, is_connected_stream, is_eventfd, signal_eventfd
from vmm.config import DaemonConfig, DeviceSpec, model_class
from vmm.devidmap import dma_protection
from vmm.host import HostIOMMU
from vmm.memory import GuestMemory, RegionError, SessionMemory

if TYPE_CHECKING:
    from vmm.record import Observer

log = logging.getLogger(__name__)

_WRITE, _PRIV, _EXEC = int(m.DmaFlag.WRITE), int(m.DmaFlag.PRIVILEGED), int(m.DmaFlag.EXECUTE)
_TCACHE_MAX = 65536
_ROUTES_CACHED = 4096

OFFERED_FEATURES = (m.Feature.BACKEND_CHANNEL | m.Feature.IRQ_FD | m.Feature.BATCH
                    | m.Feature.PAGE_REQUEST)


class ModelEnv:
    """The ``devices.model.Env`` of one model inside a guest session."""

    __slots__ = ("session", "device", "segment")

    def __init__(self, session: GuestSession, device: int, segment: int) -> None:
        self.session = session
        self.device = device
        self.segment = segment

    @property
    def memory(self) -> MemoryPort:
        return self.session.memory

    @property
    def host(self) -> HostPort:
        return self.session.host

    def irq(self, vector: int) -> None:
        self.session.deliver_irq(self.device, vector, 0, 0)

    def msi(self, vector: int, address: int, data: int) -> bool:
        # protocol.md §1 "Interrupts": delivered when it lands in guest RAM or a route
        # (eventfd, open back-end channel) takes it; otherwise the write is aborted.
        if self.session.memory.write_u32(address, data):
            return True
        return self.session.deliver_irq(self.device, vector, address, data)

    def atc_invalidate(self, requester: int, pasid: int, address: int, size: int) -> bool:
        segment, requester = self.session.physical_id(self.device, self.segment, requester)
        return self.session.atc_invalidate(segment, requester, pasid, address, size)

    def page_response(self, requester: int, pasid: int | None, group: int, code: int) -> None:
        segment, requester = self.session.physical_id(self.device, self.segment, requester)
        recorder = self.session.recorder
        if recorder is not None:
            recorder.page_response(segment, requester,
                                   m.NO_PASID if pasid is None else pasid, group, code)
        channel = self.session.channel
        if channel is not None:
            channel.page_response(segment, requester,
                                  m.NO_PASID if pasid is None else pasid, group, code)


@dataclass
class Slot:
    """A model instance and where it sits."""

    spec: DeviceSpec
    model: IommuModel
    window: int


def model_config(spec: DeviceSpec) -> dict[str, Any]:
    config = dict(spec.options)
    config["requesters"] = config.get("sids") or config.get("rids") or (0, 0xFFFF)
    return config


class GuestSession:
    """Everything one connected guest owns."""

    def __init__(self, config: DaemonConfig, *, memory: SessionMemory | None = None,
                 recorder: Observer | None = None) -> None:
        """``memory``: instead of an empty ``GuestMemory`` (replay, tests).  ``recorder``:
        sees every interrupt and channel message, and wraps the memory (vmm/record.py)."""
        self.config = config
        self.recorder = recorder
        base = memory if memory is not None else GuestMemory()
        self.memory = base if recorder is None else recorder.wrap_memory(base)
        self.host = HostIOMMU(self.memory)
        self.declared_features = 0
        self.irq_fds: dict[tuple[int, int], int] = {}
        self.channel: BackendChannel | None = None
        self.irqs_dropped = 0
        self.slots: dict[int, Slot] = {}
        self._owners: dict[int, list[tuple[int, int, IommuModel]]] = {}
        devid = config.devid_map
        mapped = devid.device_ids() if devid is not None else set()
        for spec in config.devices:
            cls = model_class(spec.model)
            model = cls(model_config(spec), ModelEnv(self, spec.id, spec.segment))
            self.slots[spec.id] = Slot(spec, model, cls.mmio_size)
            if spec.id in mapped:
                continue  # a vIOMMU of the ID map: reached through _routes only
            for lo, hi in model.requester_ranges:
                self._owners.setdefault(spec.segment, []).append((lo, hi, model))
        # The ID map (vmm/devidmap.py): physical segment -> (first pSID, last pSID, model,
        # first vSID); the model sees the vSID.
        self._routes: dict[int, list[tuple[int, int, IommuModel, int]]] = {}
        for seg, lo, hi, dev_id, vsid in devid.routes() if devid is not None else ():
            self._routes.setdefault(seg, []).append((lo, hi, self.slots[dev_id].model, vsid))
        # Successful translations by (segment, requester, pasid, flags, page): an IOTLB in
        # front of the models.  Only an MMIO write, a reset, a memory-table change or a
        # PV-IOMMU op can change what a model translates (hardware caches until software
        # invalidates, and invalidation is an MMIO write), so those clear it; faults are
        # never cached, so every one reaches its model and is recorded there.
        self.tcache: dict[tuple[int, int, int | None, int, int], tuple[int, int, int, int]] = {}
        self.pv_iommu = next(
            (slot.model for slot in self.slots.values() if slot.spec.model == "pv-iommu"), None)
        self._windows = {dev_id: slot.window for dev_id, slot in self.slots.items()}
        # _route's answers: the owners and the ID map are fixed for the session's life.
        self._routed: dict[tuple[int, int], tuple[IommuModel | None, int]] = {}
        self._models = {dev_id: slot.model for dev_id, slot in self.slots.items()}

    def close(self) -> None:
        """Release everything the guest gave us (its memory, its fds)."""
        self.memory.clear()
        for fd in self.irq_fds.values():
            os.close(fd)
        self.irq_fds.clear()
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    # -- interrupts ------------------------------------------------------------------------

    def deliver_irq(self, device: int, vector: int, msi_address: int, msi_data: int) -> bool:
        """Signal an interrupt; whether a route took it.  The recorder sees the outcome and
        may overrule it (replay answers what the trace recorded)."""
        fd = self.irq_fds.get((device, vector))
        if fd is not None:
            signal_eventfd(fd)
            delivered = True
        elif self.channel is not None and not self.channel.closed:
            delivered = self.channel.irq(device, vector, msi_address, msi_data)
        else:
            self.irqs_dropped += 1
            delivered = False
        if self.recorder is not None:
            delivered = self.recorder.irq(device, vector, msi_address, msi_data, delivered)
        return delivered

    def atc_invalidate(self, segment: int, requester: int, pasid: int, address: int,
                       size: int) -> bool:
        """Send ATC_INVALIDATE; whether an open channel took it (the recorder may overrule
        the outcome, as for interrupts)."""
        delivered = self.channel is not None and self.channel.atc_invalidate(
            segment, requester, pasid, address, size)
        if self.recorder is not None:
            delivered = self.recorder.atc_invalidate(segment, requester, pasid, address, size,
                                                     delivered)
        return delivered

    # -- Backend: features, config, memory -------------------------------------------------

    def features(self) -> int:
        pv = m.Feature.PV_IOMMU if self.pv_iommu is not None else 0
        return int(OFFERED_FEATURES | pv)

    def set_features(self, features: int) -> None:
        self.declared_features = features

    def config_json(self) -> bytes:
        devices = []
        for slot in self.slots.values():
            spec, model = slot.spec, slot.model
            entry: dict[str, Any] = {
                "id": spec.id, "model": spec.model, "name": spec.name,
                "mmio": {"base": spec.base, "size": slot.window},
                "segment": spec.segment,
                "requesters": [list(r) for r in model.requester_ranges],
                "irqs": list(model.irq_names),
            }
            physical = [(seg, lo, hi, vsid) for seg, runs in self._routes.items()
                        for lo, hi, owner, vsid in runs if owner is model]
            if physical:  # a vIOMMU of the ID map: DMA names the physical IDs
                physical.sort()
                first = physical[0][0]
                entry["segment"] = first
                entry["requesters"] = [[lo, hi] for seg, lo, hi, _ in physical if seg == first]
                entry["physical"] = [{"segment": seg, "first": lo, "last": hi, "vsid": vsid}
                                     for seg, lo, hi, vsid in physical]
            devices.append(entry)
        doc: dict[str, Any] = {
            "protocol": 1,
            "devices": devices,
            "pv_iommu": bool(self.features() & m.Feature.PV_IOMMU),
        }
        # Seed 003: DMA from a requester no model owns is refused (-ENODEV), so only the
        # DMA masters the operator declared can be unprotected.
        protected = dma_protection(self._protected_ranges(), self.config.dma_masters)
        doc["dma_protected"] = protected is None
        if protected is not None:
            doc["protected_requesters"] = protected
        return json.dumps(doc).encode()

    def _protected_ranges(self) -> list[tuple[int, int, int]]:
        ranges = [(seg, lo, hi) for seg, owners in self._owners.items() for lo, hi, _ in owners]
        ranges += [(seg, lo, hi) for seg, runs in self._routes.items() for lo, hi, _, _ in runs]
        return ranges

    def set_mem_table(self, regions: list[RegionSpec], fds: list[int]) -> None:
        self.tcache.clear()
        try:
            self.memory.set_table(list(zip(regions, fds, strict=True)))
        except RegionError as exc:
            raise RequestError(-exc.errno, str(exc)) from None

    def add_mem_reg(self, region: RegionSpec, fd: int) -> None:
        self.tcache.clear()
        try:
            self.memory.add(region, fd)
        except RegionError as exc:
            raise RequestError(-exc.errno, str(exc)) from None

    def rem_mem_reg(self, region: RegionSpec) -> None:
        self.tcache.clear()
        try:
            self.memory.remove(region.gpa, region.size)
        except RegionError as exc:
            raise RequestError(-exc.errno, str(exc)) from None

    # -- Backend: devices ------------------------------------------------------------------

    def reset(self, device: int) -> None:
        self.tcache.clear()
        if device == m.ALL_DEVICES:
            for slot in self.slots.values():
                slot.model.reset()
        else:
            self.slots[device].model.reset()

    def mmio_window(self, device: int) -> int | None:
        return self._windows.get(device)

    def mmio_read(self, device: int, offset: int, size: int) -> int:
        # A read may run deferred queue work (VT-d runs at most 1024 descriptors per access).
        self.tcache.clear()
        return self._models[device].mmio_read(offset, size)

    def mmio_write(self, device: int, offset: int, size: int, value: int) -> None:
        self.tcache.clear()
        self._models[device].mmio_write(offset, size, value)

    def irq_vectors(self, device: int) -> int | None:
        slot = self.slots.get(device)
        return None if slot is None else len(slot.model.irq_names)

    def set_irq_fd(self, device: int, vector: int, fd: int) -> None:
        if not is_eventfd(fd):
            raise RequestError(E.EINVAL, "SET_IRQ_FD needs an eventfd")
        old = self.irq_fds.pop((device, vector), None)
        if old is not None:
            os.close(old)
        self.irq_fds[(device, vector)] = os.dup(fd)

    def set_backend_channel(self, fd: int) -> None:
        if not is_connected_stream(fd):
            raise RequestError(E.EINVAL, "SET_BACKEND_CHANNEL needs a connected stream socket")
        if self.channel is not None:
            self.channel.close()
        self.channel = BackendChannel(fd)

    def pv_iommu_op(self, subop: int, body: bytes) -> tuple[int, bytes]:
        self.tcache.clear()
        # Reached only when PV_IOMMU is offered (the connection answers -ENOSYS otherwise).
        handler = getattr(self.pv_iommu, "pv_op", None)
        if handler is None:
            return -E.EOPNOTSUPP, body
        result: tuple[int, bytes] = handler(subop, body)
        return result

    def page_request(self, segment: int, requester: int, pasid: int | None, flags: int,
                     address: int, group: int) -> int:
        model, requester = self._route(segment, requester)
        handler = getattr(model, "page_request", None)
        if handler is None:
            return -E.ENOSYS  # the model takes no page requests
        status: int = handler(requester, pasid, flags, address, group)
        return status

    # -- Backend: DMA ------------------------------------------------------------------------

    def owner(self, segment: int, requester: int) -> IommuModel | None:
        routes = self._routes.get(segment)
        if routes is not None:
            for lo, hi, model, _ in routes:
                if lo <= requester <= hi:
                    return model
            return None
        for lo, hi, model in self._owners.get(segment, ()):
            if lo <= requester <= hi:
                return model
        return None

    def _route(self, segment: int, requester: int) -> tuple[IommuModel | None, int]:
        """The model owning a DMA source and the requester ID it sees (the vSID)."""
        key = (segment, requester)
        routed = self._routed.get(key)
        if routed is None:
            routed = self._find_route(segment, requester)
            if len(self._routed) >= _ROUTES_CACHED:
                self._routed.clear()
            self._routed[key] = routed
        return routed

    def _find_route(self, segment: int, requester: int) -> tuple[IommuModel | None, int]:
        for lo, hi, model, vsid in self._routes.get(segment, ()):
            if lo <= requester <= hi:
                return model, vsid + requester - lo
        return self.owner(segment, requester), requester

    def physical_id(self, device: int, segment: int, requester: int) -> tuple[int, int]:
        """(segment, requester) as the front-end names a device a model names by vSID."""
        devid = self.config.devid_map
        if devid is None or device not in devid.device_ids():
            return segment, requester
        return devid.physical(device, requester) or (segment, requester)

    def dma_owner(self, segment: int, requester: int) -> bool:
        return self._route(segment, requester)[0] is not None

    @staticmethod
    def _fault(fault: DmaFault) -> FaultReply:
        return FaultReply(int(fault.kind), fault.code, fault.address, fault.stage)

    def _pages(
        self, segment: int, model: IommuModel, requester: int, pasid: int | None, iova: int,
        length: int, flags: int,
    ) -> list[tuple[int, int, int]] | FaultReply:
        """Translate ``[iova, iova+length)`` page by page into (hpa, length, gpa) pieces.

        The data moves at host-physical addresses: a model that hands back a GPA where an
        HPA belongs (or the reverse) moves the wrong bytes, and the tests see it."""
        host = self.host
        memory = self.memory
        pieces: list[tuple[int, int, int]] = []
        pos, end = iova, iova + length
        while pos < end:
            got = self._lookup(segment, model, requester, pasid, pos, flags, True)
            if isinstance(got, FaultReply):
                return got
            gpa_base, hpa_base, size, _ = got
            chunk = min(end, (pos | (size - 1)) + 1) - pos
            if hpa_base < 0:
                return FaultReply(8, 0, pos, 0)  # kind 8: no guest memory there
            hpa = hpa_base + (pos & (size - 1))
            gpa = gpa_base + (pos & (size - 1))
            if not (memory.contains(gpa, chunk) and host.placement.contiguous(gpa, chunk)):
                # a block running off RAM or across a placement seam: go page by page
                chunk = min(chunk, 4096 - (pos & 4095))
                page_hpa = host.gpa_to_hpa(gpa)
                if page_hpa is None or not memory.contains(gpa, chunk):
                    return FaultReply(8, 0, pos, 0)
                hpa = page_hpa
            if pieces and pieces[-1][0] + pieces[-1][1] == hpa and pieces[-1][2] + pieces[-1][1] == gpa:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + chunk, pieces[-1][2])
            else:
                pieces.append((hpa, chunk, gpa))
            pos += chunk
        return pieces

    def dma(
        self, segment: int, requester: int, pasid: int | None, iova: int, length: int,
        flags: int, data: bytes | None,
    ) -> bytes | FaultReply:
        model, requester = self._route(segment, requester)
        assert model is not None  # the connection checked dma_owner first
        if data is None:
            # A read inside one cached block (the usual DMA): what _pages would do with its
            # one piece, without building the list.
            hit = self.tcache.get((segment, requester, pasid, flags, iova >> 12))
            if hit is not None:
                gpa_base, hpa_base, size, _ = hit
                offset = iova & (size - 1)
                if offset + length <= size and hpa_base >= 0 and self.memory.contains(
                        gpa_base + offset, length) and self.host.placement.contiguous(
                        gpa_base + offset, length):
                    chunk = self.host.host_memory.read(hpa_base + offset, length)
                    assert chunk is not None  # checked just above
                    return chunk
        pieces = self._pages(segment, model, requester, pasid, iova, length, flags)
        if isinstance(pieces, FaultReply):
            return pieces
        host_memory = self.host.host_memory
        if data is not None:
            done = 0
            for hpa, n, _ in pieces:
                host_memory.write(hpa, data[done : done + n])
                done += n
            return b""
        out = []
        for hpa, n, _ in pieces:
            chunk = host_memory.read(hpa, n)
            assert chunk is not None  # every piece was checked above
            out.append(chunk)
        return b"".join(out)

    def _lookup(self, segment: int, model: IommuModel, requester: int, pasid: int | None,
                iova: int, flags: int, record: bool) -> tuple[int, int, int, int] | FaultReply:
        """(gpa, hpa or -1, size, perms) of the block holding ``iova``, through the cache."""
        key = (segment, requester, pasid, flags, iova >> 12)
        hit = self.tcache.get(key)
        if hit is not None:
            return hit
        result = model.translate(DmaRequest(
            requester, pasid, iova, bool(flags & _WRITE), bool(flags & _PRIV),
            bool(flags & _EXEC), record=record,
        ))
        if isinstance(result, DmaFault):
            return self._fault(result)
        size = result.size
        mask = size - 1
        hpa = result.hpa
        if hpa is None:
            hpa = self.host.gpa_to_hpa(result.gpa)
        entry = (result.gpa - (iova & mask), -1 if hpa is None else hpa - (iova & mask),
                 size, int(result.perms))
        if size >= 4096 and len(self.tcache) < _TCACHE_MAX:
            self.tcache[key] = entry
        return entry

    def translate(
        self, segment: int, requester: int, pasid: int | None, iova: int, flags: int
    ) -> tuple[int, int, int] | FaultReply:
        model, requester = self._route(segment, requester)
        assert model is not None
        got = self._lookup(segment, model, requester, pasid, iova, flags, False)
        if isinstance(got, FaultReply):
            return got
        gpa, _, size, perms = got
        return gpa + (iova & (size - 1)), size, perms
