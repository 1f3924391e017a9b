"""Virtual-to-physical master IDs, vIOMMU topology and DMA masters: the Xen side of the
daemon's configuration (seeds 002 and 003, reference/ecosystem.md §2.1).

A guest sees virtual IOMMUs and virtual master IDs (vSIDs: SMMUv3 StreamIDs, or VT-d
requester IDs); the devices behind them are physical, on physical IOMMUs.  Seed 002's xl.cfg
option maps one to the other::

    iommu_devid_map = ["PMASTER_ID[@VMASTER_ID],IOMMU_BASE_ADDRESS", ...]

This module parses it (with the extensions below), allocates the vSIDs not given, checks
for collisions, and builds the guest's vIOMMU devices in one of two topologies:

* ``per-guest``: one vIOMMU for the guest; every physical ID of every physical IOMMU gets a
  vSID in its one ID space (explicit, or allocated: the lowest free block, in entry order).
* ``per-piommu``: one vIOMMU per physical IOMMU, at the same base address (and, in the
  device tree, with the same phandle), with identity IDs (vSID = pSID): what dom0 gets.

Grammar (seed 002's, extended; numbers decimal or 0x-hex, blanks around tokens ignored)::

    ENTRY  := IDS ["@" VID] "," BASE ("," OPTION)*
    IDS    := ID ["-" ID]            an inclusive range of physical IDs (extension)
    OPTION := "dev=" NODE            the device-tree node using these IDs (extension):
                                     a platform device gets them in ``iommus``, a PCI host
                                     bridge (``device_type = "pci"``) in ``iommu-map``
            | "rid=" ID              host bridges: the guest RID of the first ID
                                     (default: the vSID, i.e. RID = vSID)

* A device with several stream IDs: one entry per ID (the seed's answer) or one range, each
  with the same ``dev=``; its ``iommus`` lists them in entry order.
* Devices sharing a stream ID: one entry per device with the same physical ID and its own
  ``dev=``.  A physical stream has one configuration, so it has exactly one vSID: giving the
  same (pSID, physical IOMMU) two different vSIDs is an error (unlike the seed's sketch).
* Collisions: the same vSID of one vIOMMU for two physical IDs; a base that is no declared
  physical IOMMU; in ``per-piommu`` a vSID other than the pSID.

DMA: a request names ``segment`` = the physical IOMMU's index (configuration order) and
``requester`` = the pSID; the map leads it to the vIOMMU device and the vSID it sees
(``DevidMap.routes``).  Models that are not vIOMMUs of the map own the segments after the
physical ones: segment = number of physical IOMMUs + device id.

Also here: DMA masters the IOMMUs do not cover (seed 003): ``SEG:A-B`` ranges of
DMA-capable requesters that GET_CONFIG's ``dma_protected`` must count.
"""

from __future__ import annotations

import argparse
import enum
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmm.config import (
    ConfigError,
    DaemonConfig,
    DeviceSpec,
    build_devices,
    model_class,
    parse_device,
    split_keyval,
)

ID_MAX = 0xFFFF_FFFF
MAX_MAPPED_IDS = 1 << 20
"""Bound on the physical IDs one map may name (the bindings are held per ID)."""
VIOMMU_PHANDLE = 0xFDEA
"""Seed 002's magic phandle for the guest's vIOMMU (libxl's GUEST_PHANDLE_VSMMUV3)."""
GIC_PHANDLE = 0xFDE8
"""Xen's GUEST_PHANDLE_GIC (65000): the interrupt parent in a Xen partial device tree."""
VIOMMU_SPI = 0x60
"""First SPI of the vIOMMU interrupts in generated device trees (configurable)."""


class DevidMapError(ConfigError):
    """The ID map or topology is wrong; the message names the entry at fault."""


class Topology(enum.Enum):
    PER_GUEST = "per-guest"
    PER_PIOMMU = "per-piommu"


def _int(text: str, what: str) -> int:
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise DevidMapError(f"{what}: '{text.strip()}' is not a number") from None
    if not 0 <= value <= ID_MAX:
        raise DevidMapError(f"{what}: {value:#x} is out of range")
    return value


