"""The PV-IOMMU fuzz target: PV_IOMMU_OP sub-ops and DMA through the contexts they build.

The structures are Xen's ``pv-iommu.h`` v7 with natural C alignment (reference/protocols.md
§7; protocol.md "PV_IOMMU_OP").  The model has no registers, so the register oracles do not
apply; the common ones do (no exception, bounded work, guest-RAM bounds, well-formed replies),
plus the contract's rule that ``-ENOSYS``/``-EOPNOTSUPP`` give the structure back unchanged.

======  ===================  ==============================================================
pv      subop; data          PV_IOMMU_OP with ``data`` as the sub-op's structure
======  ===================  ==============================================================
"""

from __future__ import annotations

import errno as E
import struct
from typing import ClassVar

from protocols.messages import Request
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Source, Step, mutate_words, pick, word
from vmm.fuzz.targets.base import Generator, ModelTarget, Op
from vmm.fuzz.world import World

DATA = 0x140000
FAR = 0x300000
CONTEXTS = (0, 1, 2, 3, 0xFFFF)
RIDS = (0x0000, 0x0008, 0x0010, 0x0100, 0xFFFF)

# (subop, layout) for v7: query_capabilities .. detach_pasid.
_LAYOUTS: dict[int, struct.Struct] = {
    1: struct.Struct("<QIIIHH"),        # capabilities (all OUT)
    2: struct.Struct("<II"),            # init: max_ctx_no, arena_order
    3: struct.Struct("<HHI"),           # alloc: ctx_no (OUT), pad, alloc_flags
    4: struct.Struct("<HHI"),           # free: ctx_no, pad, free_flags
    5: struct.Struct("<HHBBHI"),        # reattach: ctx_no, seg, bus, devfn, pad, pasid
    6: struct.Struct("<HHIQQIIII"),     # map_pages: ctx, pad, pad, gfn, dfn, flags, pgsize, nr, mapped
    7: struct.Struct("<HHIQIIII"),      # unmap_pages: ctx, pad, pad, dfn, pgsize, nr, unmapped, pad
    8: struct.Struct("<HHIQ"),          # remote_cmd: domid, subop, pad, arg
    9: struct.Struct("<HHIQQ"),         # alloc_nested: ctx, pad, pad, pgtable_gfn, flags
    11: struct.Struct("<HHBBHI"),       # attach_pasid: ctx, seg, bus, devfn, pad, pasid
    12: struct.Struct("<HBBI"),         # detach_pasid: seg, bus, devfn, pasid
}


def pv_body(src: Source, subop: int) -> bytes:
    """A plausible structure for ``subop``: small context numbers, guest pages, real flags."""
    ctx = pick(src, CONTEXTS)
    rid = pick(src, RIDS)
    gfn = (pick(src, (DATA, FAR, 0, 1 << 40)) >> 12) + src.below(16)
    dfn = src.below(64) if src.below(4) else word(src) >> 12
    nr = pick(src, (1, 1, 2, 16, 256, 512, 513, 0))
    layout = _LAYOUTS.get(subop)
    if subop == 1:
        body = layout.pack(0, 0, 0, 0, 0, 0) if layout else b""
    elif subop == 2:
        body = _LAYOUTS[2].pack(pick(src, (0, 1, 4, 255, 0xFFFF, 0xFFFF_FFFF)), src.below(4))
    elif subop in (3, 4):
        body = _LAYOUTS[subop].pack(ctx, 0, src.below(4))
    elif subop in (5, 11):
        body = _LAYOUTS[subop].pack(ctx, 0, rid >> 8, rid & 0xFF, 0, pick(src, (0, 1, 0xFFFF_FFFF)))
    elif subop == 6:
        body = _LAYOUTS[6].pack(ctx, 0, 0, gfn, dfn, src.below(8), 4096, nr, 0)
    elif subop == 7:
        body = _LAYOUTS[7].pack(ctx, 0, 0, dfn, 4096, nr, 0, 0)
    elif subop == 8:
        body = _LAYOUTS[8].pack(src.below(4), src.below(14), 0, word(src))
    elif subop == 9:
        body = _LAYOUTS[9].pack(ctx, 0, 0, gfn, src.below(4))
    elif subop == 12:
        body = _LAYOUTS[12].pack(0, rid >> 8, rid & 0xFF, src.below(4))
    else:
        body = word(src).to_bytes(8, "little") * src.below(3)
    if not src.below(8):
        body = mutate_words(src, body) if src.below(2) else body[: src.below(len(body) + 1)]
    return body


class PvIommuTarget(ModelTarget):
    name = "pv-iommu"
    model = "pv-iommu"
    default_device = "pv-iommu"
    variants = (default_device, "pv-iommu,no-dma=on")
    layout: ClassVar[list[tuple[int, int]]] = [(0, 0x200000), (FAR, 0x10000)]
    data_pages = tuple(DATA + 0x1000 * i for i in range(32)) + (FAR,)
    iovas = (0x0, 0x1000, 0x10000, 0x1000_0000, DATA, FAR, 0x8000_0000_0000)
    requesters = RIDS
    stable = ()

    def extra_ops(self) -> dict[str, Op]:
        return {"pv": _op_pv}

    weights: ClassVar[dict[str, int]] = {"pv": 60, "w": 1, "rmw": 0, "r": 1, "entry": 0,
                                         "map": 0, "inv": 0, "dma": 14, "xlate": 10}

    def extra_generators(self) -> dict[str, Generator]:
        return {"pv": self.gen_pv}

    def gen_pv(self, src: Source) -> Step:
        subop = src.below(14) if src.below(16) else src.bits(32)
        return Step("pv", (subop,), pv_body(src, subop))

    def seeds(self) -> list[list[Step]]:
        steps = [Step("pv", (1,), _LAYOUTS[1].pack(0, 0, 0, 0, 0, 0)),
                 Step("pv", (2,), _LAYOUTS[2].pack(4, 0)),
                 Step("pv", (3,), _LAYOUTS[3].pack(0, 0, 0)),
                 Step("pv", (5,), _LAYOUTS[5].pack(1, 0, 0, 8, 0, 0)),
                 Step("pv", (6,), _LAYOUTS[6].pack(1, 0, 0, DATA >> 12, 0x10, 3, 4096, 4, 0))]
        steps += [Step("dma", (8, 0xFFFF_FFFF, 0x10000 + 0x1000 * i, 64, i & 1)) for i in range(4)]
        steps += [Step("pv", (7,), _LAYOUTS[7].pack(1, 0, 0, 0x10, 4096, 2, 0, 0)),
                  Step("xlate", (8, 0xFFFF_FFFF, 0x10000, 0))]
        return [steps]


def _op_pv(world: World, step: Step) -> None:
    subop = step.args[0] & 0xFFFF_FFFF
    status, data = world.send(Request.PV_IOMMU_OP, struct.pack("<II", subop, 0) + step.data)
    if status in (-E.ENOSYS, -E.EOPNOTSUPP) and data != step.data:
        raise Failure("reply:pv-unchanged", f"{step}: status {status} but the structure came back changed")
