"""The vVT-d fuzz target (VT-d rev 5.10; digest: reference/vtd.md §1-§4).

The unit is built with every feature on (scalable mode, PASIDs, device-TLB, PRI, nesting,
virtual commands, interrupt remapping, caching mode) so that one target reaches legacy mode
(RTADDR.TTM = 00) and scalable mode alike.

Guest RAM (region A, 2 MiB at 0, and a far region B past a hole):

=================  ===========================================================
0x000000           invalidation queue (4 KiB: 256 × 16 B or 128 × 32 B)
0x002000           page request queue (4 KiB)
0x004000           root table (256 × 16 B)
0x005000           context tables (4 × 4 KiB; legacy 16 B or scalable 32 B entries)
0x00A000           PASID directory; PASID tables at 0x00B000 (4 × 64 × 64 B)
0x00F000           status words of wait descriptors
0x040000-0x0FFFFF  page-table arenas: second stage 4-level, first stage 4-level, SS 3-level
0x140000-0x1FFFFF  data pages;  0x300000-0x30FFFF region B
=================  ===========================================================

Semantic operations:

======  ===================  ==============================================================
qi      count; data          write descriptors (16 or 32 B each, fitted to IQA.DW) at IQT
                             and publish them with an IQT write
pqc     —                    PQH := PQT
gcmd    bit, set             the spec's recipe: GCMD := (GSTS & 0x96FFFFFF) with one bit
                             set or cleared
======  ===================  ==============================================================

Invariants after every step (besides the common ones): VER/CAP/ECAP/VCCAP never change; after
a GCMD write GSTS reports the command (TES = TE; QIES = QIE unless a disable was refused
because IQH ≠ IQT; IRES/CFIS follow IRE/CFI with ECAP.IR, else 0; WBFS 0 without CAP.RWBF);
IQH reads 0 while QIES = 0; FSTS.PPF is set exactly when some FRCD.F is; an event's IP is set
only while its IM is; CCMD.ICC and IOTLB.IVT read 0 (register invalidation is synchronous).
"""

from __future__ import annotations

from typing import ClassVar

from devices.pagetable.builders import VtdSsBuilder, X86Builder
from devices.vtd import regs as r
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Source, Step, chance, pick
from vmm.fuzz.targets.base import Area, Arena, Generator, ModelTarget, Op
from vmm.fuzz.targets.smmuv3 import put, words
from vmm.fuzz.world import World

IQ, PQ, ROOT, CTX, PASID_DIR, PASID_TAB, STATUS = (
    0x0000, 0x2000, 0x4000, 0x5000, 0xA000, 0xB000, 0xF000)
SS4, FS4, SS3 = 0x40000, 0x80000, 0xC0000
DATA = 0x140000
FAR = 0x300000

RIDS = (0x0000, 0x0008, 0x0010, 0x0100, 0x00FF, 0x0101, 0xFF00, 0xFFFF)
IOVAS = (0x0, 0x1000_0000, 0x7F_FFF0_0000, 0xFFFF_8000_0000_0000, DATA, FAR,
         0x10_0000_0000_0000)
GCMD_BITS = (31, 30, 27, 26, 25, 24, 23)  # TE, SRTP, WBF, QIE, IRE, SIRTP, CFI
_GSTS_IR_BITS = (r.GSTS.IRES.mask | r.GSTS.IRTPS.mask | r.GSTS.CFIS.mask)
_GSTS, _FSTS = r.GSTS.offset, r.FSTS.offset
_QIES, _PPF, _F = r.GSTS.QIES.mask, r.FSTS.PPF.mask, r.FRCD_F.mask
_IP, _IM = r.FECTL.IP.mask, r.FECTL.IM.mask
_ICC, _IVT = r.CCMD.ICC.mask, r.IOTLB.IVT.mask
_QS = r.IQA.QS.mask  # IQA.QS and PQA.PQS are both bits [2:0]
_FRCD_HI_NAMES = tuple(reg.name for reg in r.FRCD_HI)
_FRCD_HI_OFFSETS = tuple(reg.offset for reg in r.FRCD_HI)


