"""PV_IOMMU_OP sub-op structures: Xen's public ``pv-iommu.h`` (RFC v7, November 2025).

The request carries ``subop: u32, reserved: u32`` (``messages.PvIommuHead``) and then one of
the structures below; the reply carries the structure as updated (protocol.md, PV_IOMMU_OP).
Each structure is declared once with construct, laid out with natural C alignment as a C
compiler lays out Xen's header on x86-64 and AArch64: the implicit padding after a leading
``uint16_t ctx_no`` (a reviewer's remark on v7) and at the tail is spelled out as ``pad*``
fields, which are reserved: zero in both directions.  The hot sub-ops use ``struct`` codecs
derived from these declarations (``messages.fast``); tests/test_pviommu_layout.py checks both
agree and compiles the C declarations to compare every offset and size.

Project additions (protocols/protocol.md, "PV_IOMMU_OP structures"):
* ``lookup_page`` (sub-op 128): the RFC interface's lookup, which v7 dropped from the header,
  with the layout it had in v4 (``ctx_no``, ``dfn`` in, ``gfn`` out).
* ``CapabilitiesExt``: the v7 capabilities followed by ``max_nr_pages: u32, reserved: u32``
  (the RFC's batch limit); a 24-byte query gets the v7 structure, a 32-byte one this.
"""

from __future__ import annotations

import enum

import construct as c

from protocols.messages import FastCodec, fast


class Cmd(enum.IntEnum):
    """``enum pv_iommu_cmd`` (names without Xen's ``IOMMU_`` prefix)."""

    noop = 0
    query_capabilities = 1
    init = 2
    alloc_context = 3
    free_context = 4
    reattach_device = 5
    map_pages = 6
    unmap_pages = 7
    remote_cmd = 8
    alloc_nested = 9
    flush_nested = 10
    attach_pasid = 11
    detach_pasid = 12
    # Project addition: the RFC interface's lookup (not in the v7 header).
    lookup_page = 128


IOMMU_DEFAULT_CONTEXT = 0

# pv_iommu_capabilities.cap_flags
IOMMUCAP_default_identity = 1 << 0
IOMMUCAP_cache = 1 << 1
IOMMUCAP_nested = 1 << 2
IOMMUCAP_pasid = 1 << 3
IOMMUCAP_identity = 1 << 4

# pv_iommu_alloc.alloc_flags
IOMMU_ALLOC_identity = 1 << 0
ALLOC_FLAGS = IOMMU_ALLOC_identity

# pv_iommu_free.free_flags
IOMMU_FREE_reattach_default = 1 << 0
FREE_FLAGS = IOMMU_FREE_reattach_default

# pv_iommu_map_pages.map_flags
IOMMU_MAP_readable = 1 << 0
IOMMU_MAP_writeable = 1 << 1
IOMMU_MAP_cache = 1 << 2
MAP_FLAGS = IOMMU_MAP_readable | IOMMU_MAP_writeable | IOMMU_MAP_cache

DOMID_SELF = 0x7FF0
"""xen.h: the calling domain, as ``remote_cmd``'s ``domid``."""

# -- declarations (field order and names of pv-iommu.h; pad* are the C compiler's padding) --

Capabilities = c.Struct(
    "max_iova_addr" / c.Int64ul, "cap_flags" / c.Int32ul, "pgsize_mask" / c.Int32ul,
    "max_pasid" / c.Int32ul, "max_ctx_no" / c.Int16ul, "pad0" / c.Int16ul,
)
CapabilitiesExt = c.Struct(
    "max_iova_addr" / c.Int64ul, "cap_flags" / c.Int32ul, "pgsize_mask" / c.Int32ul,
    "max_pasid" / c.Int32ul, "max_ctx_no" / c.Int16ul, "pad0" / c.Int16ul,
    "max_nr_pages" / c.Int32ul, "reserved" / c.Int32ul,
)
Init = c.Struct("max_ctx_no" / c.Int32ul, "arena_order" / c.Int32ul)
Alloc = c.Struct("ctx_no" / c.Int16ul, "pad0" / c.Int16ul, "alloc_flags" / c.Int32ul)
Free = c.Struct("ctx_no" / c.Int16ul, "pad0" / c.Int16ul, "free_flags" / c.Int32ul)
# struct physdev_pci_device { uint16_t seg; uint8_t bus; uint8_t devfn; } sits at offset 2.
ReattachDevice = c.Struct(
    "ctx_no" / c.Int16ul, "seg" / c.Int16ul, "bus" / c.Int8ul, "devfn" / c.Int8ul,
    "pad0" / c.Int16ul, "pasid" / c.Int32ul,
)
MapPages = c.Struct(
    "ctx_no" / c.Int16ul, "pad0" / c.Int16ul, "pad1" / c.Int32ul,
    "gfn" / c.Int64ul, "dfn" / c.Int64ul, "map_flags" / c.Int32ul, "pgsize" / c.Int32ul,
    "nr_pages" / c.Int32ul, "mapped" / c.Int32ul,
)
UnmapPages = c.Struct(
    "ctx_no" / c.Int16ul, "pad0" / c.Int16ul, "pad1" / c.Int32ul,
    "dfn" / c.Int64ul, "pgsize" / c.Int32ul, "nr_pages" / c.Int32ul,
    "unmapped" / c.Int32ul, "pad2" / c.Int32ul,
)
# XEN_GUEST_HANDLE(void) is a pointer: here the guest-physical address of the structure.
RemoteCmd = c.Struct(
    "domid" / c.Int16ul, "subop" / c.Int16ul, "pad0" / c.Int32ul, "arg" / c.Int64ul,
)
AllocNested = c.Struct(
    "ctx_no" / c.Int16ul, "pad0" / c.Int16ul, "pad1" / c.Int32ul,
    "pgtable_gfn" / c.Int64ul, "nested_flags" / c.Int64ul,
)
FlushNested = c.Struct()
AttachPasid = c.Struct(
    "ctx_no" / c.Int16ul, "seg" / c.Int16ul, "bus" / c.Int8ul, "devfn" / c.Int8ul,
    "pad0" / c.Int16ul, "pasid" / c.Int32ul,
)
DetachPasid = c.Struct(
    "seg" / c.Int16ul, "bus" / c.Int8ul, "devfn" / c.Int8ul, "pasid" / c.Int32ul,
)
LookupPage = c.Struct(
    "ctx_no" / c.Int16ul, "pad0" / c.Int16ul, "pad1" / c.Int32ul,
    "dfn" / c.Int64ul, "gfn" / c.Int64ul,
)