@dataclass(frozen=True)
class MapEntry:
    """One ``iommu_devid_map`` string, parsed."""

    text: str
    psid: int
    count: int
    vsid: int | None
    base: int
    device: str | None = None
    rid: int | None = None

    @classmethod
    def parse(cls, text: str) -> MapEntry:
        fields = [f.strip() for f in text.split(",")]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise DevidMapError(
                f"'{text}': expected PMASTER_ID[@VMASTER_ID],IOMMU_BASE_ADDRESS[,dev=NODE]")
        ids, at, vid = fields[0].partition("@")
        first, dash, last = ids.partition("-")
        psid = _int(first, f"'{text}': physical ID")
        pend = _int(last, f"'{text}': physical ID") if dash else psid
        if pend < psid:
            raise DevidMapError(f"'{text}': range {psid:#x}-{pend:#x} is empty")
        count = pend - psid + 1
        vsid = _int(vid, f"'{text}': virtual ID") if at else None
        if vsid is not None and vsid + count - 1 > ID_MAX:
            raise DevidMapError(f"'{text}': virtual IDs run past {ID_MAX:#x}")
        try:
            base = int(fields[1], 0)
        except ValueError:
            raise DevidMapError(f"'{text}': IOMMU base '{fields[1]}' is not a number") from None
        device: str | None = None
        rid: int | None = None
        for option in fields[2:]:
            key, eq, value = option.partition("=")
            if key == "dev" and eq and value:
                device = value
            elif key == "rid" and eq:
                rid = _int(value, f"'{text}': rid")
            else:
                raise DevidMapError(f"'{text}': unknown option '{option}' (dev=NODE, rid=ID)")
        if rid is not None and rid + count - 1 > 0xFFFF:
            raise DevidMapError(f"'{text}': RIDs run past 0xffff")
        return cls(text, psid, count, vsid, base, device, rid)


@dataclass(frozen=True)
class PhysicalIommu:
    """A physical IOMMU the guest's devices sit behind; its index is its DMA segment."""

    index: int
    base: int
    kind: str = "smmuv3"
    phandle: int | None = None
    name: str = ""

    @classmethod
    def parse(cls, index: int, text: str) -> PhysicalIommu:
        """``BASE[,kind=smmuv3|vtd][,phandle=N][,name=S]`` (the CLI form)."""
        parts = split_keyval(text)
        try:
            base = int(parts[0], 0)
        except ValueError:
            raise DevidMapError(f"physical IOMMU '{text}': base is not a number") from None
        doc: dict[str, Any] = {"base": base}
        for item in parts[1:]:
            key, _, value = item.partition("=")
            doc[key] = value if key in ("kind", "name") else _int(value, f"'{text}': {key}")
        return cls.from_doc(index, doc)

    @classmethod
    def from_doc(cls, index: int, doc: dict[str, Any]) -> PhysicalIommu:
        unknown = set(doc) - {"base", "kind", "phandle", "name"}
        if unknown:
            raise DevidMapError(f"physical IOMMU {index}: unknown keys {sorted(unknown)}")
        base, kind = doc.get("base"), doc.get("kind", "smmuv3")
        if not isinstance(base, int) or base < 0:
            raise DevidMapError(f"physical IOMMU {index}: 'base' must be an address")
        if kind not in ("smmuv3", "vtd"):
            raise DevidMapError(f"physical IOMMU {index}: kind must be smmuv3 or vtd")
        phandle = doc.get("phandle")
        if phandle is not None and not (isinstance(phandle, int) and 0 < phandle < ID_MAX):
            raise DevidMapError(f"physical IOMMU {index}: bad phandle")
        return cls(index, base, str(kind), phandle, str(doc.get("name", "")))


@dataclass(frozen=True)
class VIommu:
    """A vIOMMU the map produces: a device of the guest."""

    index: int
    kind: str
    base: int
    phandle: int
    piommus: tuple[int, ...]
    device_id: int = -1


