"""scripts/bench_pv.py runs end to end and reports its four figures (a smoke test: the
numbers themselves are the benchmark's business)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_pv  # noqa: E402


def test_figures() -> None:
    notes: dict[str, str] = {}
    figures = bench_pv.pv_figures(seconds=0.02, reps=1, pages=8, cpu=None, notes=notes)
    assert set(figures) == {"pv_map_unmap_pages_per_s", "smmu_trap_map_unmap_pages_per_s",
                            "vtd_cm_map_unmap_pages_per_s", "pv_vs_best_trap_ratio"}
    assert figures["pv_map_unmap_pages_per_s"] > 0
    for name in ("smmu_trap_map_unmap_pages_per_s", "vtd_cm_map_unmap_pages_per_s"):
        assert math.isnan(figures[name]) == (name in notes)
