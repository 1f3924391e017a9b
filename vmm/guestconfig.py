"""``vmm guest-config``: the guest's firmware description, from the daemon's configuration.

The stand-alone generator seed 002 asks for (usable at build time for dom0less or statically
built guests): from the same configuration as ``vmm daemon`` (``--config FILE``, ``--device``,
``--physical-iommu``, ``--devid-map``, ``--iommu-topology``, ``--viommu``) it writes

* device tree: an ``arm,smmu-v3`` node per vSMMUv3 (``#iommu-cells = <1>``, GIC SPIs named
  as the binding orders them, ``dma-coherent``, the map's phandle: seed 002's 0xfdea for the
  guest's vIOMMU, the physical IOMMU's for per-piommu), inserted into a partial device tree
  given as DTS (``--dts-in``), whose devices are rewritten:

  - a node named by a map entry's ``dev=`` gets ``iommus = <&viommuN vSID ...>``, or, for a
    PCI host bridge (``device_type = "pci"``), ``iommu-map = <rid &viommuN vSID length ...>``;
  - ``iommus = <0xfdea vSID>`` (seed 002's magic phandle, written by hand) is pointed at the
    vIOMMU that has that vSID (an error if none or, per-piommu, several have it);

  and written as DTS (``--dts-out``, default stdout) and/or DTB (``--dtb-out``);
* an ACPI DMAR (``--dmar-out``) with a DRHD per vVT-d: INCLUDE_PCI_ALL for a unit owning a
  whole segment, else one PCI-endpoint device scope per requester ID (vRIDs for a vVT-d of
  the map); ATSR for ``device-iotlb=on`` units, an IOAPIC scope with ``intremap=on``;
* ``--print-map``: the map with every vSID explicit, as TOML for the configuration file.

Interrupts: vSMMUv3 number k (configuration order) takes SPIs ``spi + 4k`` … ``spi + 4k + 3``
for its vectors in ``GET_CONFIG`` order (evtq, priq, cmdq-sync, gerror), listed in the DT in
the binding's order; with ``--combined-irq`` one SPI ``spi + k`` named ``combined``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass

from devices.smmuv3 import regs as smmu_regs
from protocols import acpi
from protocols import devicetree as dt
from vmm.config import ConfigError, DaemonConfig, DeviceSpec, HelpRequested
from vmm.devidmap import (
    GIC_PHANDLE,
    VIOMMU_PHANDLE,
    VIOMMU_SPI,
    DevidMap,
    XenConfig,
    add_config_options,
    build_config,
    gather,
)

SMMU_VECTORS = ("eventq", "priq", "cmdq-sync", "gerror")
"""vSMMUv3 vectors in GET_CONFIG order (evtq, priq, cmdq-sync, gerror), by binding name."""
DRHD_MAX_SCOPES = (0xFFFF - 16) // 8


class GuestConfigError(ConfigError):
    """The configuration or the partial device tree cannot give a firmware description."""


@dataclass(frozen=True)
class DtOptions:
    spi: int = VIOMMU_SPI
    interrupt_parent: int = GIC_PHANDLE
    combined_irq: bool = False
    parent: str = "/"


@dataclass
class ViommuNode:
    spec: DeviceSpec
    label: str
    phandle: int | None
    index: int


def viommu_nodes(config: DaemonConfig) -> list[ViommuNode]:
    """The vSMMUv3s of the configuration, with the label and phandle their node gets."""
    dmap = config.devid_map
    by_device = {v.device_id: v for v in dmap.viommus} if dmap is not None else {}
    out: list[ViommuNode] = []
    for spec in config.devices:
        if spec.model != "smmuv3":
            continue
        mapped = by_device.get(spec.id)
        label = f"viommu{mapped.index}" if mapped is not None else spec.name
        out.append(ViommuNode(spec, label, mapped.phandle if mapped else None, len(out)))
    return out


def _node_for(v: ViommuNode, opts: DtOptions, address_cells: int, size_cells: int) -> dt.Node:
    if opts.combined_irq:
        spis, combined = None, opts.spi + v.index
    else:
        spis = {name: opts.spi + 4 * v.index + i for i, name in enumerate(SMMU_VECTORS)}
        combined = None
    return dt.smmuv3_node(
        base=v.spec.base, size=smmu_regs.FRAME_SIZE, label=v.label, phandle=v.phandle,
        address_cells=address_cells, size_cells=size_cells, spis=spis,
        interrupt_parent=opts.interrupt_parent or None, combined_spi=combined)


def _runs(ids: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(rid, vsid) pairs → (first rid, first vsid, length) runs where both step by one."""
    runs: list[tuple[int, int, int]] = []
    for rid, vsid in ids:
        if runs and rid == runs[-1][0] + runs[-1][2] and vsid == runs[-1][1] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((rid, vsid, 1))
    return runs