@dataclass
class DevidMap:
    """The resolved map: every (physical IOMMU, pSID) → (vIOMMU, vSID)."""

    topology: Topology
    piommus: list[PhysicalIommu]
    entries: list[MapEntry]
    bindings: dict[tuple[int, int], tuple[int, int]]
    viommus: list[VIommu] = field(default_factory=list)

    # -- what the session uses -----------------------------------------------------------

    def routes(self) -> list[tuple[int, int, int, int, int]]:
        """(segment, first pSID, last pSID, vIOMMU device id, first vSID), runs coalesced."""
        runs: list[tuple[int, int, int, int, int]] = []
        for (seg, psid), (vi, vsid) in sorted(self.bindings.items()):
            dev = self.viommus[vi].device_id
            if runs:
                s, lo, hi, d, vlo = runs[-1]
                if (s, d) == (seg, dev) and psid == hi + 1 and vsid == vlo + psid - lo:
                    runs[-1] = (s, lo, psid, d, vlo)
                    continue
            runs.append((seg, psid, psid, dev, vsid))
        return runs

    def physical(self, device_id: int, vsid: int) -> tuple[int, int] | None:
        """The first (segment, pSID) behind a vSID of a vIOMMU device (back-end messages)."""
        for (seg, psid), (vi, v) in sorted(self.bindings.items()):
            if v == vsid and self.viommus[vi].device_id == device_id:
                return seg, psid
        return None

    def device_ids(self) -> set[int]:
        return {v.device_id for v in self.viommus}

    # -- what the firmware generators use ------------------------------------------------

    def node_ids(self) -> dict[str, list[tuple[int, int, MapEntry]]]:
        """DT node → its (vIOMMU index, vSID, entry) in entry order (``dev=`` entries)."""
        out: dict[str, list[tuple[int, int, MapEntry]]] = {}
        for entry in self.entries:
            if entry.device is None:
                continue
            seg = self.piommu_index(entry.base)
            for i in range(entry.count):
                vi, vsid = self.bindings[(seg, entry.psid + i)]
                out.setdefault(entry.device, []).append((vi, vsid, entry))
        return out

    def piommu_index(self, base: int) -> int:
        for p in self.piommus:
            if p.base == base:
                return p.index
        known = ", ".join(f"{p.base:#x}" for p in self.piommus) or "none declared"
        raise DevidMapError(f"no physical IOMMU at {base:#x} (physical IOMMUs: {known})")

    def resolved(self) -> list[str]:
        """The map with every vSID explicit, in entry order (paste it back into xl.cfg)."""
        out = []
        for entry in self.entries:
            seg = self.piommu_index(entry.base)
            _, vsid = self.bindings[(seg, entry.psid)]
            ids = f"{entry.psid:#x}" if entry.count == 1 else \
                f"{entry.psid:#x}-{entry.psid + entry.count - 1:#x}"
            text = f"{ids}@{vsid:#x},{entry.base:#x}"
            if entry.device is not None:
                text += f",dev={entry.device}"
            if entry.rid is not None:
                text += f",rid={entry.rid:#x}"
            out.append(text)
        return out

    # -- trace headers -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology.value,
            "physical_iommus": [{"base": p.base, "kind": p.kind, "name": p.name,
                                 **({"phandle": p.phandle} if p.phandle else {})}
                                for p in self.piommus],
            "iommu_devid_map": self.resolved(),
            "viommus": [{"kind": v.kind, "base": v.base, "phandle": v.phandle,
                         "device": v.device_id} for v in self.viommus],
        }


