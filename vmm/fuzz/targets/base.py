"""What a fuzz target is: a device model, its guest RAM, its operations and its invariants.

A ``ModelTarget`` knows one IOMMU model: the ``--device`` it is built from, where its guest
RAM lies and how that RAM is carved into areas (queues, tables, page-table arenas, data), how
to generate plausible steps from the register declarations (offsets, widths, fields — never a
hand-written register list), how to run each step through a ``World``, and which register
invariants hold after every step.

Operations every model target has (``args`` in order; ``data`` where noted):

======  ==============================================  =========================================
op      args                                            effect
======  ==============================================  =========================================
w       offset, size, value                             MMIO_WRITE
r       offset, size                                    MMIO_READ
rmw     offset, size, mask, value                       read, replace ``mask`` bits, MMIO_WRITE
dma     requester, pasid, iova, length, flags           DMA (write data is a fixed pattern)
xlate   requester, pasid, iova, flags                   TRANSLATE
prq     requester, pasid, flags, address, group         PAGE_REQUEST
reset   device                                          RESET
mem     gpa; data                                       the guest CPU writes its RAM
entry   area, index; data                               write one table/queue entry of an area
map     arena, iova, gpa, perms, size_log2              map a page in a page-table arena
inv     —                                               the architecture's full invalidation,
                                                        then the cold-walk IOTLB oracle
======  ==============================================  =========================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from devices.model import Perm
from devices.pagetable.builders import TableAllocator, TableBuilder
from devices.regs import Register
from protocols import messages as m
from protocols.messages import Request
from vmm.config import DaemonConfig, build_devices
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import (
    Source,
    Step,
    chance,
    field_value,
    mutate_words,
    pick,
    word,
)
from vmm.fuzz.world import FuzzSession, World

Op = Callable[[World, Step], None]
Generator = Callable[[Source], Step]

SWEEP_EVERY = 32
"""Steps between full sweeps of every register (reserved bits read as zero)."""

_PAGE = 4096


@dataclass(frozen=True)
class Area:
    """A part of guest RAM holding ``count`` entries of ``size`` bytes (a queue or table)."""

    name: str
    gpa: int
    size: int
    count: int
    make: Callable[[Source], bytes]
    """A plausible entry; the generator mutates it some of the time."""


@dataclass(frozen=True)
class Arena:
    """A page-table tree built in ``[gpa, gpa + span)`` by a ``devices.pagetable`` builder.
    The builder allocates its root first, so the root is ``gpa``: entries elsewhere can
    point at it without running anything."""

    name: str
    gpa: int
    span: int
    build: Callable[[Any, TableAllocator], TableBuilder]
    page_sizes: tuple[int, ...] = (_PAGE,)


class ModelTarget:
    """Base of the model targets; subclasses fill in the class attributes and hooks."""

    name: ClassVar[str]
    model: ClassVar[str]
    """The model's key in ``vmm.config.MODELS``."""
    default_device: ClassVar[str]
    variants: ClassVar[tuple[str, ...]] = ()
    """Other ``--device`` option sets worth fuzzing (``vmm fuzz --variants``): widths, stages
    and modes change which guest configurations the model accepts."""
    layout: ClassVar[list[tuple[int, int]]]
    data_pages: ClassVar[tuple[int, ...]]
    """Guest-physical pages DMA may land in (maps point there)."""
    iovas: ClassVar[tuple[int, ...]]
    """IOVA bases the generators map and access (plus a page index)."""
    requesters: ClassVar[tuple[int, ...]]
    stable: ClassVar[tuple[str, ...]]
    """Registers whose value never changes (ID, capability, version)."""
    weights: ClassVar[dict[str, int]] = {}
    """How often each generator runs, by op name (0: never), over the common defaults."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device or self.default_device
        self.config = DaemonConfig(build_devices([self.device]))
        probe = FuzzSession(self.config)
        try:
            model = probe.slots[0].model
            regs = getattr(model, "regs", None)
            self.registers: tuple[Register, ...] = tuple(regs.registers) if regs else ()
            self.window = probe.slots[0].window
        finally:
            probe.close()
        self.by_name = {r.name: r for r in self.registers}
        self.field_layout: dict[str, tuple[tuple[str, int, int, int], ...]] = {
            r.name: tuple((f.name, f.lsb, f.mask, f.width) for f in r.fields)
            for r in self.registers}
        """(field, lsb, mask, width) per register, for the coverage map's hot path."""
        self.areas: tuple[Area, ...] = self.make_areas()
        self.arenas: tuple[Arena, ...] = self.make_arenas()
        self.ops: dict[str, Op] = {
            "w": _op_write, "r": _op_read, "rmw": _op_rmw, "dma": _op_dma, "xlate": _op_xlate,
            "prq": _op_prq, "reset": _op_reset, "mem": _op_mem, "entry": self._op_entry,
            "map": self._op_map, "inv": self._op_inv,
        }
        self.ops.update(self.extra_ops())
        weights = {"w": 30, "rmw": 18, "r": 4, "dma": 10, "xlate": 8, "prq": 3, "reset": 1,
                   "mem": 3, "entry": 14, "map": 10, "inv": 2}
        weights.update(self.weights)
        generators: dict[str, Generator] = {
            "w": self.gen_write, "rmw": self.gen_rmw, "r": self.gen_read, "dma": self.gen_dma,
            "xlate": self.gen_xlate, "prq": self.gen_prq, "reset": self.gen_reset,
            "mem": self.gen_mem, "entry": self.gen_entry, "map": self.gen_map,
            "inv": lambda src: Step("inv"),
        }
        generators.update(self.extra_generators())
        self._generators: list[tuple[int, Generator]] = [
            (weights.get(name, 1), gen) for name, gen in generators.items()
            if weights.get(name, 1) > 0]
        self._total = sum(w for w, _ in self._generators)

    # -- hooks for subclasses -----------------------------------------------------------------

    def make_areas(self) -> tuple[Area, ...]:
        return ()

    def make_arenas(self) -> tuple[Arena, ...]:
        return ()

    def extra_ops(self) -> dict[str, Op]:
        return {}

    def extra_generators(self) -> dict[str, Generator]:
        """Generators of the target's own ops (weights in ``weights``)."""
        return {}

    def seeds(self) -> list[list[Step]]:
        return []

    def queue_entries(self, world: World) -> int:
        """Entries of every queue as the registers size them now (the work bound)."""
        return 0

    def invalidate_all(self, world: World) -> bool:
        """Issue the full invalidation; True when it took effect (the IOTLB oracle runs)."""
        return False

    def check_model(self, world: World, step: Step | str, full: bool) -> None:
        """Model-specific register invariants after a step.  ``full``: check everything
        through the guest's reads (every ``SWEEP_EVERY`` steps and at the end); otherwise
        only what the step can have changed, as cheaply as possible."""

    # -- per program --------------------------------------------------------------------------

    def start(self, world: World) -> None:
        world.state["stable"] = {name: world.reg(name) for name in self.stable
                                 if name in self.by_name}

    # -- invariants -----------------------------------------------------------------------------

    def check(self, world: World, step: Step) -> None:
        regs = world.regs
        if regs is None:
            return
        values = regs.values
        for name, value in world.state["stable"].items():
            if values[name] != value:
                raise Failure(f"register:{name}:changed", f"{step}: read-only {name} changed "
                                          f"{value:#x} -> {values[name]:#x}")
        for name in world.wrote:
            self.check_reserved(world, self.by_name[name], step)
        full = world.step_index % SWEEP_EVERY == 0
        if full:
            self.sweep(world, step)
        self.check_model(world, step, full)

    def finish(self, world: World) -> None:
        """The end of a program: one last full check."""
        if world.regs is not None:
            self.sweep(world, "end of program")
            self.check_model(world, "end of program", True)

    def check_reserved(self, world: World, reg: Register, step: Step | str) -> None:
        if not reg.rsvd or reg.cor:
            return
        value = world.model.mmio_read(reg.offset, reg.size)
        if value & reg.rsvd:
            raise Failure(f"register:{reg.name}:reserved", f"{step}: {reg.name} reads {value:#x}, reserved bits "
                                      f"{value & reg.rsvd:#x} set")

    def sweep(self, world: World, step: Step | str) -> None:
        """Every register through the guest's read: reserved bits zero, stable ones stable."""
        stable = world.state["stable"]
        for reg in self.registers:
            if reg.cor:
                continue  # a read would change state the program did not ask to change
            value = world.model.mmio_read(reg.offset, reg.size)
            if value & reg.rsvd:
                raise Failure(f"register:{reg.name}:reserved", f"{step}: {reg.name} reads {value:#x}, reserved "
                                          f"bits {value & reg.rsvd:#x} set")
            if reg.name in stable and value != stable[reg.name]:
                raise Failure(f"register:{reg.name}:changed", f"{step}: read-only {reg.name} reads {value:#x}, "
                                          f"was {stable[reg.name]:#x}")

    # -- generation -------------------------------------------------------------------------------

    def generate(self, src: Source) -> Step:
        k = src.below(self._total)
        for weight, gen in self._generators:
            if k < weight:
                return gen(src)
            k -= weight
        raise AssertionError("weights")

    def generate_program(self, src: Source, length: int) -> list[Step]:
        return [self.generate(src) for _ in range(length)]

    def mutate(self, src: Source, step: Step) -> Step:
        """One structure-aware change to a step."""
        k = src.below(8)
        if k == 0 or (not step.args and not step.data):
            return self.generate(src)
        if step.data and (k < 4 or not step.args):
            return Step(step.op, step.args, mutate_words(src, step.data))
        args = list(step.args)
        i = src.below(len(args))
        how = src.below(5)
        if how == 0:
            args[i] ^= 1 << src.below(64 if args[i] >> 32 else 32)
        elif how == 1:
            args[i] = max(0, args[i] + src.below(33) - 16)
        elif how == 2:
            args[i] = word(src, 64 if args[i] >> 32 else 32)
        elif how == 3 and step.op in ("w", "rmw") and len(args) >= 3:
            reg = self._register_at(args[0])
            if reg is not None:
                args[-1] = self.register_value(src, reg)
        else:
            args[i] = word(src)
        return Step(step.op, tuple(args), step.data)

    def _register_at(self, offset: int) -> Register | None:
        for reg in self.registers:
            if reg.offset <= offset < reg.offset + reg.size:
                return reg
        return None

    def register_value(self, src: Source, reg: Register) -> int:
        """A value for ``reg`` built field by field from its declaration."""
        if not reg.fields or chance(src, 8):
            return word(src, reg.width)
        value = reg.reset
        for _ in range(1 + src.below(3)):
            f = pick(src, reg.fields)
            value = (value & ~f.mask) | f.prep(field_value(src, f.width))
        if chance(src, 16):
            value |= src.bits(reg.width) & reg.rsvd  # reserved bits must be dropped
        return value

    def pick_register(self, src: Source) -> Register:
        reg: Register = pick(src, self.registers)
        return reg

    def gen_write(self, src: Source) -> Step:
        if not self.registers or chance(src, 32):
            size = pick(src, (1, 2, 4, 8))
            offset = src.below(self.window // size) * size if self.window else 0
            return Step("w", (offset, size, src.bits(8 * size)))
        reg = self.pick_register(src)
        value = self.register_value(src, reg)
        if reg.width == 64 and chance(src, 4):
            half = src.below(2)
            return Step("w", (reg.offset + 4 * half, 4, (value >> (32 * half)) & 0xFFFF_FFFF))
        return Step("w", (reg.offset, reg.size, value))

    def gen_rmw(self, src: Source) -> Step:
        if not self.registers:
            return self.gen_write(src)
        reg = self.pick_register(src)
        if not reg.fields:
            return Step("rmw", (reg.offset, reg.size, reg.full_mask, word(src, reg.width)))
        f = pick(src, reg.fields)
        return Step("rmw", (reg.offset, reg.size, f.mask, f.prep(field_value(src, f.width))))

    def gen_read(self, src: Source) -> Step:
        if not self.registers or chance(src, 8):
            size = pick(src, (1, 2, 4, 8))
            return Step("r", (src.below(max(self.window, 1) // size) * size, size))
        reg = self.pick_register(src)
        return Step("r", (reg.offset, reg.size))

    def gen_pasid(self, src: Source) -> int:
        if src.below(4):
            return m.NO_PASID
        pasid: int = pick(src, (0, 1, 2, 3, 0x3F, 0xFFFFF))
        return pasid

    def gen_iova(self, src: Source) -> int:
        base: int = pick(src, self.iovas)
        return base + _PAGE * src.below(16) + (src.below(_PAGE) if chance(src, 4) else 0)

    def gen_dma(self, src: Source) -> Step:
        k = src.below(16)
        length = (4 if k < 6 else 64 if k < 10 else _PAGE if k < 13 else
                  1 + src.below(3 * _PAGE) if k < 15 else 1 + src.below(1 << 20))
        flags = src.below(8) if src.below(16) else src.bits(16)
        return Step("dma", (pick(src, self.requesters), self.gen_pasid(src), self.gen_iova(src),
                            length, flags))

    def gen_xlate(self, src: Source) -> Step:
        flags = src.below(8) if src.below(16) else src.bits(16)
        return Step("xlate", (pick(src, self.requesters), self.gen_pasid(src),
                              self.gen_iova(src), flags))

    def gen_prq(self, src: Source) -> Step:
        return Step("prq", (pick(src, self.requesters), self.gen_pasid(src),
                            src.below(32) if src.below(8) else src.bits(32),
                            self.gen_iova(src), src.below(16)))

    def gen_reset(self, src: Source) -> Step:
        return Step("reset", (0 if src.below(4) else m.ALL_DEVICES,))

    def gen_mem(self, src: Source) -> Step:
        gpa = (pick(src, [a.gpa for a in self.areas] or [0]) + 8 * src.below(512))
        return Step("mem", (gpa,), word(src).to_bytes(8, "little"))

    def gen_entry(self, src: Source) -> Step:
        if not self.areas:
            return self.gen_mem(src)
        i = src.below(len(self.areas))
        area = self.areas[i]
        index = src.below(min(area.count, 8)) if src.below(4) else src.below(area.count)
        data = area.make(src)
        if chance(src, 3):
            data = mutate_words(src, data)
        return Step("entry", (i, index), data)

    def gen_map(self, src: Source) -> Step:
        if not self.arenas:
            return self.gen_mem(src)
        i = src.below(len(self.arenas))
        arena = self.arenas[i]
        size = pick(src, arena.page_sizes)
        if chance(src, 3):
            iova = pick(src, self.areas).gpa if self.areas else 0  # identity maps for tables
            gpa = iova
        else:
            iova = self.gen_iova(src)
            gpa = pick(src, self.data_pages)
        perms = 1 + src.below(7)
        return Step("map", (i, iova & ~(size - 1), gpa & ~(size - 1), perms,
                            size.bit_length() - 1))

    # -- operations needing the target's layout --------------------------------------------------

    def _op_entry(self, world: World, step: Step) -> None:
        area_index, index = step.args[0], step.args[1]
        if area_index >= len(self.areas):
            return
        area = self.areas[area_index]
        world.guest_write(area.gpa + (index % area.count) * area.size, step.data[: area.size])

    def _op_map(self, world: World, step: Step) -> None:
        arena_index, iova, gpa, perms, size_log2 = step.args[:5]
        if arena_index >= len(self.arenas) or size_log2 > 40:
            return
        builders: dict[int, TableBuilder] = world.state.setdefault("builders", {})
        builder = builders.get(arena_index)
        arena = self.arenas[arena_index]
        if builder is None:
            memory = _RecordingRam(world)
            builder = arena.build(memory, TableAllocator(memory, arena.gpa, arena.span))
            builders[arena_index] = builder
        # A map the builder cannot express (taken, misaligned, out of table memory) is no step.
        with contextlib.suppress(ValueError, RuntimeError):
            builder.map(iova, gpa, 1 << size_log2, Perm(perms & 7))

    def _op_inv(self, world: World, step: Step) -> None:
        if self.invalidate_all(world):
            world.check_cold()


class _RecordingRam:
    """Guest RAM as a page-table builder writes it: the guest CPU's writes (traced)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.raw = world.raw

    def read(self, gpa: int, length: int) -> bytes | None:
        return self.raw.read(gpa, length)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        return self.world.guest_write(gpa, bytes(data))

    def read_u32(self, gpa: int) -> int | None:
        return self.raw.read_u32(gpa)

    def read_u64(self, gpa: int) -> int | None:
        return self.raw.read_u64(gpa)

    def write_u32(self, gpa: int, value: int) -> bool:
        return self.world.guest_write(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.world.guest_write(gpa, (value & (1 << 64) - 1).to_bytes(8, "little"))


# -- the common operations ------------------------------------------------------------------------


def _op_write(world: World, step: Step) -> None:
    offset, size, value = step.args[:3]
    world.mmio_write(offset, size, value)


def _op_read(world: World, step: Step) -> None:
    offset, size = step.args[:2]
    world.mmio_read(offset, size)


def _op_rmw(world: World, step: Step) -> None:
    offset, size, mask, value = step.args[:4]
    current = world.mmio_read(offset, size)
    if current is None:
        return
    full = (1 << (8 * size)) - 1 if size in (1, 2, 4, 8) else 0
    world.mmio_write(offset, size, ((current & ~mask) | (value & mask)) & full)


def _op_dma(world: World, step: Step) -> None:
    requester, pasid, iova, length, flags = step.args[:5]
    if not 1 <= length <= m.MAX_DMA_LENGTH:
        length = 1 + length % m.MAX_DMA_LENGTH
    world.dma(requester, pasid, iova, length, flags)


def _op_xlate(world: World, step: Step) -> None:
    requester, pasid, iova, flags = step.args[:4]
    world.translate(requester, pasid, iova, flags)


def _op_prq(world: World, step: Step) -> None:
    requester, pasid, flags, address, group = step.args[:5]
    world.send(Request.PAGE_REQUEST, m.PAGE_REQUEST.pack(
        0, 0, requester & 0xFFFF_FFFF, pasid & 0xFFFF_FFFF, flags & 0xFFFF_FFFF,
        address & (1 << 64) - 1, group & 0xFFFF_FFFF, 0))


def _op_reset(world: World, step: Step) -> None:
    world.send(Request.RESET, m.RESET.pack(step.args[0] & 0xFFFF_FFFF, 0))


def _op_mem(world: World, step: Step) -> None:
    world.guest_write(step.args[0], step.data)
