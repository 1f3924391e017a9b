"""The built-in test guest behind ``vmm guest`` and ``vmm run``.

It does what a guest OS does first: negotiate, hand over its RAM, read the configuration,
let each device DMA through its IOMMU while translation is still off (SMMUv3 GBPA bypass,
VT-d with TE clear), then bring every IOMMU up the way its Linux driver does.  The report
says what was checked and what was seen.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import trio

from vmm.drivers.smmuv3 import ProbeResult, SMMUv3Driver
from vmm.drivers.vtd import VTdDriver
from vmm.harness import Client, Fault, GuestRam

RAM_LAYOUT = ((0x4000_0000, 32 << 20), (0x4200_0000, 32 << 20))


@dataclass
class DeviceReport:
    id: int
    model: str
    name: str
    ids: dict[str, str] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


@dataclass
class Report:
    features: int = 0
    devices: list[DeviceReport] = field(default_factory=list)
    dma_bytes: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.devices) and all(d.ok for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "features": self.features, "dma_bytes": self.dma_bytes,
            "devices": [
                {"id": d.id, "model": d.model, "name": d.name, "ok": d.ok, "ids": d.ids,
                 "checks": [{"check": n, "ok": ok, "detail": det} for n, ok, det in d.checks]}
                for d in self.devices
            ],
        }


async def _dma_round_trip(client: Client, dev: dict[str, Any], ram: GuestRam,
                          report: DeviceReport) -> int:
    """A device writes a pattern through the (disabled) IOMMU and reads it back."""
    requester = dev["requesters"][0][0]
    gpa = ram.alloc(3 * 4096)
    pattern = bytes((dev["id"] * 7 + i) & 0xFF for i in range(2 * 4096 + 100))
    iova = gpa + 4000  # crosses two page boundaries
    result = await client.dma(requester, iova, data=pattern, segment=dev["segment"])
    landed = ram.read(iova, len(pattern))
    report.checks.append(("DMA write lands untranslated", result == b"" and landed == pattern,
                          f"{len(pattern)} bytes at {iova:#x}"))
    back = await client.dma(requester, iova, len(pattern), segment=dev["segment"])
    report.checks.append(("DMA read returns the bytes", back == pattern, ""))
    outside = await client.dma(requester, 0x10_0000_0000, 64, segment=dev["segment"])
    report.checks.append(("DMA outside guest RAM faults (kind 8)",
                          isinstance(outside, Fault) and outside.kind == 8, repr(outside)))
    return 2 * len(pattern)


async def run_test_guest(path: str) -> Report:
    report = Report()
    async with await Client.connect(path) as client:
        report.features = await client.get_features()
        await client.set_features(report.features)
        rams = [GuestRam(gpa, size) for gpa, size in RAM_LAYOUT]
        try:
            await client.set_mem_table(rams)
            config = await client.get_config()
            for dev in config["devices"]:
                dr = DeviceReport(dev["id"], dev["model"], dev["name"])
                report.devices.append(dr)
                report.dma_bytes += await _dma_round_trip(client, dev, rams[0], dr)
                probe: ProbeResult
                if dev["model"] == "smmuv3":
                    probe = await SMMUv3Driver(client, dev["id"], rams[1]).probe()
                    dr.ids = {"IDR0": f"{probe.idr0:#010x}", "IDR1": f"{probe.idr1:#010x}",
                              "IDR3": f"{probe.idr3:#010x}", "IDR5": f"{probe.idr5:#010x}"}
                elif dev["model"] == "vtd":
                    probe = await VTdDriver(client, dev["id"], rams[1]).probe()
                    dr.ids = {"VER": f"{probe.idr0:#x}", "CAP": f"{probe.idr1:#018x}",
                              "ECAP": f"{probe.idr3:#018x}"}
                else:
                    continue
                dr.checks.extend(probe.steps)
        finally:
            for ram in rams:
                ram.close()
    return report


def print_report(report: Report, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    print(f"viommu test guest: features {report.features:#x}, "
          f"{report.dma_bytes} bytes of DMA")
    for d in report.devices:
        ids = " ".join(f"{k}={v}" for k, v in d.ids.items())
        print(f"  [{d.id}] {d.model} {d.name}: {'OK' if d.ok else 'FAILED'}  {ids}")
        for name, ok, detail in d.checks:
            mark = "ok  " if ok else "FAIL"
            print(f"      {mark} {name}" + (f"  ({detail})" if detail and not ok else ""))
    print("result:", "PASS" if report.ok else "FAIL")


def run_with_daemon(devices: list[str]) -> Report:
    """Start ``vmm daemon`` on an inherited listening socket, run the guest, stop it."""
    with tempfile.TemporaryDirectory(prefix="vmm-run-") as tmp:
        path = os.path.join(tmp, "vmm.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        cmd = [sys.executable, "-m", "vmm", "daemon", "--fd", str(listener.fileno())]
        for dev in devices:
            cmd += ["--device", dev]
        proc = subprocess.Popen(cmd, pass_fds=[listener.fileno()])
        listener.close()
        try:
            return trio.run(run_test_guest, path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