def resolve(piommus: Sequence[PhysicalIommu], texts: Iterable[str],
            topology: Topology) -> DevidMap:
    """Parse, check and allocate: the whole map, or a ``DevidMapError`` naming the culprit."""
    entries = [MapEntry.parse(t) for t in texts]
    bases = [p.base for p in piommus]
    if len(set(bases)) != len(bases):
        raise DevidMapError("two physical IOMMUs at the same base address")
    dmap = DevidMap(topology, list(piommus), entries, {})
    if sum(e.count for e in entries) > MAX_MAPPED_IDS:
        raise DevidMapError(f"the map names more than {MAX_MAPPED_IDS} IDs")
    owner: dict[tuple[int, int], tuple[int, int]] = {}  # (vIOMMU, vSID) → (seg, pSID)
    bindings = dmap.bindings

    def bind(entry: MapEntry, seg: int, psid: int, vi: int, vsid: int) -> None:
        old = bindings.get((seg, psid))
        if old is not None and old != (vi, vsid):
            raise DevidMapError(
                f"'{entry.text}': pSID {psid:#x} behind {entry.base:#x} already has vSID "
                f"{old[1]:#x}; a physical stream has one configuration, so devices sharing "
                f"it share its vSID (name each device with dev=)")
        other = owner.get((vi, vsid))
        if other is not None and other != (seg, psid):
            raise DevidMapError(
                f"'{entry.text}': vSID {vsid:#x} is already pSID {other[1]:#x} behind "
                f"{piommus[other[0]].base:#x}")
        bindings[(seg, psid)] = (vi, vsid)
        owner[(vi, vsid)] = (seg, psid)

    per_piommu = topology is Topology.PER_PIOMMU
    for entry in entries:  # explicit vSIDs (and identity ones) first
        seg = dmap.piommu_index(entry.base)
        vsid = entry.vsid
        if per_piommu:
            if vsid is not None and vsid != entry.psid:
                raise DevidMapError(f"'{entry.text}': the per-piommu topology keeps IDs "
                                    f"(vSID = pSID); drop @{vsid:#x}")
            vsid = entry.psid
        if vsid is None:
            continue
        vi = seg if per_piommu else 0
        for i in range(entry.count):
            bind(entry, seg, entry.psid + i, vi, vsid + i)
    for entry in entries:  # then allocation, in entry order: the lowest free block
        seg = dmap.piommu_index(entry.base)
        todo = [entry.psid + i for i in range(entry.count) if (seg, entry.psid + i) not in bindings]
        if not todo:
            continue
        start = _free_block(owner, len(todo))
        for i, psid in enumerate(todo):
            bind(entry, seg, psid, 0, start + i)
    return dmap


def _free_block(owner: dict[tuple[int, int], tuple[int, int]], n: int) -> int:
    used = sorted(v for vi, v in owner if vi == 0)
    start = 0
    for v in used:
        if v >= start + n:
            break
        start = max(start, v + 1)
    if start + n - 1 > ID_MAX:
        raise DevidMapError("no room left for automatically allocated vSIDs")
    return start


# -- the configuration: file and command line ----------------------------------------------

CONFIG_KEYS = {"device", "iommu_devid_map", "topology", "physical_iommu", "viommu",
               "dma_masters", "devicetree"}
VIOMMU_KEYS = {"model", "base", "options", "phandle"}
DEVICETREE_KEYS = {"spi", "interrupt_parent", "combined_irq", "parent"}


@dataclass
class XenConfig:
    """Everything of the configuration beyond ``--device``: the raw inputs, unresolved."""

    devices: list[str] = field(default_factory=list)
    devid_map: list[str] = field(default_factory=list)
    topology: Topology = Topology.PER_GUEST
    physical_iommus: list[PhysicalIommu] = field(default_factory=list)
    viommu: dict[str, Any] = field(default_factory=dict)
    dma_masters: list[tuple[int, int, int]] = field(default_factory=list)
    devicetree: dict[str, Any] = field(default_factory=dict)


def dma_protection(protected: list[tuple[int, int, int]],
                   masters: list[tuple[int, int, int]]) -> list[dict[str, int]] | None:
    """None when every declared DMA master lies in a protected range; else the protected
    ranges, merged, as GET_CONFIG's ``protected_requesters``."""
    merged: list[list[int]] = []
    for seg, lo, hi in sorted(protected):
        if merged and merged[-1][0] == seg and lo <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], hi)
        else:
            merged.append([seg, lo, hi])

    def covered(seg: int, lo: int, hi: int) -> bool:
        return any(s == seg and a <= lo and hi <= b for s, a, b in merged)

    if all(covered(*master) for master in masters):
        return None
    return [{"segment": s, "first": a, "last": b} for s, a, b in merged]


def parse_dma_master(text: str) -> tuple[int, int, int]:
    """``SEG:A-B`` (or ``SEG:A``) → (segment, first, last)."""
    seg_text, colon, ids = text.partition(":")
    if not colon:
        raise ConfigError(f"DMA master '{text}': expected SEG:A-B")
    lo_text, dash, hi_text = ids.partition("-")
    try:
        seg = int(seg_text, 0)
        lo = int(lo_text, 0)
        hi = int(hi_text, 0) if dash else lo
    except ValueError:
        raise ConfigError(f"DMA master '{text}': expected SEG:A-B with numbers") from None
    if not (0 <= seg <= 0xFFFF and 0 <= lo <= hi <= ID_MAX):
        raise ConfigError(f"DMA master '{text}': segment 0-0xffff, A <= B")
    return seg, lo, hi


