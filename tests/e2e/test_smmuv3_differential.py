"""Nested and shadow s1-mode through the socket: two daemons, one per mode, driven by the
same seeded Linux-like workload (attach stage-1 and nested domains with SubstreamIDs, map,
unmap with TLBI + SYNC, DMA reads and writes of data, TRANSLATE, faults); the DMA data,
faults, translations and event records must be identical.  (The in-process differential,
tests/test_smmuv3_differential.py, runs many more steps.)"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from devices.model import Perm
from vmm.drivers.smmuv3 import Domain
from vmm.harness import Fault, Translation

from .smmuv3_helpers import SmmuGuest, smmu_guest

PAGE = 4096
PERMS = (Perm.R, Perm.R | Perm.W)


async def workload(g: SmmuGuest, seed: int, steps: int) -> list[Any]:
    rng = random.Random(seed)
    drv = g.drv
    s2 = drv.s2_domain(identity=True)
    domains: dict[tuple[int, int], Domain] = {}
    for sid, nested in ((1, None), (2, s2)):
        dom = drv.s1_domain()
        domains[(sid, 0)] = dom
        await drv.attach_s1(sid, dom, ssid_bits=2, nested=nested)
        for ssid in (1, 2):
            domains[(sid, ssid)] = extra = drv.s1_domain()
            await drv.set_pasid(sid, ssid, extra)
    data = g.ram.alloc(64 * PAGE)
    mapped: list[tuple[tuple[int, int], int]] = []
    out: list[Any] = []
    for _ in range(steps):
        op = rng.choices(("map", "unmap", "write", "read", "translate"), (4, 1, 4, 4, 2))[0]
        if op == "map":
            key = rng.choice(sorted(domains))
            iova = rng.randrange(0, 256) * PAGE
            try:
                await domains[key].map(iova, data + rng.randrange(64) * PAGE, PAGE,
                                       rng.choice(PERMS), extra=1 << 11)  # nG
            except ValueError:
                out.append("conflict")
                continue
            mapped.append((key, iova))
            out.append(("map", key, iova))
            continue
        if op == "unmap":
            if mapped:
                key, iova = mapped.pop(rng.randrange(len(mapped)))
                out.append(("unmap", await domains[key].unmap(iova, PAGE)))
            continue
        if mapped and rng.random() < 0.8:
            (sid, ssid), iova = rng.choice(mapped)
        else:
            sid, ssid, iova = rng.choice((1, 2)), rng.randrange(0, 4), rng.randrange(512) * PAGE
        pasid = None if ssid == 0 and rng.random() < 0.5 else ssid
        iova += rng.randrange(0, PAGE - 64, 8)
        got: bytes | Fault | Translation
        if op == "write":
            got = await g.dma_write(sid, iova, rng.randbytes(64), pasid=pasid)
        elif op == "read":
            got = await g.dma_read(sid, iova, 64, pasid=pasid)
        else:
            got = await g.client.translate(sid, iova, pasid=0xFFFF_FFFF if pasid is None
                                           else pasid, flags=rng.choice((0, 1)))
        out.append((op, sid, pasid, iova, got))
    out.append([e.raw for e in await drv.events()])
    out.append(bytes(g.ram.read(data, 64 * PAGE)))
    return out


@pytest.mark.parametrize("seed", range(2))
async def test_nested_and_shadow_daemons_agree(tmp_path: Path, nursery: trio.Nursery,
                                               seed: int) -> None:
    # Both daemons stay up for the whole test (a closed listener's fd number is reused).
    async with smmu_guest(tmp_path, nursery, "ssidsize=4", "s1-mode=nested",
                          evtq_log2=10) as a, \
            smmu_guest(tmp_path, nursery, "ssidsize=4", "s1-mode=shadow", evtq_log2=10) as b:
        nested = await workload(a, seed, 300)
        shadow = await workload(b, seed, 300)
    for i, (a, b) in enumerate(zip(nested, shadow, strict=True)):
        assert a == b, f"step {i}"
    dmas = [r for r in nested if isinstance(r, tuple) and r[0] in ("read", "write")]
    assert any(isinstance(r[-1], Fault) for r in dmas)
    assert any(not isinstance(r[-1], Fault) for r in dmas)
