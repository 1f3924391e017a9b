"""The vSMMUv3 fuzz target (Arm IHI 0070; digest: reference/smmuv3.md §1-§5).

Guest RAM (region A, 2 MiB at 0, and a far region B past a hole):

=================  ===========================================================
0x000000           command queue (256 × 16 B)
0x001000           event queue (128 × 32 B)
0x002000           PRI queue (256 × 16 B)
0x004000           linear stream table (256 STEs)
0x008000           L1 stream table descriptors; L2 STE tables at 0x00C000
0x010000           CD tables (4 × 64 CDs); L1 CD table at 0x014000, L2 at 0x015000
0x040000-0x13FFFF  page-table arenas: S1 4K, S2 4K (39-bit IPA), S1 64K, S1 16K
0x140000-0x1FFFFF  data pages;  0x300000-0x30FFFF region B
=================  ===========================================================

Queue operations (semantic, resolved against the registers when they run):

======  ===================  ==============================================================
cmds    count; data          write ``count`` 16-byte commands at CMDQ_PROD (wrapping) and
                             publish them with a CMDQ_PROD write
evtq    —                    consume every event: EVENTQ_CONS := EVENTQ_PROD (OVFLG acked)
priq    —                    the same for the PRI queue
======  ===================  ==============================================================

Invariants after every step (besides the common ones): the ID registers never change;
CR0ACK equals CR0 and IRQ_CTRLACK equals IRQ_CTRL (this model acknowledges synchronously);
GBPA.UPDATE reads 0; a new CMDQ_CONS.ERR comes with GERROR.CMDQ_ERR active.
"""

from __future__ import annotations

from typing import ClassVar

from devices.pagetable.builders import ArmS1Builder, ArmS2Builder
from devices.smmuv3 import regs as r
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Source, Step, chance, pick
from vmm.fuzz.targets.base import Area, Arena, Generator, ModelTarget, Op
from vmm.fuzz.world import World

CMDQ, EVTQ, PRIQ = 0x0000, 0x1000, 0x2000
STRTAB, L1STD, L2STE = 0x4000, 0x8000, 0xC000
CDTAB, L1CD, L2CD = 0x10000, 0x14000, 0x15000
S1_4K, S2_4K, S1_64K, S1_16K = 0x40000, 0x80000, 0xC0000, 0x100000
DATA = 0x140000
FAR = 0x300000
S2_TSZ = 25  # a 39-bit IPA: start level 1 with 4 KiB pages
_LOG2 = r.CMDQ_BASE.LOG2SIZE.mask  # the same bits [4:0] in EVENTQ_BASE and PRIQ_BASE
_QMAX = r.QUEUE_LOG2SIZE_MAX

OP_PREFETCH_CONFIG, OP_PREFETCH_ADDR, OP_CFGI_STE, OP_CFGI_STE_RANGE = 0x01, 0x02, 0x03, 0x04
OP_CFGI_CD, OP_CFGI_CD_ALL = 0x05, 0x06
OP_TLBI_NH_ALL, OP_TLBI_NH_ASID, OP_TLBI_NH_VA, OP_TLBI_NH_VAA = 0x10, 0x11, 0x12, 0x13
OP_TLBI_EL3_ALL, OP_TLBI_EL3_VA = 0x18, 0x1A
OP_TLBI_EL2_ALL, OP_TLBI_EL2_ASID, OP_TLBI_EL2_VA, OP_TLBI_EL2_VAA = 0x20, 0x21, 0x22, 0x23
OP_TLBI_S12_VMALL, OP_TLBI_S2_IPA, OP_TLBI_NSNH_ALL = 0x28, 0x2A, 0x30
OP_ATC_INV, OP_PRI_RESP, OP_RESUME, OP_STALL_TERM, OP_SYNC = 0x40, 0x41, 0x44, 0x45, 0x46
OPCODES = (OP_PREFETCH_CONFIG, OP_PREFETCH_ADDR, OP_CFGI_STE, OP_CFGI_STE_RANGE, OP_CFGI_CD,
           OP_CFGI_CD_ALL, OP_TLBI_NH_ALL, OP_TLBI_NH_ASID, OP_TLBI_NH_VA, OP_TLBI_NH_VAA,
           OP_TLBI_EL3_ALL, OP_TLBI_EL3_VA, OP_TLBI_EL2_ALL, OP_TLBI_EL2_ASID, OP_TLBI_EL2_VA,
           OP_TLBI_EL2_VAA, OP_TLBI_S12_VMALL, OP_TLBI_S2_IPA, OP_TLBI_NSNH_ALL, OP_ATC_INV,
           OP_PRI_RESP, OP_RESUME, OP_STALL_TERM, OP_SYNC)