def descriptor(src: Source, wide: bool) -> bytes:
    """One plausible invalidation descriptor (§6.5.2): a real type with fields in place."""
    t = pick(src, (1, 2, 3, 4, 5, 5, 6, 7, 8, 9)) if src.below(16) else src.below(128)
    did, sid, pasid = src.below(4), pick(src, RIDS), src.below(4) if src.below(4) else src.bits(20)
    lo = (t & 0xF) | put(t >> 4, 9, 3)
    hi = 0
    if t == 1:
        lo |= put(1 + src.below(3), 4, 2) | put(did, 16, 16) | put(sid, 32, 16) | put(src.below(4), 48, 2)
    elif t == 2:
        lo |= put(1 + src.below(3), 4, 2) | put(src.below(4), 6, 2) | put(did, 16, 16)
        hi = (pick(src, IOVAS) & ~0xFFF) | put(src.below(2), 6, 1) | min(src.below(24), 63)
    elif t == 3:
        lo |= put(src.below(32), 16, 5) | put(sid, 32, 16)
        hi = (pick(src, IOVAS) & ~0xFFF) | src.below(2)
    elif t == 4:
        lo |= put(src.below(2), 4, 1) | put(src.below(8), 27, 5) | put(src.bits(16), 32, 16)
    elif t == 5:
        lo |= put(src.below(16), 4, 4) | put(src.bits(32), 32, 32)
        hi = pick(src, (STATUS, STATUS + 4, DATA, FAR, 0x0900_0000, src.bits(64))) & ~0x3
    elif t == 6:
        lo |= put(2 + src.below(2), 4, 2) | put(did, 16, 16) | put(pasid, 32, 20)
        hi = (pick(src, IOVAS) & ~0xFFF) | put(src.below(2), 6, 1) | min(src.below(24), 63)
    elif t == 7:
        lo |= put(pick(src, (0, 1, 3, 2)), 4, 2) | put(did, 16, 16) | put(pasid, 32, 20)
    elif t == 8:
        lo |= put(src.below(32), 4, 5) | put(sid, 16, 16) | put(pasid, 32, 20)
        hi = src.below(2) | put(src.below(2), 11, 1) | (pick(src, IOVAS) & ~0xFFF)
    elif t == 9:
        lo |= put(src.below(2), 4, 1) | put(pick(src, (0, 1, 0xF, 2)), 12, 4) | put(sid, 16, 16)
        lo |= put(pasid, 32, 20)
        hi = put(src.below(2), 2, 1) | put(src.below(512), 3, 9)
    else:
        lo |= src.bits(64) & ~0xE0F
        hi = src.bits(64)
    return words(lo, hi, 0, 0) if wide else words(lo, hi)


def root_entry(src: Source) -> bytes:
    lo = src.below(2) if chance(src, 8) else 1
    lo |= CTX + 0x1000 * src.below(4)
    hi = (1 | (CTX + 0x1000 * src.below(4))) if src.below(2) else 0
    return words(lo, hi)


def context_entry(src: Source) -> bytes:
    """A legacy context entry (§9.3): TT, second-stage root in an arena, AW, DID."""
    tt = pick(src, (0, 0, 1, 2, 3)) if src.below(8) else src.below(4)
    root, aw = (SS4, 2) if src.below(3) else (SS3, 1)
    lo = 1 | put(src.below(2), 1, 1) | put(tt, 2, 2) | root
    hi = put(aw if src.below(8) else src.below(8), 0, 3) | put(src.below(4), 8, 16)
    return words(lo, hi)