def _strings(doc: dict[str, Any], key: str) -> list[str]:
    value = doc.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"'{key}' must be a string or a list of strings")
    return list(value)


def read_config_file(path: str) -> XenConfig:
    """A TOML configuration file (keys in ``CONFIG_KEYS``; the module docstring says how)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(doc) - CONFIG_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (known: "
                          f"{', '.join(sorted(CONFIG_KEYS))})")
    out = XenConfig(devices=_strings(doc, "device"), devid_map=_strings(doc, "iommu_devid_map"))
    if "topology" in doc:
        out.topology = parse_topology(str(doc["topology"]))
    piommus = doc.get("physical_iommu", [])
    if not isinstance(piommus, list) or not all(isinstance(p, dict) for p in piommus):
        raise ConfigError(f"{path}: [[physical_iommu]] must be tables")
    out.physical_iommus = [PhysicalIommu.from_doc(i, p) for i, p in enumerate(piommus)]
    for key, allowed in (("viommu", VIOMMU_KEYS), ("devicetree", DEVICETREE_KEYS)):
        table = doc.get(key, {})
        if not isinstance(table, dict) or set(table) - allowed:
            raise ConfigError(f"{path}: [{key}] takes {', '.join(sorted(allowed))}")
        setattr(out, key, dict(table))
    out.dma_masters = [parse_dma_master(t) for t in _strings(doc, "dma_masters")]
    return out


def parse_topology(text: str) -> Topology:
    try:
        return Topology(text.replace("_", "-").lower())
    except ValueError:
        raise ConfigError(f"topology '{text}': per-guest or per-piommu") from None


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The configuration options shared by ``vmm daemon`` and ``vmm guest-config``."""
    parser.add_argument("--config", metavar="FILE",
                        help="TOML configuration (devices, iommu_devid_map, topology, ...)")
    parser.add_argument("--physical-iommu", action="append", metavar="BASE[,kind=K,...]",
                        help="a physical IOMMU, in segment order (kind smmuv3|vtd, "
                             "phandle=N, name=S)")
    parser.add_argument("--devid-map", action="append",
                        metavar="PMASTER_ID[-END][@VMASTER_ID],IOMMU_BASE[,dev=NODE]",
                        help="map physical master IDs to the guest's (Xen iommu_devid_map)")
    parser.add_argument("--iommu-topology", metavar="per-guest|per-piommu",
                        help="one vIOMMU per guest, or one per physical IOMMU (identity IDs)")
    parser.add_argument("--viommu", metavar="MODEL,key=value,...",
                        help="the vIOMMU device the map creates (default: smmuv3)")
    parser.add_argument("--dma-master", action="append", metavar="SEG:A-B",
                        help="DMA-capable requesters no IOMMU protects (dma_protected)")


def gather(args: argparse.Namespace) -> XenConfig:
    """The file (if any) and the command line, the command line last."""
    cfg = read_config_file(args.config) if getattr(args, "config", None) else XenConfig()
    cfg.devices += list(getattr(args, "device", None) or [])
    cfg.devid_map += list(getattr(args, "devid_map", None) or [])
    if getattr(args, "iommu_topology", None):
        cfg.topology = parse_topology(args.iommu_topology)
    start = len(cfg.physical_iommus)
    cfg.physical_iommus += [PhysicalIommu.parse(start + i, t)
                            for i, t in enumerate(getattr(args, "physical_iommu", None) or [])]
    if getattr(args, "viommu", None):
        cfg.viommu = {**cfg.viommu, **_viommu_from_keyval(args.viommu)}
    cfg.dma_masters += [parse_dma_master(t) for t in getattr(args, "dma_master", None) or []]
    return cfg


def _viommu_from_keyval(text: str) -> dict[str, Any]:
    parts = split_keyval(text)
    rest = [p for p in parts[1:] if not p.startswith("base=")]
    out: dict[str, Any] = {"model": parts[0], "options": ",".join(rest)}
    for p in parts[1:]:
        if p.startswith("base="):
            out["base"] = int(p[5:], 0)
    return out


