"""HostIOMMU and its contexts: placement, contexts, PV-style mapping rules, nested vs shadow."""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.model import DmaTarget, FaultKind, Perm
from devices.pagetable import ACCESS_R, ACCESS_W, ArmS1Config, Fault
from devices.pagetable.builders import ArmS1Builder, ArmS2Builder, TableAllocator, X86Builder
from vmm.host import NO_RAM, HostIOMMU
from vmm.memory import anonymous_memory

RAM = [(0x4000_0000, 8 << 20), (0x8000_0000, 4 << 20)]
TABLES = (0x4000_0000, 2 << 20)  # table pages come from the first 2 MiB


def setup() -> tuple[HostIOMMU, TableAllocator]:
    mem = anonymous_memory(RAM)
    return HostIOMMU(mem), TableAllocator(mem, *TABLES)


def test_placement_is_not_identity() -> None:
    host, _ = setup()
    for gpa, size in RAM:
        for probe in (gpa, gpa + size - 1):
            hpa = host.gpa_to_hpa(probe)
            assert hpa is not None and hpa != probe
            assert host.hpa_to_gpa(hpa) == probe
            assert host.memory.read(hpa, 1) is None  # an HPA is no GPA of this guest
    assert host.gpa_to_hpa(0x1000) is None  # not RAM
    assert host.host_memory.read_u64(0x4000_0000) is None  # a GPA is no HPA either


def test_data_moves_at_the_hpa() -> None:
    host, _ = setup()
    ctx = host.alloc_context()
    assert host.map(ctx, 0x10_0000, 0x8000_1000, 0x1000, int(Perm.R | Perm.W)) == 0
    t = host.translate(ctx, None, 0x10_0123, ACCESS_W)
    assert isinstance(t, DmaTarget) and t.gpa == 0x8000_1123 and t.hpa is not None
    assert host.host_memory.write(t.hpa, b"xyz")
    assert host.memory.read(0x8000_1123, 3) == b"xyz"  # the guest sees it at the GPA


def test_default_context_and_no_dma() -> None:
    host, _ = setup()
    t = host.translate(0, None, 0x4000_2000, ACCESS_R)
    assert isinstance(t, DmaTarget) and t.gpa == 0x4000_2000
    assert host.map_pages(0, 1, 0x40000, 1, int(Perm.R)) == (0, -errno.EPERM)
    host.set_no_dma(True)
    f = host.translate(0, None, 0x4000_2000, ACCESS_R)
    assert isinstance(f, Fault) and f.kind == FaultKind.BLOCKED


def test_contexts_devices_and_pages() -> None:
    host, _ = setup()
    ctx = host.alloc_context()
    assert host.attach(0, 0x10, ctx) == 0 and host.device_context(0, 0x10) == ctx
    gfn = 0x8000_0000 >> 12
    assert host.map_pages(ctx, 0x100, gfn, 4, int(Perm.R)) == (4, 0)
    assert host.map_pages(ctx, 0x102, gfn, 4, int(Perm.R)) == (0, -errno.EADDRINUSE)
    assert host.map_pages(ctx, 0x200, (0x8000_0000 + (4 << 20)) // 4096 - 2, 4,
                          int(Perm.R)) == (2, -errno.ENOENT)  # runs off guest RAM
    assert host.map_pages(ctx, 0, gfn, 513, int(Perm.R)) == (0, -errno.E2BIG)
    assert host.lookup(ctx, 0x101 * 4096 + 5) == (0x8000_1005, int(Perm.R))
    f = host.translate(ctx, None, 0x100 * 4096, ACCESS_W)
    assert isinstance(f, Fault) and f.kind == FaultKind.PERMISSION and f.stage == 2
    assert host.unmap_pages(ctx, 0x102, 4) == (2, -errno.ENOENT)
    assert host.lookup(ctx, 0x102 * 4096) == -errno.ENOENT
    host.free_context(ctx)
    assert host.device_context(0, 0x10) == 0  # back to the default context
    assert host.map_pages(ctx, 0, gfn, 1, int(Perm.R)) == (0, -errno.ENOENT)


def test_pasid_allocator() -> None:
    host, _ = setup()
    a, b = host.alloc_pasid(), host.alloc_pasid()
    assert a == 1 and b == 2
    assert host.free_pasid(1) and not host.free_pasid(1)
    assert host.alloc_pasid() == 1


def test_iotlb_keeps_a_stale_translation_until_invalidated() -> None:
    host, alloc = setup()
    b = ArmS1Builder(host.memory, alloc)
    b.map(0x1000, 0x4020_0000, 0x1000, Perm.R | Perm.W)
    ctx = host.alloc_context(identity=True)
    host.bind_stage1(ctx, None, _s1(b), asid=3)
    first = host.translate(ctx, None, 0x1000, ACCESS_R)
    assert isinstance(first, DmaTarget) and first.gpa == 0x4020_0000
    b.unmap(0x1000, 0x1000)
    b.map(0x1000, 0x4030_0000, 0x1000, Perm.R | Perm.W)
    stale = host.translate(ctx, None, 0x1000, ACCESS_R)
    assert isinstance(stale, DmaTarget) and stale.gpa == 0x4020_0000  # as hardware would
    host.invalidate(ctx, asid=3, iova=0x1000, size=0x1000)
    fresh = host.translate(ctx, None, 0x1000, ACCESS_R)
    assert isinstance(fresh, DmaTarget) and fresh.gpa == 0x4030_0000