SIDS = (0, 1, 2, 3, 4, 0x3F, 0x40, 0x41, 0xFF, 0x100, 0xFFFF)
IOVAS = (0x0, 0x1000_0000, 0x7F_FFF0_0000, 0x8000_0000_0000, 0xFFFF_FFFF_FFF0_0000,
         DATA, FAR)


def step_op(step: Step | str) -> str:
    return step.op if isinstance(step, Step) else ""


def put(value: int, lsb: int, width: int) -> int:
    return (value & ((1 << width) - 1)) << lsb


def words(*dwords: int) -> bytes:
    return b"".join((d & (1 << 64) - 1).to_bytes(8, "little") for d in dwords)


def command(src: Source) -> bytes:
    """One plausible command: a real opcode with fields in their places (§4 of IHI 0070)."""
    op = pick(src, OPCODES) if src.below(32) else src.below(256)
    sid = pick(src, SIDS)
    ssid = src.below(4) if src.below(4) else src.bits(20)
    ssv = src.below(2)
    dw0 = op | put(ssv, 11, 1) | put(ssid, 12, 20) | put(sid, 32, 32)
    dw1 = 0
    if op in (OP_CFGI_STE, OP_CFGI_CD):
        dw1 = src.below(2)  # Leaf
    elif op == OP_CFGI_STE_RANGE:
        dw1 = 31 if src.below(2) else src.below(32)
    elif op in (OP_TLBI_NH_ALL, OP_TLBI_NH_ASID, OP_TLBI_NH_VA, OP_TLBI_NH_VAA, OP_TLBI_S12_VMALL,
                OP_TLBI_S2_IPA, OP_TLBI_EL2_ASID, OP_TLBI_EL2_VA, OP_TLBI_EL2_VAA):
        asid, vmid = src.below(4), src.below(4)
        dw0 = op | put(src.below(32), 12, 5) | put(src.below(32) if chance(src, 2) else 0, 20, 5)
        dw0 |= put(vmid, 32, 16) | put(asid, 48, 16)
        tg = src.below(4)
        dw1 = src.below(2) | put(src.below(4), 8, 2) | put(tg, 10, 2)
        dw1 |= (pick(src, IOVAS) + 0x1000 * src.below(16)) & ~0xFFF
    elif op in (OP_ATC_INV,):
        dw0 |= put(src.below(2), 9, 1)
        dw1 = pick(src, (0, 1, 12, 52, 63)) | ((pick(src, IOVAS)) & ~0xFFF)
    elif op == OP_PRI_RESP:
        dw1 = src.below(512) | put(src.below(4), 12, 2)
    elif op == OP_RESUME:
        dw0 |= put(src.below(4), 12, 2)
        dw1 = src.bits(16)
    elif op == OP_SYNC:
        cs = src.below(4)
        dw0 = op | put(cs, 12, 2) | put(3, 22, 2) | put(0xF, 24, 4) | put(src.bits(32), 32, 32)
        dw1 = pick(src, (0, CMDQ, DATA, FAR, 0x0900_0000, src.bits(52))) & ~0x3
    elif op == OP_PREFETCH_ADDR:
        dw1 = src.below(32) | (pick(src, IOVAS) & ~0xFFF)
    return words(dw0, dw1)


