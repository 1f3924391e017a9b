"""The harness's SMMUv3 driver: what Linux arm-smmu-v3 does at probe time.

Offsets and bits are the driver's own (as in Linux ``arm-smmu-v3.h``), deliberately not
imported from the model's declarations, so a wrong model offset shows up as a driver failure.
Sequence (``arm_smmu_device_hw_probe`` / ``arm_smmu_device_reset``): read the ID registers,
disable (CR0 := 0, wait for CR0ACK), program CR1/CR2, the stream table and the queues,
enable the queues, then SMMUEN, each step acknowledged through CR0ACK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmm.harness import Client, GuestRam

IDR0, IDR1, IDR3, IDR5 = 0x00, 0x04, 0x0C, 0x14
CR0, CR0ACK, CR1, CR2 = 0x20, 0x24, 0x28, 0x2C
GBPA = 0x44
IRQ_CTRL, IRQ_CTRLACK = 0x50, 0x54
GERROR, GERRORN = 0x60, 0x64
STRTAB_BASE, STRTAB_BASE_CFG = 0x80, 0x88
CMDQ_BASE, CMDQ_PROD, CMDQ_CONS = 0x90, 0x98, 0x9C
EVTQ_BASE, EVTQ_PROD, EVTQ_CONS = 0xA0, 0x100A8, 0x100AC
PRIQ_BASE, PRIQ_PROD, PRIQ_CONS = 0xC0, 0x100C8, 0x100CC

CR0_SMMUEN, CR0_PRIQEN, CR0_EVTQEN, CR0_CMDQEN = 1 << 0, 1 << 1, 1 << 2, 1 << 3
GBPA_UPDATE, GBPA_ABORT = 1 << 31, 1 << 20
IRQ_CTRL_GERROR, IRQ_CTRL_PRI, IRQ_CTRL_EVTQ = 1 << 0, 1 << 1, 1 << 2
Q_BASE_RWA = 1 << 62
# CR1: inner/outer write-back, inner-shareable for queues and tables.
CR1_WB_ISH = (1 << 0) | (1 << 2) | (3 << 4) | (1 << 6) | (1 << 8) | (3 << 10)


@dataclass
class ProbeResult:
    idr0: int = 0
    idr1: int = 0
    idr3: int = 0
    idr5: int = 0
    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.steps)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.steps.append((name, ok, detail))


class SMMUv3Driver:
    def __init__(self, client: Client, device: int, ram: GuestRam) -> None:
        self.client = client
        self.device = device
        self.ram = ram

    async def read(self, offset: int, size: int = 4) -> int:
        return await self.client.mmio_read(self.device, offset, size)

    async def write(self, offset: int, value: int, size: int = 4) -> None:
        await self.client.mmio_write(self.device, offset, value, size)

    async def write_cr0(self, value: int, result: ProbeResult, what: str) -> None:
        await self.write(CR0, value)
        ack = await self.read(CR0ACK)
        result.check(what, ack == value, f"CR0ACK={ack:#x}")

    async def probe(self) -> ProbeResult:
        r = ProbeResult()
        r.idr0 = await self.read(IDR0)
        r.idr1 = await self.read(IDR1)
        r.idr3 = await self.read(IDR3)
        r.idr5 = await self.read(IDR5)
        r.check("IDR0.TTF AArch64", (r.idr0 >> 2) & 3 in (2, 3), f"IDR0={r.idr0:#x}")
        r.check("IDR0 has a stage", r.idr0 & 3 != 0)
        await self.write_cr0(0, r, "disable (CR0 := 0)")
        # GBPA: abort unmatched traffic while we program the tables (Linux's disable_bypass).
        await self.write(GBPA, GBPA_UPDATE | GBPA_ABORT)
        gbpa = await self.read(GBPA)
        r.check("GBPA.UPDATE completes", gbpa & GBPA_UPDATE == 0 and gbpa & GBPA_ABORT != 0,
                f"GBPA={gbpa:#x}")
        await self.write(CR1, CR1_WB_ISH)
        await self.write(CR2, 0)
        sid_bits = min(r.idr1 & 0x3F, 8)
        strtab = self.ram.alloc(64 << sid_bits, 64 << sid_bits)
        await self.write(STRTAB_BASE, strtab | Q_BASE_RWA, 8)
        await self.write(STRTAB_BASE_CFG, sid_bits)  # linear, LOG2SIZE = sid_bits
        base = await self.read(STRTAB_BASE, 8)
        r.check("STRTAB_BASE stored", base & ~0x3F == strtab | Q_BASE_RWA, f"{base:#x}")
        for qbase, prod, cons, entry, log2 in (
            (CMDQ_BASE, CMDQ_PROD, CMDQ_CONS, 16, 8),
            (EVTQ_BASE, EVTQ_PROD, EVTQ_CONS, 32, 7),
        ):
            q = self.ram.alloc(entry << log2, max(32, entry << log2))
            await self.write(qbase, q | Q_BASE_RWA | log2, 8)
            await self.write(prod, 0)
            await self.write(cons, 0)
            stored = await self.read(qbase, 8)
            r.check(f"queue base {qbase:#x} stored", stored == q | Q_BASE_RWA | log2,
                    f"{stored:#x}")
        enables = CR0_CMDQEN
        await self.write_cr0(enables, r, "CMDQEN")
        enables |= CR0_EVTQEN
        await self.write_cr0(enables, r, "EVENTQEN")
        await self.write(IRQ_CTRL, IRQ_CTRL_GERROR | IRQ_CTRL_EVTQ)
        ack = await self.read(IRQ_CTRLACK)
        r.check("IRQ_CTRLACK", ack == IRQ_CTRL_GERROR | IRQ_CTRL_EVTQ, f"{ack:#x}")
        gerror, gerrorn = await self.read(GERROR), await self.read(GERRORN)
        r.check("no global error", gerror == gerrorn, f"GERROR={gerror:#x} GERRORN={gerrorn:#x}")
        enables |= CR0_SMMUEN
        await self.write_cr0(enables, r, "SMMUEN")
        return r
