"""scripts/bench_translate.py runs end to end, checks every result it times, and reports
its figures (a smoke test: the numbers themselves are the benchmark's business)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_translate  # noqa: E402

from devices.pagetable.fast import BUILT  # noqa: E402


def test_figures() -> None:
    rows: list[list[str]] = []
    figures = bench_translate.translate_figures(reps=1, n=2048, rows=rows)
    expected = {"iotlb_hit_per_s", "walk_miss_python_per_s", "python_loop_reference_per_s",
                "iotlb_hit_vs_python_loop_ratio", "walk_miss_python_vs_python_loop_ratio"}
    if BUILT:
        expected |= {"walk_miss_c_per_s", "walk_miss_c_batched_per_s"}
    assert expected <= set(figures)
    assert all(value > 0 for value in figures.values())
    assert {row[0] for row in rows} >= expected  # the human table names each one