def sm_context_entry(src: Source) -> bytes:
    """A scalable-mode context entry (§9.4): PASID directory pointer and enables."""
    lo = 1 | put(src.below(2), 1, 1) | put(src.below(2), 2, 1) | put(src.below(2), 3, 1)
    lo |= put(src.below(2), 4, 1) | put(min(src.below(4), 7), 9, 3) | PASID_DIR
    return words(lo, src.below(2), 0, 0)


def pasid_dir_entry(src: Source) -> bytes:
    return words(1 | put(src.below(2), 1, 1) | (PASID_TAB + 0x1000 * src.below(4)))


def pasid_entry(src: Source) -> bytes:
    """A scalable-mode PASID table entry (§9.6): PGTT, both stage roots, DID."""
    pgtt = pick(src, (1, 2, 3, 4, 1, 2)) if src.below(16) else src.below(8)
    val0 = 1 | put(src.below(2), 1, 1) | put(2 if src.below(4) else src.below(8), 2, 3)
    val0 |= put(pgtt, 6, 3) | put(src.below(2), 9, 1) | SS4
    val1 = put(src.below(4), 0, 16)
    val2 = put(src.below(2), 0, 1) | put(0 if src.below(4) else src.below(4), 2, 2)
    val2 |= put(src.below(2), 4, 1) | put(src.below(2), 5, 1) | FS4
    return words(val0, val1, val2, 0, 0, 0, 0, 0)


def x86_pte(src: Source) -> bytes:
    """A first- or second-stage entry: present/R-W bits, a table or a page in the arenas."""
    out = pick(src, (SS4, FS4, SS3, DATA, FAR)) + 0x1000 * src.below(16)
    bits = src.below(8) | put(src.below(2), 7, 1) | put(src.below(4), 8, 2)
    return words(out | bits | (put(1, 63, 1) if chance(src, 8) else 0))