def rewrite(tree: dt.Tree, config: DaemonConfig, opts: DtOptions) -> dt.Tree:
    """Insert the vSMMUv3 nodes and point the partial tree's devices at them (in place)."""
    nodes = viommu_nodes(config)
    dmap = config.devid_map
    labels = {v.spec.id: v.label for v in nodes}
    vi_label: dict[int, str] = {}
    if dmap is not None:
        for mapped in dmap.viommus:
            if mapped.device_id in labels:
                vi_label[mapped.index] = labels[mapped.device_id]
    taken = tree.phandles()
    for v in nodes:
        if v.phandle is not None and v.phandle in taken:
            raise GuestConfigError(f"phandle {v.phandle:#x} of {v.label} is already "
                                   f"{taken[v.phandle]}'s in the partial device tree")
    handled: set[str] = set()
    if dmap is not None:
        handled = _rewrite_named(tree, dmap, vi_label)
        _rewrite_magic(tree, dmap, vi_label, handled)
    found = tree.find(opts.parent)
    if found is None:
        raise GuestConfigError(f"parent node {opts.parent} is not in the device tree")
    parent = found[1]
    address_cells = (parent.cells("#address-cells") or [2])[0]
    size_cells = (parent.cells("#size-cells") or [1])[0]
    for v in nodes:
        node = _node_for(v, opts, address_cells, size_cells)
        if parent.child(node.name) is not None:
            raise GuestConfigError(f"{opts.parent} already has a node {node.name}")
        parent.children.append(node)
    dt.resolve_phandles(copy.deepcopy(tree))  # every reference resolves
    return tree


def _rewrite_named(tree: dt.Tree, dmap: DevidMap, vi_label: dict[int, str]) -> set[str]:
    handled: set[str] = set()
    for name, ids in dmap.node_ids().items():
        found = tree.find(name)
        if found is None:
            raise GuestConfigError(f"dev={name}: no such node in the partial device tree")
        path, node = found
        for vi, _, _ in ids:
            if vi not in vi_label:
                raise GuestConfigError(f"dev={name}: its vIOMMU is no vSMMUv3 (no DT node)")
        if node.string("device_type") == "pci":
            pairs: list[tuple[int, int]] = []
            by_entry: dict[str, int] = {}
            for _, vsid, entry in ids:
                k = by_entry.get(entry.text, 0)
                by_entry[entry.text] = k + 1
                rid = vsid if entry.rid is None else entry.rid + k
                pairs.append((rid, vsid))
            vis = {vi for vi, _, _ in ids}
            if len(vis) != 1:
                raise GuestConfigError(f"dev={name}: a host bridge behind two vIOMMUs")
            label = vi_label[vis.pop()]
            cells: list[int | dt.Ref] = []
            for rid, vsid, length in _runs(sorted(set(pairs))):
                cells += [rid, dt.Ref(label), vsid, length]
            node.set("iommu-map", dt.Cells(cells))
        else:
            cells = []
            seen: set[tuple[int, int]] = set()
            for vi, vsid, _ in ids:
                if (vi, vsid) not in seen:
                    seen.add((vi, vsid))
                    cells += [dt.Ref(vi_label[vi]), vsid]
            node.set("iommus", dt.Cells(cells))
        handled.add(path)
    return handled