def ste(src: Source) -> bytes:
    """A plausible stream table entry (§5.2): valid, a real Config, pointers into the arenas."""
    config = pick(src, (0b000, 0b100, 0b101, 0b110, 0b111, 0b101, 0b111)) if src.below(16) \
        else src.below(8)
    s1fmt = 0 if src.below(3) else 1 + src.below(2)
    cd_ptr = CDTAB + 0x1000 * src.below(4) if s1fmt == 0 else L1CD
    dw0 = 1 | put(config, 1, 3) | put(s1fmt, 4, 2) | (cd_ptr & 0x000F_FFFF_FFFF_FFC0)
    dw0 |= put(src.below(7), 59, 5)  # S1CDMax
    dw1 = put(src.below(3), 0, 2) | put(1, 2, 2) | put(1, 4, 2) | put(3, 6, 2)
    dw1 |= put(src.below(3), 28, 2)  # EATS
    s2ps = min(src.below(7), 6)
    dw2 = put(src.below(4), 0, 16) | put(S2_TSZ, 32, 6) | put(1, 38, 2) | put(1, 40, 2)
    dw2 |= put(1, 42, 2) | put(3, 44, 2) | put(s2ps, 48, 3) | put(1, 51, 1)
    dw2 |= put(src.below(2), 58, 1)  # S2R
    dw3 = S2_4K & 0x000F_FFFF_FFFF_FFF0
    return words(dw0, dw1, dw2, dw3, 0, 0, 0, 0)


def cd(src: Source) -> bytes:
    """A plausible context descriptor (§5.4): 48-bit TTB0 into an S1 arena."""
    k = src.below(4)
    ttb, tg0 = ((S1_4K, 0), (S1_64K, 1), (S1_16K, 2), (S1_4K, 0))[k]
    tsz = 16 if src.below(4) else src.below(64)
    dw0 = put(tsz, 0, 6) | put(tg0, 6, 2) | put(1, 8, 2) | put(1, 10, 2) | put(3, 12, 2)
    dw0 |= put(src.below(2) if chance(src, 4) else 0, 14, 1)  # EPD0
    dw0 |= put(16, 16, 6) | put(2, 22, 2) | put(1, 30, 1)  # T1SZ/TG1 4K/EPD1
    dw0 |= put(1, 31, 1) | put(min(src.below(8), 6), 32, 3) | put(1, 41, 1)  # V, IPS, AA64
    dw0 |= put(src.below(2), 45, 1) | put(1, 46, 1) | put(src.below(4), 48, 16)  # R, A, ASID
    dw1 = ttb & 0x000F_FFFF_FFFF_FFF0
    return words(dw0, dw1, 0, 0xFF, 0, 0, 0, 0)


def l1std(src: Source) -> bytes:
    span = pick(src, (0, 1, 7, 8, 12, 31)) if chance(src, 2) else 7
    return words(put(span, 0, 5) | ((L2STE + 0x1000 * src.below(4)) & 0x000F_FFFF_FFFF_FFC0))


def l1cd(src: Source) -> bytes:
    return words(src.below(2) | ((L2CD + 0x1000 * src.below(3)) & 0x000F_FFFF_FFFF_F000))


def pte(src: Source) -> bytes:
    """A VMSAv8-64 descriptor: table or page/block, pointing into the arenas or data."""
    out = pick(src, (S1_4K, S2_4K, S1_64K, DATA, FAR)) + 0x1000 * src.below(16)
    kind = pick(src, (0b11, 0b01, 0b00, 0b11))
    attrs = put(1, 10, 1) | put(3, 8, 2) | put(src.below(4), 6, 2) | put(src.below(2), 53, 2)
    return words(kind | (out & 0x0000_FFFF_FFFF_F000) | attrs)