class VtdTarget(ModelTarget):
    name = "vtd"
    model = "vtd"
    default_device = ("vtd,scalable-mode=on,pasid-bits=8,device-iotlb=on,pri=on,nesting=on,"
                      "vcmd=on,intremap=on,caching-mode=on")
    variants = (default_device, "vtd", "vtd,aw-bits=39,caching-mode=on",
                "vtd,scalable-mode=on,pasid-bits=8,aw-bits=57",
                "vtd,scalable-mode=on,pasid-bits=20,device-iotlb=on,pri=on,nesting=on")
    layout: ClassVar[list[tuple[int, int]]] = [(0, 0x200000), (FAR, 0x10000)]
    data_pages = tuple(DATA + 0x1000 * i for i in range(32)) + (FAR, FAR + 0x1000)
    iovas = IOVAS
    requesters = RIDS
    stable = ("VER", "CAP", "ECAP", "VCCAP")

    def make_areas(self) -> tuple[Area, ...]:
        return (
            Area("root", ROOT, 16, 256, root_entry),
            Area("context", CTX, 16, 1024, context_entry),
            Area("sm-context", CTX, 32, 512, sm_context_entry),
            Area("pasid-dir", PASID_DIR, 8, 512, pasid_dir_entry),
            Area("pasid", PASID_TAB, 64, 256, pasid_entry),
            Area("pte-ss", SS4, 8, 0x8000, x86_pte),
            Area("pte-fs", FS4, 8, 0x8000, x86_pte),
            Area("iq", IQ, 16, 256, lambda src: descriptor(src, False)),
        )

    def make_arenas(self) -> tuple[Arena, ...]:
        return (
            Arena("ss-4level", SS4, 0x40000, lambda mem, a: VtdSsBuilder(mem, a, 4),
                  (4096, 2 << 20)),
            Arena("fs-4level", FS4, 0x40000, lambda mem, a: X86Builder(mem, a, 4),
                  (4096, 2 << 20)),
            Arena("ss-3level", SS3, 0x40000, lambda mem, a: VtdSsBuilder(mem, a, 3), (4096,)),
        )

    def extra_ops(self) -> dict[str, Op]:
        return {"qi": self._op_qi, "pqc": self._op_pqc, "gcmd": self._op_gcmd}

    weights: ClassVar[dict[str, int]] = {"qi": 14, "pqc": 2, "gcmd": 10, "control": 6}

    def extra_generators(self) -> dict[str, Generator]:
        return {"qi": self.gen_qi, "pqc": lambda src: Step("pqc"), "gcmd": self.gen_gcmd,
                "control": self.gen_control}

    # -- generators ---------------------------------------------------------------------------

    def gen_qi(self, src: Source) -> Step:
        wide = bool(src.below(2))
        count = 1 + src.below(4) if src.below(8) else 1 + src.below(32)
        return Step("qi", (count,), b"".join(descriptor(src, wide) for _ in range(count)))

    def gen_gcmd(self, src: Source) -> Step:
        return Step("gcmd", (pick(src, GCMD_BITS), src.below(4) != 0))

    def gen_control(self, src: Source) -> Step:
        """The writes a driver makes: table/queue pointers into the layout, invalidations."""
        k = src.below(6)
        if k == 0:
            ttm = pick(src, (0, 1, 1, 3, 2))
            return Step("w", (r.RTADDR.offset, 8, ROOT | put(ttm, 10, 2)))
        if k == 1:
            return Step("w", (r.IQA.offset, 8, IQ | put(src.below(2), 11, 1)
                              | (0 if src.below(4) else src.below(8))))
        if k == 2:
            return Step("w", (r.PQA.offset, 8, PQ | (0 if src.below(4) else src.below(8))))
        if k == 3:
            gran = src.below(4)
            return Step("w", (r.CCMD.offset, 8, (1 << 63) | put(gran, 61, 2)
                              | put(src.below(4), 0, 16) | put(pick(src, RIDS), 16, 16)))
        if k == 4:
            return Step("w", (r.IVA.offset, 8, (pick(src, IOVAS) & ~0xFFF)
                              | min(src.below(24), 63)))
        return Step("w", (r.IOTLB.offset, 8, (1 << 63) | put(src.below(4), 60, 2)
                          | put(src.below(4), 32, 16) | put(src.below(4), 48, 2)))

    # -- operations -----------------------------------------------------------------------------

    def _op_qi(self, world: World, step: Step) -> None:
        iqa = world.reg("IQA")
        wide = bool(r.IQA.DW.get(iqa))
        slot = 32 if wide else 16
        queue_bytes = 4096 << min(r.IQA.QS.get(iqa), 7)
        base = iqa & ~0xFFF
        tail = world.reg("IQT") & 0x7FFF0
        data = step.data
        given = 32 if len(data) >= 32 and len(data) % 32 == 0 and data[16:32] == bytes(16) \
            else 16
        count = min(step.args[0], len(data) // given)
        for i in range(count):
            desc = data[given * i : given * i + given]
            desc = (desc + bytes(16))[:slot]
            world.guest_write(base + (tail + slot * i) % queue_bytes, desc)
        world.write_reg("IQT", (tail + slot * count) % queue_bytes)

    def _op_pqc(self, world: World, step: Step) -> None:
        world.write_reg("PQH", world.reg("PQT"))

    def _op_gcmd(self, world: World, step: Step) -> None:
        bit, on = step.args[0] & 31, step.args[1]
        status = world.reg("GSTS") & r.GSTS_PERSISTENT_MASK
        world.write_reg("GCMD", status | (1 << bit) if on else status & ~(1 << bit))

    # -- oracle support -------------------------------------------------------------------------

    def queue_entries(self, world: World) -> int:
        assert world.regs is not None
        values: dict[str, int] = world.regs.values
        return (256 << (values["IQA"] & _QS)) + (128 << (values["PQA"] & _QS))

    def invalidate_all(self, world: World) -> bool:
        """Context-cache, PASID-cache and IOTLB global invalidation then a wait descriptor
        (queued), or CCMD/IOTLB global (register-based); effective when the unit says so."""
        if r.GSTS.QIES.get(world.reg("GSTS")):
            descs = (words(0x1 | put(1, 4, 2), 0) + words(0x7 | put(3, 4, 2), 0)
                     + words(0x2 | put(1, 4, 2) | put(3, 6, 2), 0)
                     + words(0x5 | put(1, 5, 1), STATUS))
            self._op_qi(world, Step("qi", (4,), descs))
            fsts = world.reg("FSTS")
            return not r.FSTS.IQE.get(fsts) and world.reg("IQH") == world.reg("IQT")
        world.write_reg("CCMD", (1 << 63) | put(1, 61, 2))
        world.write_reg("IOTLB", (1 << 63) | put(1, 60, 2) | put(3, 48, 2))
        return bool(r.CCMD.CAIG.get(world.reg("CCMD")) and r.IOTLB.IAIG.get(world.reg("IOTLB")))

    def check_model(self, world: World, step: Step | str, full: bool) -> None:
        regs = world.regs
        assert regs is not None
        values = regs.values
        read = world.model.mmio_read
        wrote = world.wrote
        state = world.state
        gsts = read(_GSTS, 4) if full or wrote else values["GSTS"]
        if gsts & ~state["gsts_allowed"]:
            raise Failure("gsts:unsupported", f"{step}: GSTS {gsts:#x} reports unsupported bits "
                                  f"{gsts & ~state['gsts_allowed']:#x}")
        cmd = wrote.get("GCMD")
        if cmd is not None:
            self._check_gcmd(world, step, cmd, gsts, state["ir"])
        if not gsts & _QIES and values["IQH"]:
            raise Failure("gsts:IQH", f"{step}: IQH {values['IQH']:#x} while QIES = 0")
        # Fault records change on DMA as well as on register writes: the stored values here,
        # the guest's reads in the full check.
        if full:
            pending = any(read(offset, 8) & _F for offset in _FRCD_HI_OFFSETS)
            ppf = read(_FSTS, 4) & _PPF
        else:
            pending = any(values[name] & _F for name in _FRCD_HI_NAMES)
            ppf = values["FSTS"] & _PPF
        if bool(ppf) != pending:
            raise Failure("fault-status", f"{step}: FSTS.PPF = {int(bool(ppf))} but FRCD.F "
                                          f"pending = {pending}")
        for name, offset in state["event_controls"]:
            value = read(offset, 4) if full else values[name]
            if value & _IP and not value & _IM:
                raise Failure(f"event:{name}", f"{step}: {name} {value:#x}: IP set while IM is clear")
        if (full or "CCMD" in wrote or "IOTLB" in wrote) and (
                read(r.CCMD.offset, 8) & _ICC or read(r.IOTLB.offset, 8) & _IVT):
            raise Failure("invalidation", f"{step}: CCMD.ICC or IOTLB.IVT still set")

    def start(self, world: World) -> None:
        super().start(world)
        ecap = world.state["stable"].get("ECAP", 0)
        cap = world.state["stable"].get("CAP", 0)
        allowed = r.GSTS.full_mask
        if not r.ECAP.IR.get(ecap):
            allowed &= ~_GSTS_IR_BITS
        if not r.ECAP.QI.get(ecap):
            allowed &= ~r.GSTS.QIES.mask
        if not r.CAP.RWBF.get(cap):
            allowed &= ~r.GSTS.WBFS.mask
        world.state["gsts_allowed"] = allowed
        world.state["ir"] = bool(r.ECAP.IR.get(ecap))
        world.state["event_controls"] = [(n, self.by_name[n].offset)
                                         for n in ("FECTL", "IECTL", "PECTL")
                                         if self.by_name[n].fields]

    @staticmethod
    def _check_gcmd(world: World, step: Step | str, cmd: int, gsts: int, ir: bool) -> None:
        want = {
            "TES": r.GCMD.TE.get(cmd),
            "IRES": r.GCMD.IRE.get(cmd) if ir else 0,
            "CFIS": r.GCMD.CFI.get(cmd) if ir else 0,
        }
        for name, value in want.items():
            if r.GSTS.field(name).get(gsts) != value:
                raise Failure(f"gsts:{name}", f"{step}: GCMD {cmd:#x} but GSTS.{name} = "
                                      f"{r.GSTS.field(name).get(gsts)} (GSTS {gsts:#x})")
        if r.GCMD.SRTP.get(cmd) and not r.GSTS.RTPS.get(gsts):
            raise Failure("gsts:RTPS", f"{step}: GCMD.SRTP but GSTS.RTPS = 0")
        qie, qies = r.GCMD.QIE.get(cmd), r.GSTS.QIES.get(gsts)
        if qie and not qies:
            raise Failure("gsts:QIES", f"{step}: GCMD.QIE = 1 but QIES = 0")
        if not qie and qies:
            read = world.model.mmio_read
            if read(r.IQH.offset, 8) == read(r.IQT.offset, 8):
                raise Failure("gsts:QIES", f"{step}: QIE disable refused with an idle queue")

    def seeds(self) -> list[list[Step]]:
        """A driver's bring-up in legacy and in scalable mode, queued invalidation, traffic."""
        out = []
        for scalable in (False, True):
            steps: list[Step] = []
            for bus in (0, 1, 0xFF):
                steps.append(Step("entry", (0, bus), words(1 | CTX, (1 | CTX) if scalable else 0)))
            if scalable:
                for devfn in (0, 8, 16):
                    steps.append(Step("entry", (2, devfn), words(
                        1 | put(1, 3, 1) | put(1, 4, 1) | PASID_DIR, 0, 0, 0)))
                steps.append(Step("entry", (3, 0), words(1 | PASID_TAB)))
                for pasid, pgtt in ((0, 2), (1, 1), (2, 4), (3, 3)):
                    steps.append(Step("entry", (4, pasid), words(
                        1 | put(2, 2, 3) | put(pgtt, 6, 3) | SS4, pasid, 1 | FS4, 0, 0, 0, 0, 0)))
            else:
                for devfn, tt in ((0, 0), (8, 2), (16, 1)):
                    steps.append(Step("entry", (1, devfn), words(
                        1 | put(tt, 2, 2) | SS4, put(2, 0, 3) | put(devfn, 8, 16))))
            for page in range(4):
                iova = 0x1000_0000 + 0x1000 * page
                steps.append(Step("map", (0, iova, DATA + 0x1000 * page, 3, 12)))
                steps.append(Step("map", (1, iova, DATA + 0x1000 * page, 3, 12)))
            steps += [
                Step("w", (r.RTADDR.offset, 8, ROOT | put(int(scalable), 10, 2))),
                Step("gcmd", (30, 1)),
                Step("w", (r.IQA.offset, 8, IQ | put(int(scalable), 11, 1))),
                Step("w", (r.IQT.offset, 8, 0)),
                Step("gcmd", (26, 1)),
                Step("qi", (3,), words(0x1 | put(1, 4, 2), 0) + words(0x2 | put(1, 4, 2), 0)
                     + words(0x5 | put(1, 5, 1) | put(1, 4, 1) | (0xAB << 32), STATUS)),
                Step("w", (r.PQA.offset, 8, PQ)),
                Step("gcmd", (31, 1)),
            ]
            for rid in (0, 8, 16):
                steps.append(Step("xlate", (rid, 0xFFFF_FFFF, 0x1000_0000, 0)))
                steps.append(Step("dma", (rid, 0xFFFF_FFFF, 0x1000_0000, 64, 1)))
                steps.append(Step("dma", (rid, 1, 0x1000_1000, 64, 0)))
            steps += [Step("prq", (8, 1, 0x13, 0x1000_0000, 3)), Step("pqc"), Step("inv")]
            out.append(steps)
        return out