def _rewrite_magic(tree: dt.Tree, dmap: DevidMap, vi_label: dict[int, str],
                   handled: set[str]) -> None:
    owners: dict[int, set[int]] = {}
    for vi, bound in dmap.bindings.values():
        owners.setdefault(bound, set()).add(vi)
    for path, node in tree.walk():
        prop = node.prop("iommus")
        if prop is None or path in handled or len(prop.values) != 1:
            continue
        value = prop.values[0]
        if not isinstance(value, dt.Cells) or len(value.items) % 2 \
                or value.items[0] != VIOMMU_PHANDLE:
            continue
        cells: list[int | dt.Ref] = []
        for i in range(0, len(value.items), 2):
            handle, vsid = value.items[i], value.items[i + 1]
            if handle != VIOMMU_PHANDLE or not isinstance(vsid, int):
                raise GuestConfigError(f"{path}: iommus mixes the vIOMMU with other IOMMUs")
            candidates = {vi for vi in owners.get(vsid, set()) if vi in vi_label}
            if not candidates:
                raise GuestConfigError(f"{path}: vSID {vsid:#x} is not in iommu_devid_map")
            if len(candidates) > 1:
                raise GuestConfigError(f"{path}: vSID {vsid:#x} is on several vIOMMUs; name "
                                       f"the node with dev= in the map")
            cells += [dt.Ref(vi_label[candidates.pop()]), vsid]
        prop.values = [dt.Cells(cells)]


def device_tree(config: DaemonConfig, opts: DtOptions, partial: str | None) -> dt.Tree:
    if partial is None:
        tree = dt.Tree()
        tree.root.set("#address-cells", dt.Cells([2]))
        tree.root.set("#size-cells", dt.Cells([2]))
    else:
        tree = dt.parse_dts(partial)
    return rewrite(tree, config, opts)


def dmar(config: DaemonConfig) -> bytes | None:
    """The DMAR of the configuration's vVT-d units (None without any)."""
    units: list[acpi.Unit] = []
    aw_bits, intremap, atsr = 0, False, set()
    dmap = config.devid_map
    mapped = {v.device_id: v.index for v in dmap.viommus} if dmap is not None else {}
    for spec in config.devices:
        if spec.model != "vtd":
            continue
        opts = spec.options
        aw_bits = max(aw_bits, int(opts.get("aw-bits", 48)))
        intremap = intremap or bool(opts.get("intremap"))
        if opts.get("device-iotlb"):
            atsr.add(spec.segment)
        if spec.id in mapped and dmap is not None:
            rids = sorted({vsid for vi, vsid in dmap.bindings.values()
                           if vi == mapped[spec.id]})
            whole = False
        else:
            lo, hi = opts.get("rids") or (0, 0xFFFF)
            rids, whole = list(range(lo, hi + 1)), (lo, hi) == (0, 0xFFFF)
        if not whole and len(rids) > DRHD_MAX_SCOPES:
            raise GuestConfigError(f"{spec.name}: {len(rids)} requester IDs do not fit one DRHD"
                                   f" (at most {DRHD_MAX_SCOPES}; or give it rids=0-0xffff)")
        scopes = [] if whole else [acpi.Scope.endpoint(r) for r in rids]
        units.append(acpi.Unit(spec.base, spec.segment, whole, scopes))
    if not units:
        return None
    if intremap:  # the IOAPIC behind the first unit, as QEMU's q35 lists it
        units[0].scopes.append(acpi.Scope(acpi.ScopeType.IOAPIC, 0xFF, [(0, 0)]))
    try:
        return acpi.build_dmar(units, host_address_width=aw_bits - 1,
                               flags=acpi.DMAR_INTR_REMAP if intremap else 0,
                               atsr_segments=tuple(sorted(atsr)))
    except ValueError as exc:
        raise GuestConfigError(str(exc)) from None