def build_config(cfg: XenConfig) -> DaemonConfig:
    """Devices, the resolved ID map with its vIOMMU devices, and the DMA masters."""
    specs = build_devices(cfg.devices)
    dmap: DevidMap | None = None
    if cfg.devid_map or cfg.physical_iommus:
        if not cfg.physical_iommus:
            raise DevidMapError("an iommu_devid_map needs its physical IOMMUs "
                                "([[physical_iommu]] or --physical-iommu)")
        dmap = resolve(cfg.physical_iommus, cfg.devid_map, cfg.topology)
        specs = _with_viommus(specs, dmap, cfg.viommu)
    return DaemonConfig(specs, dmap, list(cfg.dma_masters))


def _with_viommus(specs: list[DeviceSpec], dmap: DevidMap,
                  template: dict[str, Any]) -> list[DeviceSpec]:
    """Append the vIOMMU devices and move the other models past the physical segments."""
    unknown = set(template) - VIOMMU_KEYS
    if unknown:
        raise DevidMapError(f"vIOMMU: unknown keys {sorted(unknown)}")
    nphys = len(dmap.piommus)
    for spec in specs:
        spec.segment = nphys + spec.id
    used = {s.id for s in specs}
    model = str(template.get("model", "smmuv3"))
    options = str(template.get("options", ""))
    if model not in ("smmuv3", "vtd"):
        raise DevidMapError(f"vIOMMU model '{model}': smmuv3 or vtd")
    if dmap.topology is Topology.PER_GUEST:
        top = max((v for _, v in dmap.bindings.values()), default=0)
        base = int(template.get("base", model_class(model).default_base))
        phandle = int(template.get("phandle", VIOMMU_PHANDLE))
        plan = [(model, base, phandle, tuple(p.index for p in dmap.piommus), top)]
    else:
        plan = []
        taken = {p.phandle for p in dmap.piommus if p.phandle}
        for p in dmap.piommus:
            top = max((ps for (seg, ps) in dmap.bindings if seg == p.index), default=0)
            handle = p.phandle or 0
            if not handle:  # the physical one unknown: the lowest free from 0xfdea
                handle = VIOMMU_PHANDLE
                while handle in taken:
                    handle += 1
                taken.add(handle)
            plan.append((p.kind, p.base, handle, (p.index,), top))
    next_id = 0
    for index, (kind, base, phandle, segs, top) in enumerate(plan):
        while next_id in used:
            next_id += 1
        used.add(next_id)
        # The template's options are its model's: a vIOMMU of another kind gets defaults.
        text = ",".join(x for x in (kind, options if kind == model else "") if x)
        try:
            _, opts, _ = parse_device(text)
        except ConfigError as exc:
            raise DevidMapError(f"vIOMMU: {exc}") from None
        ids_key = "sids" if kind == "smmuv3" else "rids"
        limit = ID_MAX if kind == "smmuv3" else 0xFFFF
        if top > limit:
            raise DevidMapError(f"vIOMMU {kind}: ID {top:#x} beyond {limit:#x}")
        opts.update({"id": next_id, "base": base, ids_key: (0, max(top, 0xFF))})
        specs.append(DeviceSpec(kind, next_id, f"viommu{index}", segs[0], opts))
        dmap.viommus.append(VIommu(index, kind, base, phandle, segs, next_id))
    return specs


def load_daemon_config(args: argparse.Namespace) -> DaemonConfig:
    """``vmm daemon``'s whole configuration from its arguments (raises ``ConfigError``)."""
    return build_config(gather(args))


def restore(config: DaemonConfig, doc: dict[str, Any]) -> None:
    """Put back what ``DaemonConfig.to_json`` wrote of the map and the DMA masters (replay):
    ``config.devices`` already holds the vIOMMU devices, by the ids recorded."""
    masters = doc.get("dma_masters", [])
    config.dma_masters = [(int(s), int(a), int(b)) for s, a, b in masters]
    dm = doc.get("devid_map")
    if not isinstance(dm, dict):
        config.devid_map = None
        return
    piommus = [PhysicalIommu.from_doc(i, p) for i, p in enumerate(dm["physical_iommus"])]
    dmap = resolve(piommus, dm["iommu_devid_map"], parse_topology(str(dm["topology"])))
    for index, v in enumerate(dm["viommus"]):
        segs = tuple(p.index for p in piommus) if dmap.topology is Topology.PER_GUEST \
            else (index,)
        dmap.viommus.append(VIommu(index, str(v["kind"]), int(v["base"]), int(v["phandle"]),
                                   segs, int(v["device"])))
    config.devid_map = dmap
