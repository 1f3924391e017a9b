"""The fuzz targets, by the name ``vmm fuzz --target`` takes.

Model targets are pluggable: each names the model it needs (``ModelTarget.model``), and a
target whose model is not in ``vmm.config.MODELS`` when the fuzzer runs is reported as
unavailable instead of failing (the PV-IOMMU model is built separately).
"""

from __future__ import annotations

from vmm import config
from vmm.fuzz import TARGET_NAMES
from vmm.fuzz.targets.base import ModelTarget
from vmm.fuzz.targets.pviommu import PvIommuTarget
from vmm.fuzz.targets.smmuv3 import Smmuv3Target
from vmm.fuzz.targets.vtd import VtdTarget

MODEL_TARGETS: dict[str, type[ModelTarget]] = {
    "smmuv3": Smmuv3Target,
    "vtd": VtdTarget,
    "pv-iommu": PvIommuTarget,
}
ALL_TARGETS = (*MODEL_TARGETS, "protocol")
assert ALL_TARGETS == TARGET_NAMES, "vmm.fuzz.TARGET_NAMES must list every target"


def unavailable(name: str) -> str | None:
    """Why target ``name`` cannot run here, or None when it can."""
    cls = MODEL_TARGETS.get(name)
    if cls is None:
        return None if name == "protocol" else f"unknown target '{name}'"
    if cls.model not in config.MODELS:
        return (f"target '{name}' skipped: model '{cls.model}' is not built into this daemon "
                f"(vmm.config.MODELS has {', '.join(sorted(config.MODELS))})")
    return None


def make_target(name: str, device: str | None = None) -> ModelTarget:
    return MODEL_TARGETS[name](device)


__all__ = ["ALL_TARGETS", "MODEL_TARGETS", "ModelTarget", "make_target", "unavailable"]
