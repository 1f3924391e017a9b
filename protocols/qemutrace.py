"""QEMU ``-trace`` logs of one memory region as replayable MMIO (reference/protocols.md §6).

QEMU's device-independent trace events ``memory_region_ops_read`` and
``memory_region_ops_write`` log every access to a memory region, with the offset inside it.
The ``log`` back-end prints them as::

    memory_region_ops_write cpu 0 mr 0x55d0c6f8e0a0 addr 0x20 value 0xc size 4 name 'smmuv3'

QEMU before 5.0 has no ``name``; a ``PID@SEC.USEC:`` prefix (``-msg timestamp=on`` in older
QEMUs) or an ISO timestamp before the event name is allowed.  ``parse`` keeps the accesses of
the regions it is given — ``{region name: device id}`` — and, for lines without a name, those
of ``default_device``; every other line (other events, other regions) is skipped.  Writes
become ``MmioAccess`` writes, reads become reads whose ``expect`` is the logged value; which
bits of it to compare is the replayer's business (vmm/replay.py derives it from the register
declarations).  No device logic here.
"""

from __future__ import annotations

import re

from protocols.qtest import MmioAccess

REGION_NAMES: dict[str, tuple[str, ...]] = {
    # hw/arm/smmuv3.c names its region after the type; examples and older builds say smmuv3
    "smmuv3": ("smmuv3", "arm-smmuv3"),
    # hw/i386/intel_iommu.c: memory_region_init_io(&s->csrmem, ..., "intel_iommu", ...)
    "vtd": ("intel_iommu", "intel-iommu"),
}
"""The region names QEMU gives each model's MMIO window."""

_EVENT = re.compile(r"memory_region_ops_(read|write)\b(.*)$")
_ADDR = re.compile(r"\baddr (0x[0-9a-fA-F]+)")
_VALUE = re.compile(r"\bvalue (0x[0-9a-fA-F]+)")
_SIZE = re.compile(r"\bsize (\d+)")
_NAME = re.compile(r"\bname '([^']*)'")


class QemuTraceError(Exception):
    """A ``memory_region_ops_*`` line this importer cannot read (the log's fault)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def parse(text: str, regions: dict[str, int], *,
          default_device: int | None = None) -> list[MmioAccess]:
    """The accesses of the chosen regions, in log order."""
    out: list[MmioAccess] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        event = _EVENT.search(line)
        if event is None:
            continue
        rest = event.group(2)
        name = _NAME.search(rest)
        if name is None:
            device = default_device
        else:
            device = regions.get(name.group(1))
        if device is None:
            continue
        addr, value, size = _ADDR.search(rest), _VALUE.search(rest), _SIZE.search(rest)
        if addr is None or value is None or size is None:
            raise QemuTraceError(lineno, "memory_region_ops line without addr, value or size: "
                                 f"'{line.strip()}'")
        nbytes = int(size.group(1))
        if nbytes not in (1, 2, 4, 8):
            raise QemuTraceError(lineno, f"access size {nbytes} (1, 2, 4 or 8 expected)")
        offset, val = int(addr.group(1), 16), int(value.group(1), 16)
        shown = f"{event.group(1)} {offset:#x} size {nbytes}"
        if event.group(1) == "write":
            out.append(MmioAccess(lineno, device, offset, nbytes,
                                  val & ((1 << (8 * nbytes)) - 1), None, f"{shown} <- {val:#x}"))
        else:
            out.append(MmioAccess(lineno, device, offset, nbytes, None, val, shown))
    return out