class Smmuv3Target(ModelTarget):
    name = "smmuv3"
    model = "smmuv3"
    default_device = "smmuv3,ssidsize=8,stage=nested"
    variants = (default_device, "smmuv3,stage=s1,ssidsize=8", "smmuv3,stage=s2",
                "smmuv3,stage=nested,ssidsize=8,s1-mode=shadow",
                "smmuv3,stage=nested,oas=52,ssidsize=20")
    layout: ClassVar[list[tuple[int, int]]] = [(0, 0x200000), (FAR, 0x10000)]
    data_pages = tuple(DATA + 0x1000 * i for i in range(32)) + (FAR, FAR + 0x1000)
    iovas = IOVAS
    requesters = SIDS
    stable = tuple(reg.name for reg in r.ID_REGISTERS)

    def make_areas(self) -> tuple[Area, ...]:
        return (
            Area("ste", STRTAB, 64, 256, ste),
            Area("l1std", L1STD, 8, 256, l1std),
            Area("l2ste", L2STE, 64, 256, ste),
            Area("cd", CDTAB, 64, 256, cd),
            Area("l1cd", L1CD, 8, 64, l1cd),
            Area("l2cd", L2CD, 64, 192, cd),
            Area("pte-s1", S1_4K, 8, 0x8000, pte),
            Area("pte-s2", S2_4K, 8, 0x8000, pte),
            Area("cmdq", CMDQ, 16, 256, command),
        )

    def make_arenas(self) -> tuple[Arena, ...]:
        return (
            Arena("s1-4k", S1_4K, 0x40000, lambda mem, a: ArmS1Builder(mem, a, 4096, 16),
                  (4096, 2 << 20)),
            Arena("s2-4k", S2_4K, 0x40000,
                  lambda mem, a: ArmS2Builder(mem, a, 4096, S2_TSZ), (4096, 2 << 20)),
            Arena("s1-64k", S1_64K, 0x40000, lambda mem, a: ArmS1Builder(mem, a, 65536, 16),
                  (65536,)),
            Arena("s1-16k", S1_16K, 0x40000, lambda mem, a: ArmS1Builder(mem, a, 16384, 16),
                  (16384,)),
        )

    def extra_ops(self) -> dict[str, Op]:
        return {"cmds": self._op_cmds, "evtq": self._op_consume("EVENTQ"),
                "priq": self._op_consume("PRIQ")}

    weights: ClassVar[dict[str, int]] = {"cmds": 14, "evtq": 3, "priq": 1, "control": 6}

    def extra_generators(self) -> dict[str, Generator]:
        return {"cmds": self.gen_cmds, "evtq": lambda src: Step("evtq"),
                "priq": lambda src: Step("priq"), "control": self.gen_control}

    # -- generators ---------------------------------------------------------------------------

    def gen_cmds(self, src: Source) -> Step:
        count = 1 + src.below(4) if src.below(8) else 1 + src.below(64)
        return Step("cmds", (count,), b"".join(command(src) for _ in range(count)))

    def gen_control(self, src: Source) -> Step:
        """The writes a driver makes: queue bases at the queues, CR0 bits, GBPA.UPDATE."""
        k = src.below(6)
        if k == 0:
            log2 = min(src.below(9), 8)
            return Step("w", (r.CMDQ_BASE.offset, 8, CMDQ | log2 | 1 << 62))
        if k == 1:
            log2 = min(src.below(8), 7)
            return Step("w", (r.EVENTQ_BASE.offset, 8, EVTQ | log2 | 1 << 62))
        if k == 2:
            fmt = src.below(2)
            base = L1STD if fmt else STRTAB
            cfg = put(fmt, 16, 2) | put(6, 6, 5) | (min(src.below(17), 16) if fmt
                                                    else min(src.below(9), 8))
            return Step("w", (r.STRTAB_BASE_CFG.offset, 4, cfg)) if src.below(2) else \
                Step("w", (r.STRTAB_BASE.offset, 8, base | 1 << 62))
        if k == 3:
            bit = pick(src, r.CR0.fields)
            return Step("rmw", (r.CR0.offset, 4, bit.mask, bit.mask if src.below(3) else 0))
        if k == 4:
            return Step("w", (r.GBPA.offset, 4, r.GBPA.UPDATE.mask
                              | r.GBPA.ABORT.prep(src.below(2))))
        return Step("w", (r.PRIQ_BASE.offset, 8, PRIQ | min(src.below(9), 8) | 1 << 62))

    # -- queue operations ---------------------------------------------------------------------

    def _op_cmds(self, world: World, step: Step) -> None:
        base_reg = world.reg("CMDQ_BASE")
        log2 = min(r.CMDQ_BASE.LOG2SIZE.get(base_reg), r.QUEUE_LOG2SIZE_MAX)
        base = r.CMDQ_BASE.ADDR.get(base_reg) << r.CMDQ_BASE.ADDR.lsb
        base &= ~((16 << log2) - 1)
        prod = world.reg("CMDQ_PROD")
        span = 1 << (log2 + 1)
        wr = prod & (span - 1)
        count = min(step.args[0], len(step.data) // 16)
        for i in range(count):
            index = (wr + i) & ((1 << log2) - 1)
            world.guest_write(base + 16 * index, step.data[16 * i : 16 * i + 16])
        world.write_reg("CMDQ_PROD", (prod & ~(span - 1)) | ((wr + count) & (span - 1)))

    @staticmethod
    def _op_consume(queue: str) -> Op:
        def consume(world: World, step: Step) -> None:
            prod = world.reg(f"{queue}_PROD")
            world.write_reg(f"{queue}_CONS", prod & 0x800F_FFFF)
        return consume

    # -- oracle support -------------------------------------------------------------------------

    def queue_entries(self, world: World) -> int:
        assert world.regs is not None
        values: dict[str, int] = world.regs.values
        return ((1 << min(values["CMDQ_BASE"] & _LOG2, _QMAX))
                + (1 << min(values["EVENTQ_BASE"] & _LOG2, _QMAX))
                + (1 << min(values["PRIQ_BASE"] & _LOG2, _QMAX)))

    def invalidate_all(self, world: World) -> bool:
        """CFGI_ALL, TLBI_NSNH_ALL (and TLBI_EL2_ALL with IDR0.HYP, where it is legal),
        CMD_SYNC; effective when the queue ran dry without an error while CMDQEN was on."""
        cmds = words(OP_CFGI_STE_RANGE, 31) + words(OP_TLBI_NSNH_ALL, 0)
        if r.IDR0.HYP.get(world.state["stable"]["IDR0"]):
            cmds += words(OP_TLBI_EL2_ALL, 0)
        cmds += words(OP_SYNC, 0)
        self._op_cmds(world, Step("cmds", (len(cmds) // 16,), cmds))
        if not r.CR0.CMDQEN.get(world.reg("CR0ACK")):
            return False
        if (world.reg("GERROR") ^ world.reg("GERRORN")) & r.GERROR.CMDQ_ERR.mask:
            return False
        log2 = min(r.CMDQ_BASE.LOG2SIZE.get(world.reg("CMDQ_BASE")), r.QUEUE_LOG2SIZE_MAX)
        span = (1 << (log2 + 1)) - 1
        return world.reg("CMDQ_PROD") & span == world.reg("CMDQ_CONS") & span

    def start(self, world: World) -> None:
        super().start(world)
        world.state["cmdq_err"] = 0

    def check_model(self, world: World, step: Step | str, full: bool) -> None:
        wrote = world.wrote
        read = world.model.mmio_read
        if full or "CR0" in wrote or step_op(step) == "reset":
            cr0, ack = read(r.CR0.offset, 4), read(r.CR0ACK.offset, 4)
            if cr0 != ack:
                raise Failure("handshake:CR0ACK", f"{step}: CR0 {cr0:#x} but CR0ACK {ack:#x}")
        if full or "IRQ_CTRL" in wrote:
            irq, irq_ack = read(r.IRQ_CTRL.offset, 4), read(r.IRQ_CTRLACK.offset, 4)
            if irq != irq_ack:
                raise Failure("handshake:IRQ_CTRLACK", f"{step}: IRQ_CTRL {irq:#x} but IRQ_CTRLACK "
                                           f"{irq_ack:#x}")
        if (full or "GBPA" in wrote) and read(r.GBPA.offset, 4) & r.GBPA.UPDATE.mask:
            raise Failure("handshake:GBPA", f"{step}: GBPA.UPDATE still reads 1")
        if not wrote and not full:
            return
        err = r.CMDQ_CONS.ERR.get(read(r.CMDQ_CONS.offset, 4))
        if err != world.state["cmdq_err"]:
            world.state["cmdq_err"] = err
            active = read(r.GERROR.offset, 4) ^ read(r.GERRORN.offset, 4)
            if err and "CMDQ_CONS" not in wrote and not active & r.GERROR.CMDQ_ERR.mask:
                raise Failure("handshake:CMDQ_ERR", f"{step}: CMDQ_CONS.ERR={err} without an active "
                                           "GERROR.CMDQ_ERR")

    def seeds(self) -> list[list[Step]]:
        """Linux-like bring-up (arm_smmu_device_reset), then traffic; linear and 2-level."""
        out = []
        for two_level in (False, True):
            steps = [Step("entry", (0, sid), self._seed_ste(sid)) for sid in range(4)]
            if two_level:
                steps += [Step("entry", (1, 0), words(put(7, 0, 5) | L2STE))]
                steps += [Step("entry", (2, sid), self._seed_ste(sid)) for sid in range(4)]
            steps += [Step("entry", (3, i), self._seed_cd(i)) for i in range(2)]
            for page in range(4):
                iova = 0x1000_0000 + 0x1000 * page
                steps.append(Step("map", (0, iova, DATA + 0x1000 * page, 7, 12)))
                steps.append(Step("map", (1, iova, DATA + 0x1000 * page, 7, 12)))
            for table in (CDTAB, S1_4K, S1_4K + 0x1000, S1_4K + 0x2000, S1_4K + 0x3000):
                steps.append(Step("map", (1, table, table, 7, 12)))
            cfg = (put(1, 16, 2) | put(6, 6, 5) | 8) if two_level else 8
            steps += [
                Step("w", (r.CR0.offset, 4, 0)),
                Step("w", (r.GBPA.offset, 4, r.GBPA.UPDATE.mask | r.GBPA.ABORT.mask)),
                Step("w", (r.CR1.offset, 4, 0xD55)),
                Step("w", (r.STRTAB_BASE.offset, 8, (L1STD if two_level else STRTAB) | 1 << 62)),
                Step("w", (r.STRTAB_BASE_CFG.offset, 4, cfg)),
                Step("w", (r.CMDQ_BASE.offset, 8, CMDQ | 8 | 1 << 62)),
                Step("w", (r.CMDQ_PROD.offset, 4, 0)),
                Step("w", (r.CMDQ_CONS.offset, 4, 0)),
                Step("w", (r.EVENTQ_BASE.offset, 8, EVTQ | 7 | 1 << 62)),
                Step("w", (r.PRIQ_BASE.offset, 8, PRIQ | 8 | 1 << 62)),
                Step("w", (r.IRQ_CTRL.offset, 4, 7)),
                Step("w", (r.CR0.offset, 4, 0b1110)),
                Step("cmds", (3,), words(OP_CFGI_STE_RANGE, 31) + words(OP_TLBI_NSNH_ALL, 0)
                     + words(OP_SYNC, 0)),
                Step("w", (r.CR0.offset, 4, 0b1111)),
            ]
            for sid in range(4):
                steps.append(Step("xlate", (sid, 0xFFFF_FFFF, 0x1000_0000, 0)))
                steps.append(Step("dma", (sid, 0xFFFF_FFFF, 0x1000_0000, 64, 1)))
            steps += [Step("evtq"), Step("inv"), Step("dma", (2, 0xFFFF_FFFF, 0x1000_1000, 8, 0))]
            out.append(steps)
        return out

    @staticmethod
    def _seed_ste(sid: int) -> bytes:
        config = (0b100, 0b101, 0b110, 0b111)[sid]
        dw0 = 1 | put(config, 1, 3) | CDTAB
        dw1 = put(2, 0, 2) | put(1, 2, 2) | put(1, 4, 2) | put(3, 6, 2)
        dw2 = put(sid, 0, 16) | put(S2_TSZ, 32, 6) | put(1, 38, 2) | put(4, 48, 3)
        dw2 |= put(1, 51, 1) | put(1, 58, 1)
        return words(dw0, dw1, dw2, S2_4K)

    @staticmethod
    def _seed_cd(asid: int) -> bytes:
        dw0 = put(16, 0, 6) | put(1, 8, 2) | put(1, 10, 2) | put(3, 12, 2) | put(16, 16, 6)
        dw0 |= put(2, 22, 2) | put(1, 30, 1) | put(1, 31, 1) | put(4, 32, 3) | put(1, 41, 1)
        dw0 |= put(1, 45, 1) | put(1, 46, 1) | put(asid, 48, 16)
        return words(dw0, S1_4K, 0, 0xFF)
