"""The PV_IOMMU_OP structures: construct declarations, fast codecs and the C compiler agree.

The C side is Xen's v7 ``pv-iommu.h`` declarations (field names, types and order, no
padding written), compiled by the system's C compiler; natural alignment must put every
field where our declarations say, with our ``pad*`` fields exactly filling the holes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import construct as c
import pytest

from protocols import pviommu as pv

C_DECLS = """
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
struct physdev_pci_device { uint16_t seg; uint8_t bus; uint8_t devfn; };
struct pv_iommu_capabilities { uint64_t max_iova_addr; uint32_t cap_flags;
    uint32_t pgsize_mask; uint32_t max_pasid; uint16_t max_ctx_no; uint16_t pad0; };
struct pv_iommu_init { uint32_t max_ctx_no; uint32_t arena_order; };
struct pv_iommu_alloc { uint16_t ctx_no; uint32_t alloc_flags; };
struct pv_iommu_free { uint16_t ctx_no; uint32_t free_flags; };
struct pv_iommu_map_pages { uint16_t ctx_no; uint64_t gfn; uint64_t dfn; uint32_t map_flags;
    uint32_t pgsize; uint32_t nr_pages; uint32_t mapped; };
struct pv_iommu_unmap_pages { uint16_t ctx_no; uint64_t dfn; uint32_t pgsize;
    uint32_t nr_pages; uint32_t unmapped; };
struct pv_iommu_reattach_device { uint16_t ctx_no; struct physdev_pci_device dev;
    uint32_t pasid; };