def spi_summary(config: DaemonConfig, opts: DtOptions) -> str:
    parts = []
    for v in viommu_nodes(config):
        if opts.combined_irq:
            parts.append(f"{v.label} (device {v.spec.id}): SPI {opts.spi + v.index} combined")
        else:
            spis = ", ".join(f"{n} SPI {opts.spi + 4 * v.index + i}"
                             for i, n in enumerate(SMMU_VECTORS))
            parts.append(f"{v.label} (device {v.spec.id}): {spis}")
    return "; ".join(parts)


def _dt_options(cfg: XenConfig, args: argparse.Namespace) -> DtOptions:
    table = dict(cfg.devicetree)
    for key in ("spi", "interrupt_parent", "parent"):
        value = getattr(args, key, None)
        if value is not None:
            table[key] = value
    if getattr(args, "combined_irq", False):
        table["combined_irq"] = True
    try:
        return DtOptions(spi=int(table.get("spi", VIOMMU_SPI)),
                         interrupt_parent=int(table.get("interrupt_parent", GIC_PHANDLE)),
                         combined_irq=bool(table.get("combined_irq", False)),
                         parent=str(table.get("parent", "/")))
    except (TypeError, ValueError):
        raise GuestConfigError("[devicetree]: spi and interrupt_parent are numbers") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.add_argument("--device", action="append", metavar="MODEL,key=value,...",
                        help="an IOMMU model, as for vmm daemon")
    add_config_options(parser)
    parser.add_argument("--dts-in", metavar="FILE", help="partial device tree (DTS) to rewrite")
    parser.add_argument("--dts-out", metavar="FILE",
                        help="write the device tree as DTS ('-': stdout; the default when no "
                             "other output is asked for)")
    parser.add_argument("--dtb-out", metavar="FILE", help="write the device tree as DTB")
    parser.add_argument("--dmar-out", metavar="FILE", help="write the ACPI DMAR table (.dat)")
    parser.add_argument("--print-map", action="store_true",
                        help="print iommu_devid_map with every vSID explicit")
    parser.add_argument("--spi", type=lambda t: int(t, 0), metavar="N",
                        help=f"first SPI of the vSMMUv3 interrupts (default {VIOMMU_SPI})")
    parser.add_argument("--interrupt-parent", type=lambda t: int(t, 0), metavar="PHANDLE",
                        help=f"interrupt-parent of the nodes, 0 for none (default {GIC_PHANDLE}"
                             ", Xen's guest GIC)")
    parser.add_argument("--combined-irq", action="store_true",
                        help="one 'combined' SPI per vSMMUv3")
    parser.add_argument("--parent", metavar="PATH",
                        help="where the vIOMMU nodes go (default /; /passthrough for xl)")


def _write(path: str, data: bytes | str) -> None:
    if path == "-":
        sys.stdout.write(data if isinstance(data, str) else data.decode("latin-1"))
        return
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = gather(args)
        config = build_config(cfg)
        opts = _dt_options(cfg, args)
        if args.print_map and config.devid_map is not None:
            entries = ", ".join(f'"{e}"' for e in config.devid_map.resolved())
            print(f'topology = "{config.devid_map.topology.value}"')
            print(f"iommu_devid_map = [{entries}]")
        partial = None
        if args.dts_in:
            with open(args.dts_in) as f:
                partial = f.read()
        wants_dt = bool(args.dts_out or args.dtb_out or args.dts_in)
        if not (wants_dt or args.dmar_out or args.print_map):
            wants_dt = True
            args.dts_out = "-"
        if wants_dt:
            tree = device_tree(config, opts, partial)
            if args.dts_out:
                _write(args.dts_out, dt.to_dts(tree, "vmm guest-config: " +
                                               (spi_summary(config, opts) or "no vSMMUv3")))
            if args.dtb_out:
                _write(args.dtb_out, dt.to_dtb(tree))
        if args.dmar_out:
            table = dmar(config)
            if table is None:
                raise GuestConfigError("--dmar-out: the configuration has no vVT-d")
            _write(args.dmar_out, table)
    except HelpRequested as req:
        print(req.text)
        return 0
    except (ConfigError, dt.DtsError) as exc:
        print(f"vmm guest-config: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vmm guest-config: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