def _s1(builder: ArmS1Builder) -> ArmS1Config:
    return ArmS1Config(builder.table())


def test_stage2_fill_and_invalidate() -> None:
    host, alloc = setup()
    s2 = ArmS2Builder(host.memory, alloc)
    s2.map(0x0, 0x4040_0000, 0x20_0000, Perm.R | Perm.W)
    cfg = s2.config()
    calls = []

    def fill(ipa: int, access: int):  # type: ignore[no-untyped-def]
        calls.append(ipa)
        t = cfg.walk(host.memory, ipa, access)
        if isinstance(t, Fault):
            return t
        return (t.oa - (ipa & (t.size - 1)), t.size, t.perm)

    ctx = host.alloc_context(fill=fill)
    t = host.translate(ctx, None, 0x1234, ACCESS_R)
    assert isinstance(t, DmaTarget) and t.gpa == 0x4040_1234 and t.size == 0x20_0000
    host.invalidate(ctx)  # IOTLB only: the shadow stays
    assert isinstance(host.translate(ctx, None, 0x5000, ACCESS_R), DmaTarget)
    assert calls == [0x1234]
    f = host.translate(ctx, None, 0x40_0000, ACCESS_R)
    assert isinstance(f, Fault) and f.stage == 2 and f.kind == FaultKind.TRANSLATION
    host.invalidate_s2(ctx)
    host.translate(ctx, None, 0x5000, ACCESS_R)
    assert calls[-1] == 0x5000


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_nested_and_shadow_agree(data: st.DataObject) -> None:
    """Differential: a guest stage 1 bound (nested) vs flattened on miss (shadow)."""
    host, alloc = setup()
    x86 = data.draw(st.booleans())
    b = X86Builder(host.memory, alloc) if x86 else ArmS1Builder(host.memory, alloc)
    pages = data.draw(st.lists(st.integers(0, 63), min_size=1, max_size=24, unique=True))
    for i in pages:
        perm = data.draw(st.sampled_from([Perm.R, Perm.R | Perm.W]))
        target = 0x4020_0000 + data.draw(st.integers(0, 255)) * 0x1000
        b.map(i * 0x1000, target, 0x1000, perm)
    walker = b.config() if x86 else _s1(b)  # type: ignore[attr-defined]
    nested = host.alloc_context(identity=True)
    host.bind_stage1(nested, None, walker)

    def fill(iova: int, access: int):  # type: ignore[no-untyped-def]
        t = walker.walk(host.memory, iova, access)
        if isinstance(t, Fault):
            return t
        return (t.oa - (iova & (t.size - 1)), t.size, t.perm)

    shadow = host.alloc_context(fill=fill)
    for _ in range(40):
        iova = data.draw(st.integers(0, 70)) * 0x1000 + data.draw(st.integers(0, 0xFFF))
        access = data.draw(st.sampled_from([ACCESS_R, ACCESS_W, ACCESS_R | ACCESS_W]))
        a = host.translate(nested, None, iova, access)
        s = host.translate(shadow, None, iova, access)
        if isinstance(a, Fault):
            assert isinstance(s, Fault) and (a.kind, a.stage, a.reason) == (s.kind, s.stage, s.reason)
        else:
            assert isinstance(s, DmaTarget)
            assert (a.gpa, a.hpa, a.perms & access) == (s.gpa, s.hpa, s.perms & access)
            assert not (a.hpa or 0) & NO_RAM


def test_identity_context_refuses_addresses_no_gpa_can_have() -> None:
    host, _ = setup()
    for iova in (1 << 62 | 0x4000_1000, 1 << 52 | 0x4000_1000, (1 << 64) - 4096):
        f = host.translate(0, None, iova, ACCESS_R)
        assert isinstance(f, Fault) and f.kind == FaultKind.ADDRESS_SIZE and f.stage == 2
    ctx = host.alloc_context()
    assert host.map(ctx, 0, 1 << 52, 0x1000, int(Perm.R)) == -errno.EINVAL


def test_pasid_allocator_is_lowest_free_and_bounded() -> None:
    from vmm.host import HostCaps

    host = HostIOMMU(anonymous_memory(RAM), caps=HostCaps(pasid_bits=4))
    got = [host.alloc_pasid() for _ in range(16)]
    assert got == [*range(1, 16), None]  # PASID 0 is never handed out
    assert host.free_pasid(9) and host.free_pasid(3) and not host.free_pasid(3)
    assert [host.alloc_pasid(), host.alloc_pasid(), host.alloc_pasid()] == [3, 9, None]


def test_shadow_blocks_are_a_bounded_cache(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import vmm.host as hostmod

    monkeypatch.setattr(hostmod, "MAX_FILLED", 8)
    host, _ = setup()
    fills = []

    def fill(ipa: int, access: int):  # type: ignore[no-untyped-def]
        fills.append(ipa)
        return (0x4000_0000 + (ipa & 0x7F_F000), 0x1000, int(Perm.R))

    ctx = host.alloc_context(fill=fill)
    for i in range(20):
        assert isinstance(host.translate(ctx, None, i * 0x1000, ACCESS_R), DmaTarget)
    assert host.contexts[ctx].s2.filled <= 8  # the guest cannot grow it without bound
    host.invalidate(ctx)
    t = host.translate(ctx, None, 0x1000, ACCESS_R)  # forgotten, filled again, same answer
    assert isinstance(t, DmaTarget) and t.gpa == 0x4000_1000 and fills[-1] == 0x1000
