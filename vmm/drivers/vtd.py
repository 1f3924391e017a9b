"""The harness's VT-d driver: what Linux intel-iommu does to bring a remapping unit up.

Offsets and bits are the driver's own (Linux ``include/linux/intel-iommu.h`` /
``drivers/iommu/intel/iommu.h``), not the model's declarations.  Sequence
(``init_dmars`` / ``iommu_set_root_entry`` / ``dmar_enable_qi`` / ``iommu_enable_translation``):
read VER/CAP/ECAP, program the root table and latch it with SRTP, enable queued invalidation,
then translation, each command one bit per GCMD write computed from GSTS.
"""

from __future__ import annotations

from vmm.drivers.smmuv3 import ProbeResult
from vmm.harness import Client, GuestRam

VER, CAP, ECAP = 0x00, 0x08, 0x10
GCMD, GSTS, RTADDR, CCMD = 0x18, 0x1C, 0x20, 0x28
FSTS, FECTL = 0x34, 0x38
IQH, IQT, IQA, ICS = 0x80, 0x88, 0x90, 0x9C

GCMD_TE, GCMD_SRTP, GCMD_QIE = 1 << 31, 1 << 30, 1 << 26
GSTS_TES, GSTS_RTPS, GSTS_QIES = 1 << 31, 1 << 30, 1 << 26
# One-shot status bits that must not be written back into GCMD (Linux: 0x96FFFFFF).
GSTS_PERSISTENT = 0x96FF_FFFF
ECAP_QI = 1 << 1
ECAP_SMTS = 1 << 43
RTADDR_TTM_SCALABLE = 1 << 10


class VTdDriver:
    def __init__(self, client: Client, device: int, ram: GuestRam) -> None:
        self.client = client
        self.device = device
        self.ram = ram

    async def read(self, offset: int, size: int = 4) -> int:
        return await self.client.mmio_read(self.device, offset, size)

    async def write(self, offset: int, value: int, size: int = 4) -> None:
        await self.client.mmio_write(self.device, offset, value, size)

    async def gcmd(self, bit: int, status_bit: int, enable: bool, r: ProbeResult, what: str) -> None:
        status = (await self.read(GSTS)) & GSTS_PERSISTENT
        await self.write(GCMD, status | bit if enable else status & ~bit)
        after = await self.read(GSTS)
        r.check(what, bool(after & status_bit) == enable, f"GSTS={after:#x}")

    async def probe(self) -> ProbeResult:
        r = ProbeResult()
        r.idr0 = await self.read(VER)
        cap = await self.read(CAP, 8)
        ecap = await self.read(ECAP, 8)
        r.idr1, r.idr3 = cap, ecap
        sagaw = (cap >> 8) & 0x1F
        r.check("CAP.SAGAW names a supported width", sagaw & 0b1110 != 0, f"CAP={cap:#x}")
        r.check("ECAP.QI", bool(ecap & ECAP_QI), f"ECAP={ecap:#x}")
        r.check("GCMD reads as zero", await self.read(GCMD) == 0)
        root = self.ram.alloc(4096)
        ttm = RTADDR_TTM_SCALABLE if ecap & ECAP_SMTS else 0
        await self.write(RTADDR, root | ttm, 8)
        await self.gcmd(GCMD_SRTP, GSTS_RTPS, True, r, "SRTP latches the root table")
        queue = self.ram.alloc(4096)
        await self.write(IQT, 0, 8)
        await self.write(IQA, queue, 8)  # QS=0: one page, 256 128-bit descriptors
        await self.gcmd(GCMD_QIE, GSTS_QIES, True, r, "queued invalidation enabled")
        r.check("IQH reset to 0", await self.read(IQH, 8) == 0)
        await self.gcmd(GCMD_TE, GSTS_TES, True, r, "translation enabled")
        fsts = await self.read(FSTS)
        r.check("no fault status", fsts == 0, f"FSTS={fsts:#x}")
        return r
