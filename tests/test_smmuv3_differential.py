"""Nested and shadow s1-mode give identical results (DESIGN.md "Two ways to carry a guest
stage 1 into the host"): the same randomized driver workload — streams with and without
stage 2 and SubstreamIDs, maps and unmaps with the TLB invalidations a driver issues, CD
switches, DMA and TRANSLATE of every kind, faults included — runs against one model of each
mode; every answer and every event record must match."""

from __future__ import annotations

import random
from typing import Any

import pytest

from devices.model import DmaFault, DmaTarget, Perm
from devices.pagetable.arm import NG
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder, MapConflict
from devices.smmuv3 import commands as c
from devices.smmuv3.commands import Op
from devices.smmuv3.ste import S1DSS_SSID0, Config
from devices.smmuv3.testing import RAM_BASE, cd_fields, make_rig, s2_fields

PAGE = 4096
BLOCK = 2 << 20
RAM = 16 << 20
PERMS = (Perm.R, Perm.R | Perm.W, Perm.R | Perm.X, Perm.R | Perm.W | Perm.X)


class Workload:
    """One model driven through a seeded sequence of driver and device operations."""

    def __init__(self, mode: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rig, _ = make_rig({"s1-mode": mode, "ssidsize": 4}, ram=RAM)
        rig = self.rig
        self.s1: dict[tuple[int, int], ArmS1Builder] = {}
        self.asids: dict[tuple[int, int], int] = {}
        self.cd_addr: dict[tuple[int, int], int] = {}
        self.vmid = 3
        self.next_asid = 10
        self.mapped: list[tuple[tuple[int, int], int, int]] = []
        # Stream 1: stage 1 only, one CD.  Stream 2: nested, SubstreamIDs 0-3 (CD 0 for
        # traffic without one).  Stream 3: stage 2 only.
        self.s2 = ArmS2Builder(rig.mem, rig.alloc, tsz=20)
        for gpa in range(RAM_BASE, RAM_BASE + RAM, BLOCK):
            self.s2.map(gpa, gpa, BLOCK, Perm.R | Perm.W | Perm.X)
        self.s2.map(0x1_0000_0000, rig.data, BLOCK, Perm.R | Perm.W)  # an IPA alias of data
        one = rig.cd_table(0)
        self._cd(1, 0, one)
        rig.ste(1, Config=Config.S1, S1ContextPtr=one >> 6)
        table = rig.cd_table(2)
        for ssid in range(4):
            self._cd(2, ssid, table + 64 * ssid)
        rig.ste(2, Config=Config.NESTED, S1ContextPtr=table >> 6, S1CDMax=2,
                S1DSS=S1DSS_SSID0, **s2_fields(self.s2, S2VMID=self.vmid))
        rig.ste(3, Config=Config.S2, **s2_fields(self.s2, S2VMID=self.vmid + 1))

    def _cd(self, sid: int, ssid: int, addr: int) -> None:
        s1 = ArmS1Builder(self.rig.mem, self.rig.alloc)
        self.s1[(sid, ssid)] = s1
        self.asids[(sid, ssid)] = asid = self.next_asid + sid * 4 + ssid
        self.cd_addr[(sid, ssid)] = addr
        self.rig.cd(addr, **cd_fields(s1, ASID=asid))

    # -- operations -------------------------------------------------------------------------

    def step(self) -> Any:
        rng = self.rng
        op = rng.choices(["map", "unmap", "dma", "translate", "switch_cd", "s2_change"],
                         [5, 2, 8, 3, 1, 1])[0]
        return getattr(self, op)()

    def _table(self) -> tuple[tuple[int, int], ArmS1Builder]:
        key = self.rng.choice(sorted(self.s1))
        return key, self.s1[key]

    def map(self) -> Any:
        key, s1 = self._table()
        rng = self.rng
        size = BLOCK if rng.random() < 0.2 else PAGE
        iova = rng.randrange(0, 64 * BLOCK, size)
        gpa = self.rig.data + rng.randrange(0, RAM // 2, size)
        if key[0] == 2 and rng.random() < 0.3:
            gpa = 0x1_0000_0000 + rng.randrange(0, BLOCK, size)  # through the IPA alias
        if rng.random() < 0.05:
            gpa = 0x2_0000_0000  # an IPA stage 2 does not map (nested) / not RAM (S1 only)
        try:
            s1.map(iova, gpa, size, rng.choice(PERMS), user=rng.random() < 0.5, extra=NG)
        except MapConflict:
            return ("conflict",)
        self.mapped.append((key, iova, size))
        return ("map", key, iova, size)  # new mappings need no invalidation

    def unmap(self) -> Any:
        key, s1 = self._table()
        iova = self.rng.randrange(0, 64 * BLOCK, PAGE)
        removed = s1.unmap(iova & ~(BLOCK - 1), BLOCK)
        rig = self.rig
        if self.rng.random() < 0.5:
            rig.command(Op.TLBI_NH_VA, ASID=self.asids[key], Address=(iova & ~(BLOCK - 1)) >> 12,
                        TG=c.TG_4K, NUM=31, SCALE=4, TTL=0)
        else:
            rig.command(Op.TLBI_NH_ASID, ASID=self.asids[key],
                        VMID=self.vmid if key[0] == 2 else 0)
        rig.sync()
        return ("unmap", key, removed)

    def _request(self) -> tuple[int, int, int | None, dict[str, bool]]:
        rng = self.rng
        sid = rng.choice((1, 2, 2, 3))
        pasid = None
        if sid == 2 and rng.random() < 0.7:
            pasid = rng.randrange(0, 5)  # 0 is refused (S1DSS = SSID0), 4 is out of range
        if sid == 3:
            iova = rng.choice((self.rig.data, 0x1_0000_0000, 0x3_0000_0000)) + \
                rng.randrange(0, BLOCK, 8)
        elif self.mapped and rng.random() < 0.7:
            # Mostly where something was mapped (maybe since unmapped), from its stream.
            (sid, ssid), base, size = rng.choice(self.mapped)
            iova = base + rng.randrange(0, size, 8)
            if sid == 2:
                pasid = None if ssid == 0 and rng.random() < 0.5 else ssid
        else:
            iova = rng.randrange(0, 64 * BLOCK, 8)
        flags = {"write": rng.random() < 0.4, "privileged": rng.random() < 0.5}
        flags["execute"] = not flags["write"] and rng.random() < 0.2
        return sid, iova, pasid, flags

    def dma(self) -> Any:
        sid, iova, pasid, flags = self._request()
        return ("dma", _outcome(self.rig.dma(sid, iova, pasid=pasid, **flags)))

    def translate(self) -> Any:
        sid, iova, pasid, flags = self._request()
        return ("translate", _outcome(self.rig.dma(sid, iova, pasid=pasid, record=False,
                                                   **flags)))

    def switch_cd(self) -> Any:
        """Give a CD a fresh table and ASID, as a driver switching address spaces does."""
        key, _ = self._table()
        self.next_asid += 16
        self._cd(key[0], key[1], self.cd_addr[key])
        self.rig.command(Op.CFGI_CD, StreamID=key[0], SubstreamID=key[1])
        self.rig.sync()
        return ("switch", key)

    def s2_change(self) -> Any:
        """Move the IPA alias to other data, with the invalidation a hypervisor issues."""
        rig = self.rig
        self.s2.unmap(0x1_0000_0000, BLOCK)
        self.s2.map(0x1_0000_0000, rig.data + self.rng.randrange(0, RAM // 2, BLOCK), BLOCK,
                    Perm.R | Perm.W)
        rig.command(Op.TLBI_S2_IPA, VMID=self.vmid, Address=0x1_0000_0000 >> 12)
        rig.command(Op.TLBI_S2_IPA, VMID=self.vmid + 1, Address=0x1_0000_0000 >> 12)
        rig.command(Op.TLBI_NH_ALL, VMID=self.vmid)
        rig.sync()
        return ("s2",)


def _outcome(got: DmaTarget | DmaFault) -> tuple[Any, ...]:
    if isinstance(got, DmaFault):
        return ("fault", int(got.kind), got.code, got.address, got.stage)
    return ("ok", got.gpa, got.size, int(got.perms), got.hpa)


def _run(mode: str, seed: int, steps: int) -> tuple[list[Any], list[Any]]:
    w = Workload(mode, seed)
    answers = []
    events = []
    for _ in range(steps):
        answers.append(w.step())
        events.append([(e.type, e.fields) for e in w.rig.events()])
    return answers, events


@pytest.mark.parametrize("seed", range(10))
def test_nested_and_shadow_agree_on_a_random_workload(seed: int) -> None:
    nested = _run("nested", seed, 400)
    shadow = _run("shadow", seed, 400)
    assert nested[0] == shadow[0]
    assert nested[1] == shadow[1]
    kinds = {a[1][0] for a in nested[0] if a[0] in ("dma", "translate")}
    assert kinds == {"ok", "fault"}  # the workload exercises both
