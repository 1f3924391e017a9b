"""The model targets: their seeds run clean, the engine runs, a planted bug is found, minimized
and written as a reproducer that replays; the IOTLB oracle catches a stale translation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.smmuv3 import regs as smmu_regs
from devices.smmuv3.device import SMMUv3
from vmm.cli import main as vmm_main
from vmm.fuzz import reproducer
from vmm.fuzz.cli import configure, main
from vmm.fuzz.engine import Engine
from vmm.fuzz.minimize import replay_steps
from vmm.fuzz.oracles import Failure
from vmm.fuzz.program import Step
from vmm.fuzz.targets import MODEL_TARGETS, make_target, unavailable
from vmm.fuzz.world import World
from vmm.iotlb import Entry, Iotlb, Tag

AVAILABLE = [name for name in MODEL_TARGETS if unavailable(name) is None]


@pytest.mark.parametrize("name", AVAILABLE)
def test_seed_programs_run_clean(name: str) -> None:
    target = make_target(name)
    for seed in target.seeds():
        failure, _ = replay_steps(target, seed)
        assert failure is None, failure


@pytest.mark.parametrize("name", AVAILABLE)
def test_a_short_campaign_is_clean(name: str, tmp_path: Path) -> None:
    engine = Engine(make_target(name), seed=7, crashes_dir=tmp_path, log=None,
                    minimize_seconds=5)
    stats = engine.fuzz(runs=3000)
    assert stats.execs == 3000 and stats.features > 20
    assert not stats.failures, [(f.kind, f.detail) for f in stats.failures]


def test_the_command_prints_exec_rate_and_coverage(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    code = main(parser.parse_args(["--target", "smmuv3", "--runs", "500", "-q",
                                   "--crashes", str(tmp_path)]))
    out = capsys.readouterr().out
    assert code == 0
    assert "exec/s" in out and "coverage" in out and "clean" in out


def test_an_unavailable_target_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmm import config

    monkeypatch.delitem(config.MODELS, "pv-iommu", raising=False)
    reason = unavailable("pv-iommu")
    assert reason is not None and "pv-iommu" in reason and "skipped" in reason


def _planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that dies when the guest writes CR2 = E2H | PTM (0b101) in one access."""
    original = SMMUv3.mmio_write

    def mmio_write(self: SMMUv3, offset: int, size: int, value: int) -> None:
        if offset == smmu_regs.CR2.offset and value == 0b101:
            raise ZeroDivisionError("planted")
        original(self, offset, size, value)

    monkeypatch.setattr(SMMUv3, "mmio_write", mmio_write)


def test_a_planted_bug_is_found_minimized_and_replayed(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    _planted_bug(monkeypatch)
    target = make_target("smmuv3")
    engine = Engine(target, seed=3, crashes_dir=tmp_path, log=None, minimize_seconds=20)
    stats = engine.fuzz(runs=200_000, stop=lambda: bool(engine.stats.failures))
    assert stats.failures, "the planted bug was not found"
    found = stats.failures[0]
    assert found.kind.startswith("exception:ZeroDivisionError")
    assert len(found.steps) == 1
    last = found.steps[-1]
    assert last.op in ("w", "rmw") and last.args[0] == smmu_regs.CR2.offset
    # The reproducer replays (with the bug) and says so on the command line.
    assert found.path is not None and found.path.exists()
    rep, failure = reproducer.run(found.path)
    assert failure is not None and failure.kind == found.kind and rep.kind == found.kind
    # ... and so does its trace, under ``vmm replay``: the run up to the bad write, then the
    # write itself, which raises again.
    trace = found.path.with_name(found.path.stem + ".trace.jsonl")
    assert json.loads(trace.read_text().splitlines()[0])["format"] == "viommu-trace"
    with pytest.raises(ZeroDivisionError, match="planted"):
        vmm_main(["replay", "--quiet", str(trace)])
    monkeypatch.undo()
    assert reproducer.run(found.path)[1] is None  # fixed: the reproducer runs clean


def test_iotlb_oracle_catches_a_stale_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 of StreamID 1 maps 0x1000_0000; the guest then clears the leaf and
    invalidates everything.  With a planted host IOTLB that never forgets and answers a
    lookup from any entry covering the address (whatever its tag), the old translation
    survives: the cold walk disagrees and the oracle says so."""
    target = make_target("smmuv3")
    iova = 0x1000_0000
    lookup = Iotlb.lookup

    def sloppy_lookup(self: Iotlb, tag: Tag, address: int) -> Entry | None:
        hit = lookup(self, tag, address)
        if hit is None:
            hit = next((e for e in self.entries() if e.iova <= address < e.iova + e.size),
                       None)
        return hit

    def run(stale: bool) -> Failure | None:
        with monkeypatch.context() as patch:
            if stale:
                for name in ("invalidate_all", "invalidate_asid", "invalidate_pasid",
                             "invalidate_range", "invalidate_vmid", "invalidate_ipa"):
                    patch.setattr(Iotlb, name, lambda self, *a, **k: 0)
                patch.setattr(Iotlb, "lookup", sloppy_lookup)
            world = World(target)
            try:
                for step in target.seeds()[0]:
                    world.run(step)
                world.run(Step("xlate", (1, 0xFFFF_FFFF, iova, 0)))
                assert (1, None, iova, 0) in world.recent
                leaf = world.state["builders"][0].leaf_gpa(iova)
                assert leaf is not None
                world.raw.write_u64(leaf, 0)
                world.run(Step("inv"))
            except Failure as failure:
                return failure
            finally:
                world.close()
        return None

    assert run(stale=False) is None
    failure = run(stale=True)
    assert failure is not None and failure.kind == "iotlb", failure


def test_a_runaway_step_is_stopped_by_its_work_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted loop that re-reads guest memory without end ends as a 'work' failure."""
    original = SMMUv3.mmio_write

    def mmio_write(self: SMMUv3, offset: int, size: int, value: int) -> None:
        if offset == smmu_regs.CR2.offset:
            while True:
                self.env.memory.read_u64(0)
        original(self, offset, size, value)

    monkeypatch.setattr(SMMUv3, "mmio_write", mmio_write)
    failure, _ = replay_steps(make_target("smmuv3"), [Step("w", (smmu_regs.CR2.offset, 4, 1))])
    assert failure is not None and failure.kind == "work"


def test_a_hung_step_is_stopped_by_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from vmm.fuzz import world

    monkeypatch.setattr(world, "WATCHDOG_SECONDS", 0.2)
    original = SMMUv3.mmio_write

    def mmio_write(self: SMMUv3, offset: int, size: int, value: int) -> None:
        if offset == smmu_regs.CR2.offset:
            while True:
                time.sleep(0.01)
        original(self, offset, size, value)

    monkeypatch.setattr(SMMUv3, "mmio_write", mmio_write)
    failure, _ = replay_steps(make_target("smmuv3"), [Step("w", (smmu_regs.CR2.offset, 4, 1))])
    assert failure is not None and failure.kind == "hang"