struct pv_iommu_remote_cmd { uint16_t domid; uint16_t subop; void *arg; };
struct pv_iommu_alloc_nested { uint16_t ctx_no; uint64_t pgtable_gfn; uint64_t nested_flags; };
struct pv_iommu_attach_pasid { uint16_t ctx_no; struct physdev_pci_device dev; uint32_t pasid; };
struct pv_iommu_detach_pasid { struct physdev_pci_device dev; uint32_t pasid; };
struct pv_iommu_lookup_page { uint16_t ctx_no; uint64_t dfn; uint64_t gfn; };
#define F(s, f) printf(#s " " #f " %zu\\n", offsetof(struct s, f))
#define Z(s) printf(#s " sizeof %zu\\n", sizeof(struct s))
int main(void) {
    F(pv_iommu_capabilities, max_iova_addr); F(pv_iommu_capabilities, cap_flags);
    F(pv_iommu_capabilities, pgsize_mask); F(pv_iommu_capabilities, max_pasid);
    F(pv_iommu_capabilities, max_ctx_no); F(pv_iommu_capabilities, pad0);
    Z(pv_iommu_capabilities);
    F(pv_iommu_init, max_ctx_no); F(pv_iommu_init, arena_order); Z(pv_iommu_init);
    F(pv_iommu_alloc, ctx_no); F(pv_iommu_alloc, alloc_flags); Z(pv_iommu_alloc);
    F(pv_iommu_free, ctx_no); F(pv_iommu_free, free_flags); Z(pv_iommu_free);
    F(pv_iommu_map_pages, ctx_no); F(pv_iommu_map_pages, gfn); F(pv_iommu_map_pages, dfn);
    F(pv_iommu_map_pages, map_flags); F(pv_iommu_map_pages, pgsize);
    F(pv_iommu_map_pages, nr_pages); F(pv_iommu_map_pages, mapped); Z(pv_iommu_map_pages);
    F(pv_iommu_unmap_pages, ctx_no); F(pv_iommu_unmap_pages, dfn);
    F(pv_iommu_unmap_pages, pgsize); F(pv_iommu_unmap_pages, nr_pages);
    F(pv_iommu_unmap_pages, unmapped); Z(pv_iommu_unmap_pages);
    F(pv_iommu_reattach_device, ctx_no); F(pv_iommu_reattach_device, dev.seg);
    F(pv_iommu_reattach_device, dev.bus); F(pv_iommu_reattach_device, dev.devfn);
    F(pv_iommu_reattach_device, pasid); Z(pv_iommu_reattach_device);
    F(pv_iommu_remote_cmd, domid); F(pv_iommu_remote_cmd, subop); F(pv_iommu_remote_cmd, arg);
    Z(pv_iommu_remote_cmd);
    F(pv_iommu_alloc_nested, ctx_no); F(pv_iommu_alloc_nested, pgtable_gfn);
    F(pv_iommu_alloc_nested, nested_flags); Z(pv_iommu_alloc_nested);
    F(pv_iommu_attach_pasid, ctx_no); F(pv_iommu_attach_pasid, dev.seg);
    F(pv_iommu_attach_pasid, dev.bus); F(pv_iommu_attach_pasid, dev.devfn);
    F(pv_iommu_attach_pasid, pasid); Z(pv_iommu_attach_pasid);
    F(pv_iommu_detach_pasid, dev.seg); F(pv_iommu_detach_pasid, dev.bus);
    F(pv_iommu_detach_pasid, dev.devfn); F(pv_iommu_detach_pasid, pasid);
    Z(pv_iommu_detach_pasid);
    F(pv_iommu_lookup_page, ctx_no); F(pv_iommu_lookup_page, dfn); F(pv_iommu_lookup_page, gfn);
    Z(pv_iommu_lookup_page);
    return 0;
}
"""

OURS = {
    "pv_iommu_capabilities": pv.Capabilities, "pv_iommu_init": pv.Init,
    "pv_iommu_alloc": pv.Alloc, "pv_iommu_free": pv.Free,
    "pv_iommu_map_pages": pv.MapPages, "pv_iommu_unmap_pages": pv.UnmapPages,
    "pv_iommu_reattach_device": pv.ReattachDevice, "pv_iommu_remote_cmd": pv.RemoteCmd,
    "pv_iommu_alloc_nested": pv.AllocNested, "pv_iommu_attach_pasid": pv.AttachPasid,
    "pv_iommu_detach_pasid": pv.DetachPasid, "pv_iommu_lookup_page": pv.LookupPage,
}


def offsets(layout: c.Struct) -> dict[str, int]:
    out, pos = {}, 0
    for sub in layout.subcons:
        out[sub.name] = pos
        pos += sub.sizeof()
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to check natural alignment against")
    tmp = Path(tmp_path_factory.mktemp("pvlayout"))
    (tmp / "l.c").write_text(C_DECLS)
    subprocess.run([cc, "-o", str(tmp / "l"), str(tmp / "l.c")], check=True)
    out = subprocess.run([str(tmp / "l")], check=True, capture_output=True, text=True).stdout
    table: dict[str, dict[str, int]] = {}
    for line in out.splitlines():
        struct_name, field, value = line.split()
        table.setdefault(struct_name, {})[field.removeprefix("dev.")] = int(value)
    return table


@pytest.mark.parametrize("name", sorted(OURS))
def test_natural_alignment(compiled: dict[str, dict[str, int]], name: str) -> None:
    layout = OURS[name]
    c_side = compiled[name]
    ours = offsets(layout)
    assert layout.sizeof() == c_side.pop("sizeof")
    for field, offset in c_side.items():
        assert ours[field] == offset, field
    named = set(c_side)
    assert all(f in named or f.startswith("pad") for f in ours), "only padding is ours"


@pytest.mark.parametrize("name", sorted(pv.CODECS))
def test_fast_codecs_agree(name: str) -> None:
    layout = pv.ALL_LAYOUTS[name]
    codec = pv.CODECS[name]
    assert codec.size == layout.sizeof() and codec.names == tuple(s.name for s in layout.subcons)
    values = {n: (i * 0x1F + 3) & 0xFF for i, n in enumerate(codec.names)}
    assert codec.pack(*values.values()) == layout.build(values)
    assert dict(zip(codec.names, codec.unpack(layout.build(values)), strict=True)) == values


def test_extended_capabilities_extend_v7() -> None:
    assert pv.CapabilitiesExt.sizeof() == pv.Capabilities.sizeof() + 8
    assert list(offsets(pv.CapabilitiesExt))[:6] == list(offsets(pv.Capabilities))
    assert pv.struct_size(pv.Cmd.query_capabilities, 32) == 32
    assert pv.struct_size(pv.Cmd.query_capabilities, 31) == 24
    assert pv.struct_size(pv.Cmd.noop, 5) == 0
    assert pv.struct_size(200, 8) is None


def test_pack_rejects_unknown_fields() -> None:
    with pytest.raises(TypeError):
        pv.pack(pv.Alloc, ctx=1)
