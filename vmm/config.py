"""Daemon configuration: ``--device MODEL,key=value,...`` in QEMU keyval syntax.

QEMU's keyval rules that users type without thinking: the first element is the model, ``,,``
stands for a literal comma, a bare ``help`` asks for the option table, booleans are
``on``/``off``, integers may be decimal or ``0x`` hex.  Anything unknown is an error that
names the offender, raised before any device exists.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devices.model import IommuModel, Option

if TYPE_CHECKING:
    from vmm.devidmap import DevidMap

MODELS: dict[str, str] = {
    "smmuv3": "devices.smmuv3.device:SMMUv3",
    "vtd": "devices.vtd.device:VTd",
    "pv-iommu": "devices.pviommu.device:PvIommu",
}
MODEL_HELP: dict[str, str] = {
    "smmuv3": "Arm SMMUv3 (IHI 0070): stream/CD tables, command and event queues",
    "vtd": "Intel VT-d remapping unit: root/context/PASID tables, queued invalidation",
    "pv-iommu": "Xen PV-IOMMU (v7): guest-managed contexts through PV_IOMMU_OP",
}
_NAME_PREFIX = {"smmuv3": "smmu", "vtd": "dmar", "pv-iommu": "pviommu"}


class ConfigError(Exception):
    """The user's configuration is wrong; the message says where."""


class HelpRequested(Exception):  # noqa: N818 - a request, not an error
    """``help`` was given: the text to print instead of running."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def model_class(name: str) -> type[IommuModel]:
    try:
        target = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown device model '{name}' (try --device help)") from None
    module, _, cls = target.partition(":")
    loaded: type[IommuModel] = getattr(importlib.import_module(module), cls)
    return loaded


def split_keyval(text: str) -> list[str]:
    """Split on single commas; ``,,`` is a literal comma."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"'{text}' is not an integer") from None


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("on", "yes", "true", "1"):
        return True
    if lowered in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"'{text}' is not on/off")


def parse_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition("-")
    lo = parse_int(lo_text)
    hi = parse_int(hi_text) if sep else lo
    if not 0 <= lo <= hi:
        raise ConfigError(f"'{text}' is not a range A-B with A <= B")
    return lo, hi


def parse_value(opt: Option, text: str) -> Any:
    if opt.parse is not None:
        try:
            value = opt.parse(text)
        except ValueError as exc:  # a model's own parser: the operator's mistake
            raise ConfigError(str(exc)) from None
    elif opt.kind == "int":
        value = parse_int(text)
    elif opt.kind == "bool":
        value = parse_bool(text)
    elif opt.kind == "range":
        value = parse_range(text)
    else:
        value = text
    if opt.choices and value not in opt.choices:
        shown = ", ".join(str(v) for v in opt.choices)
        raise ConfigError(f"{opt.name}={text}: must be one of {shown}")
    return value


def _format_default(opt: Option) -> str:
    value = opt.default
    if opt.kind == "bool":
        return "on" if value else "off"
    if opt.kind == "range" and isinstance(value, tuple):
        return f"{value[0]:#x}-{value[1]:#x}"
    if opt.kind == "int" and isinstance(value, int) and value > 0xFFFF:
        return f"{value:#x}"
    return str(value)


def models_help() -> str:
    lines = ["Available device models:"]
    lines += [f"  {name:<10} {MODEL_HELP.get(name, '')}" for name in MODELS]
    return "\n".join(lines)


def model_help(name: str) -> str:
    cls = model_class(name)
    lines = [f"{name} options:"]
    for opt in cls.options:
        kind = "/".join(str(c) for c in opt.choices) if opt.choices else opt.kind
        lines.append(f"  {opt.name}=<{kind}>  - {opt.help} (default: {_format_default(opt)})")
    return "\n".join(lines)


@dataclass
class DeviceSpec:
    """One ``--device`` after parsing: the model, its id, name and typed options."""

    model: str
    id: int
    name: str
    segment: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> int:
        return int(self.options.get("base", 0))


def parse_device(text: str) -> tuple[str, dict[str, Any], set[str]]:
    """``MODEL,key=value,...`` → (model, options with defaults, names given explicitly)."""
    parts = split_keyval(text)
    model = parts[0]
    if model == "help":
        raise HelpRequested(models_help())
    cls = model_class(model)
    by_name = {opt.name: opt for opt in cls.options}
    values: dict[str, Any] = {opt.name: opt.default for opt in cls.options}
    given: set[str] = set()
    for item in parts[1:]:
        if item == "help":
            raise HelpRequested(model_help(model))
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{model}: '{item}' needs a value (key=value)")
        opt = by_name.get(key)
        if opt is None:
            known = ", ".join(by_name)
            raise ConfigError(f"{model}: unknown option '{key}' (options: {known})")
        if key in given:
            raise ConfigError(f"{model}: option '{key}' given twice")
        try:
            values[key] = parse_value(opt, raw)
        except ConfigError as exc:
            raise ConfigError(f"{model}: {key}: {exc}") from None
        given.add(key)
    check = getattr(cls, "check_options", None)  # rules across a model's options
    if check is not None:
        try:
            check(values)
        except ValueError as exc:
            raise ConfigError(f"{model}: {exc}") from None
    return model, values, given


def build_devices(texts: list[str]) -> list[DeviceSpec]:
    """All ``--device`` options, ids assigned in order and checked for clashes."""
    specs: list[DeviceSpec] = []
    used_ids: set[int] = set()
    per_model: dict[str, int] = {}
    parsed = [parse_device(t) for t in texts]
    explicit_ids = {opts["id"] for _, opts, given in parsed if "id" in given}
    next_id = 0
    if sum(model == "pv-iommu" for model, _, _ in parsed) > 1:
        raise ConfigError("at most one pv-iommu per guest (PV_IOMMU_OP has no device field)")
    for model, opts, given in parsed:
        if "id" in given:
            dev_id = int(opts["id"])
        else:
            while next_id in used_ids or next_id in explicit_ids:
                next_id += 1
            dev_id = next_id
        if dev_id in used_ids:
            raise ConfigError(f"device id {dev_id} used twice")
        if not 0 <= dev_id < 0xFFFF:
            raise ConfigError(f"device id {dev_id} out of range")
        used_ids.add(dev_id)
        opts["id"] = dev_id
        k = per_model.get(model, 0)
        per_model[model] = k + 1
        specs.append(DeviceSpec(model, dev_id, f"{_NAME_PREFIX.get(model, model)}{k}", dev_id, opts))
    return specs


@dataclass
class DaemonConfig:
    """Everything a guest session is built from; also the header of a recorded trace."""

    devices: list[DeviceSpec]
    devid_map: DevidMap | None = None
    """The virtual-to-physical ID map and its vIOMMU devices (vmm.devidmap)."""
    dma_masters: list[tuple[int, int, int]] = field(default_factory=list)
    """(segment, first, last): DMA-capable requesters declared by the operator."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "devices": [
                {"model": d.model, "id": d.id, "name": d.name, "segment": d.segment,
                 "options": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in d.options.items()}}
                for d in self.devices
            ]
        }
        if self.devid_map is not None:  # vmm.devidmap.restore puts these back
            doc["devid_map"] = self.devid_map.to_json()
        if self.dma_masters:
            doc["dma_masters"] = [list(m) for m in self.dma_masters]
        return doc
