"""QEMU ``-trace`` logs (protocols/qemutrace.py) and the read mask derived from the register
declarations (vmm/replay.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.regs import ALL, Register
from protocols.qemutrace import QemuTraceError, parse
from protocols.qtest import MmioAccess
from vmm.cli import main
from vmm.config import DaemonConfig, build_devices
from vmm.guest import GuestSession
from vmm.record import model_registers
from vmm.replay import is_id_register, read_mask

SMMU = {"smmuv3": 0}


def test_lines_of_every_known_shape() -> None:
    log = "\n".join([
        "memory_region_ops_write cpu 0 mr 0x55d0c6f8e0a0 addr 0x20 value 0xc size 4 "
        "name 'smmuv3'",
        "4242@1712345678.123456:memory_region_ops_read cpu 1 mr 0x55d0 addr 0x24 value 0xc "
        "size 4 name 'smmuv3'",
        "2026-01-02T03:04:05.000006Z memory_region_ops_read cpu -1 mr 0x1 addr 0x0 "
        "value 0x1 size 8 name 'pcie-mmcfg'",  # another region: skipped
        "smmuv3_write_mmio addr: 0x20, val:0xc, size: 0x4(0)",  # another event: skipped
        "memory_region_ops_write cpu 0 mr 0x55d0 addr 0x90 value 0x40000004 size 8",  # no name
    ])
    assert parse(log, SMMU) == [
        MmioAccess(1, 0, 0x20, 4, 0xC, None, "write 0x20 size 4 <- 0xc"),
        MmioAccess(2, 0, 0x24, 4, None, 0xC, "read 0x24 size 4"),
    ]
    assert parse(log, SMMU, default_device=0)[-1] == MmioAccess(
        5, 0, 0x90, 8, 0x4000_0004, None, "write 0x90 size 8 <- 0x40000004")


def test_a_broken_line_is_named() -> None:
    with pytest.raises(QemuTraceError, match="line 2: .*without addr"):
        parse("\nmemory_region_ops_read cpu 0 mr 0x1 value 0x1 size 4 name 'smmuv3'\n", SMMU)
    with pytest.raises(QemuTraceError, match="line 1: access size 3"):
        parse("memory_region_ops_read cpu 0 mr 0x1 addr 0x0 value 0x1 size 3 name 'smmuv3'",
              SMMU)


def test_id_registers_come_from_the_declarations() -> None:
    session = GuestSession(DaemonConfig(build_devices(["smmuv3", "vtd"])))
    ids = {dev: {r.name for r in regs.registers if is_id_register(r)}
           for dev, regs in model_registers(session)}
    assert {"IDR0", "IDR1", "IDR3", "IDR5", "AIDR"} <= ids["0"]
    assert not ids["0"] & {"CR0", "CR0ACK", "GERROR", "IRQ_CTRLACK", "CMDQ_CONS", "GBPA"}
    assert {"VER", "CAP", "ECAP"} <= ids["1"]
    assert not ids["1"] & {"GSTS", "FSTS", "FECTL", "IQH", "CCMD"}
    assert is_id_register(Register("X", 0, 32, reset=1, ro=ALL))
    assert not is_id_register(Register("X", 0, 32, reset=0, ro=ALL))  # status, moves
    assert not is_id_register(Register("X", 0, 32, reset=1, ro=ALL & ~1))  # a writable bit


def test_masks_cover_halves_of_64_bit_registers() -> None:
    session = GuestSession(DaemonConfig(build_devices(["vtd"])))
    regs = dict(model_registers(session))["0"]
    assert read_mask(regs, 0x8, 8) == ((1 << 64) - 1, "CAP")
    assert read_mask(regs, 0xC, 4) == (0xFFFF_FFFF, "CAP")
    assert read_mask(regs, 0x1C, 4) == (0, "GSTS")
    assert read_mask(regs, 0x8, 8, frozenset({"CAP"})) == (0, "CAP")
    assert read_mask(regs, 0x400, 4) == (0, None)


def linux_probe_log(idr0: int, cr0ack: int) -> str:
    """What QEMU logs while Linux probes an SMMUv3 and enables its command queue."""
    def line(op: str, addr: int, value: int, size: int = 4) -> str:
        return (f"1234@1700000000.000001:memory_region_ops_{op} cpu 0 mr 0x5555 "
                f"addr {addr:#x} value {value:#x} size {size} name 'arm-smmuv3'")
    return "\n".join([
        line("read", 0x0, idr0), line("write", 0x20, 0), line("read", 0x24, 0),
        line("write", 0x90, 0x4000_0004, 8), line("write", 0x98, 0), line("write", 0x9C, 0),
        line("write", 0x20, 0x8), line("read", 0x24, cr0ack),
    ]) + "\n"


def test_a_linux_probe_replays_with_id_registers_compared(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          ) -> None:
    session = GuestSession(DaemonConfig(build_devices(["smmuv3"])))
    idr0 = dict(model_registers(session))["0"]["IDR0"]
    log = tmp_path / "qemu.log"
    log.write_text(linux_probe_log(idr0, 0x8))
    assert main(["replay", str(log), "--device", "smmuv3"]) == 0
    out = capsys.readouterr().out
    assert "3 MMIO reads, 1 reads compared, 0 mismatches" in out
    assert "[smmu0.CR0ACK] (trace 0x8, not compared)" in out
    # QEMU's SMMU has no MSI (IDR0.MSI = 0): a model configured otherwise is told so
    log.write_text(linux_probe_log(idr0 & ~(1 << 13), 0x8))
    assert main(["replay", str(log), "--device", "smmuv3"]) == 1
    assert "smmu0.IDR0 read" in (out := capsys.readouterr().out) and ": MSI)" in out
    assert main(["replay", str(log), "--device", "smmuv3", "--ignore", "IDR0", "-q"]) == 0
    capsys.readouterr()


def test_region_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "qemu.log"
    log.write_text("memory_region_ops_write cpu 0 mr 0x1 addr 0x20 value 0x8 size 4 "
                   "name 'my-smmu'\n")
    assert main(["replay", str(log), "--device", "smmuv3", "-q"]) == 0
    assert "0 MMIO writes" in capsys.readouterr().out  # not the usual name: skipped
    assert main(["replay", str(log), "--device", "smmuv3", "--region", "my-smmu", "-q"]) == 0
    assert "1 MMIO writes" in capsys.readouterr().out