LAYOUTS: dict[Cmd, c.Struct | None] = {
    Cmd.noop: None,  # no argument
    Cmd.query_capabilities: Capabilities,
    Cmd.init: Init,
    Cmd.alloc_context: Alloc,
    Cmd.free_context: Free,
    Cmd.reattach_device: ReattachDevice,
    Cmd.map_pages: MapPages,
    Cmd.unmap_pages: UnmapPages,
    Cmd.remote_cmd: RemoteCmd,
    Cmd.alloc_nested: AllocNested,
    Cmd.flush_nested: FlushNested,
    Cmd.attach_pasid: AttachPasid,
    Cmd.detach_pasid: DetachPasid,
    Cmd.lookup_page: LookupPage,
}
"""The structure of each sub-op (``Capabilities``; ``CapabilitiesExt`` is accepted too)."""

ALL_LAYOUTS: dict[str, c.Struct] = {
    name: value for name, value in globals().items() if isinstance(value, c.Struct)
}

CAPABILITIES = fast(Capabilities)
CAPABILITIES_EXT = fast(CapabilitiesExt)
INIT = fast(Init)
ALLOC = fast(Alloc)
FREE = fast(Free)
REATTACH_DEVICE = fast(ReattachDevice)
MAP_PAGES = fast(MapPages)
UNMAP_PAGES = fast(UnmapPages)
REMOTE_CMD = fast(RemoteCmd)
ALLOC_NESTED = fast(AllocNested)
ATTACH_PASID = fast(AttachPasid)
DETACH_PASID = fast(DetachPasid)
LOOKUP_PAGE = fast(LookupPage)

CODECS: dict[str, FastCodec] = {
    "Capabilities": CAPABILITIES, "CapabilitiesExt": CAPABILITIES_EXT, "Init": INIT,
    "Alloc": ALLOC, "Free": FREE, "ReattachDevice": REATTACH_DEVICE, "MapPages": MAP_PAGES,
    "UnmapPages": UNMAP_PAGES, "RemoteCmd": REMOTE_CMD, "AllocNested": ALLOC_NESTED,
    "AttachPasid": ATTACH_PASID, "DetachPasid": DETACH_PASID, "LookupPage": LOOKUP_PAGE,
}
"""The fast codec of every non-empty declaration, by declaration name."""


def struct_size(subop: int, body_len: int) -> int | None:
    """The size a sub-op's body must have (``None``: unknown sub-op).  ``query_capabilities``
    takes either the v7 structure or the extended one: the size sent is the size answered."""
    try:
        cmd = Cmd(subop)
    except ValueError:
        return None
    if cmd is Cmd.query_capabilities and body_len == CAPABILITIES_EXT.size:
        return CAPABILITIES_EXT.size
    layout = LAYOUTS[cmd]
    return 0 if layout is None else int(layout.sizeof())


def pad_fields(layout: c.Struct) -> tuple[str, ...]:
    """The reserved (padding) fields of a declaration."""
    return tuple(sub.name for sub in layout.subcons if sub.name.startswith("pad")
                 or sub.name == "reserved")


def pack(layout: c.Struct, **fields: int) -> bytes:
    """Build a structure; fields left out (padding, OUT fields) are zero.  For clients."""
    values = {sub.name: 0 for sub in layout.subcons}
    unknown = set(fields) - set(values)
    if unknown:
        raise TypeError(f"unknown fields {sorted(unknown)}")
    values.update(fields)
    built: bytes = layout.build(values)
    return built


def unpack(layout: c.Struct, data: bytes) -> dict[str, int]:
    """Parse a structure into a plain dict (no construct containers).  For clients."""
    parsed = layout.parse(data)
    return {sub.name: int(parsed[sub.name]) for sub in layout.subcons}
