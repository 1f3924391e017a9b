"""qtest scripts and logs (protocols/qtest.py) and ``vmm replay --format qtest``."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from protocols.qtest import (
    ClockStep,
    MmioAccess,
    Note,
    QtestError,
    RamRead,
    RamWrite,
    number,
    parse,
)
from vmm.cli import main
from vmm.config import DaemonConfig, build_devices
from vmm.replay import ImportRun, default_ram, device_windows, run_imported

DATA = Path(__file__).parent / "data" / "qtest"
VTD = [(0, 0xFED9_0000, 0x1000)]


def test_numbers_read_as_strtoull_base_0() -> None:
    assert number("0x1F") == 31
    assert number("017") == 15  # a leading zero is octal
    assert number("0") == 0
    assert number("42") == 42
    assert number("-1") == (1 << 64) - 1
    with pytest.raises(ValueError):
        number("0x")


def test_accesses_map_to_windows_or_ram() -> None:
    events = parse("writel 0xfed90018 0x80000000\nreadq 0xfed90008\n"
                   "writew 0x1000 0x123456\nreadb 0x2000\n", VTD)
    assert events == [
        MmioAccess(1, 0, 0x18, 4, 0x8000_0000, None, "writel 0xfed90018 0x80000000"),
        MmioAccess(2, 0, 0x8, 8, None, None, "readq 0xfed90008"),
        RamWrite(3, 0x1000, b"\x56\x34", "writew 0x1000 0x123456"),  # truncated to 2 bytes
        RamRead(4, 0x2000, 1, None, "readb 0x2000", True),
    ]


def test_memory_commands() -> None:
    b64 = base64.b64encode(b"hello").decode()
    events = parse(f"write 0x100 4 0xaabb\nb64write 0x200 3 {b64}\nmemset 0x300 2 0x1ff\n"
                   "read 0x100 4\nb64read 0x200 3\n", VTD)
    assert [type(e) for e in events] == [RamWrite, RamWrite, RamWrite, RamRead, RamRead]
    assert events[0].data == b"\xaa\xbb\x00\x00"  # type: ignore[union-attr]
    assert events[1].data == b"hel"  # type: ignore[union-attr]
    assert events[2].data == b"\xff\xff"  # type: ignore[union-attr]


def test_logs_carry_expected_values() -> None:
    log = ("[I 0.000000] OPENED\n"
           "[R +0.000010] readl 0xfed90000\n"
           "IRQ raise 3\n"
           "[S +0.000012] OK 0x0000000000000010\n"
           "[R +0.000020] readq 0x1000\n"
           "[S +0.000021] OK 0x0000000000000102\n"
           "[R +0.000030] read 0x1000 2\n"
           "[S +0.000031] OK 0x0201\n"
           "[DMA] write 0x2000 2 0xbeef\n"
           "[R +0.000040] clock_step 100\n"
           "[S +0.000041] OK 100\n"
           "[I +0.000050] CLOSED\n")
    events = parse(log, VTD)
    assert events[0] == MmioAccess(2, 0, 0, 4, None, 0x10, "readl 0xfed90000")
    assert events[1] == RamRead(5, 0x1000, 8, (0x102).to_bytes(8, "little"), "readq 0x1000",
                                True)
    assert events[2] == RamRead(7, 0x1000, 2, b"\x02\x01", "read 0x1000 2")
    assert events[3] == RamWrite(9, 0x2000, b"\xbe\xef", "write 0x2000 2 0xbeef")
    assert isinstance(events[4], ClockStep) and events[4].ns == 100


@pytest.mark.parametrize(("script", "message"), [
    ("writel 0x1000 1\noutl 0xcf8 0x80001800\n", "line 2: port I/O is not supported"),
    ("inb 0x60\n", "line 1: port I/O"),
    ("frobnicate 1 2\n", "line 1: unsupported qtest command 'frobnicate'"),
    ("writel\n", "line 1: malformed 'writel'"),
    ("writel 0xfed90ffe 1\n", "straddles the edge of a device window"),
    ("write 0xfed90000 4 0x01020304\n", "'write' touches a device window"),
    ("read 0x1000 0\n", "read of size 0"),
    ("set_irq_in /machine/foo irq 0 1\n", "line 1: set_irq_in is not supported"),
])
def test_unsupported_commands_name_their_line(script: str, message: str) -> None:
    with pytest.raises(QtestError, match=message.replace("(", r"\(")):
        parse(script, VTD)


def test_unsupported_commands_can_be_skipped() -> None:
    events = parse("outb 0x80 1\nwritel 0xfed90018 0\n", VTD, skip_unsupported=True)
    assert isinstance(events[0], Note) and events[0].text.startswith("skipped: port I/O")
    assert isinstance(events[1], MmioAccess)


def test_default_ram_leaves_the_windows_out() -> None:
    assert default_ram([(0x0905_0000, 0x2_0000), (0xFED9_0000, 0x1000)]) == [
        (0, 0x0905_0000), (0x0907_0000, (1 << 31) - 0x0907_0000)]


def run_script(name: str, devices: list[str]) -> tuple[ImportRun, int]:
    config = DaemonConfig(build_devices(devices))
    windows = device_windows(config)
    events = parse((DATA / name).read_text(), windows)
    run = ImportRun(config, default_ram([(b, n) for _, b, n in windows]), out=io.StringIO(),
                    quiet=True)
    summary = run_imported(events, run, keep_going=False)
    return run, summary.errors + summary.mismatches


def test_qi_wait_with_status_write_and_interrupt() -> None:
    run, bad = run_script("vtd-qi-wait-sw-if.qtest", ["vtd"])
    try:
        assert bad == 0
        assert run.ram.read(0x200000, 4) == (0x1234).to_bytes(4, "little")  # status written
        regs = run.session.slots[0].model.regs  # type: ignore[attr-defined]
        assert regs["ICS"] == 1 and regs["FSTS"] == 0 and regs["IQH"] == 0x10
        assert run.summary.irqs == 1  # the invalidation completion event
    finally:
        run.close()


def test_qi_wait_with_fence_only_is_no_error() -> None:
    run, bad = run_script("vtd-qi-wait-fn-only.qtest", ["vtd"])
    try:
        assert bad == 0
        regs = run.session.slots[0].model.regs  # type: ignore[attr-defined]
        assert regs["FSTS"] == 0 and regs["IQH"] == 0x10
        assert run.ram.read(0x200000, 4) == bytes(4)  # no status write
    finally:
        run.close()


@pytest.mark.parametrize(("name", "device"), [
    (p.name, "smmuv3" if p.name.startswith("smmuv3") else "vtd")
    for p in sorted(DATA.glob("*.qtest"))])
def test_every_reproducer_runs_clean(name: str, device: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--format", "qtest", str(DATA / name), "--device", device]) == 0
    out = capsys.readouterr().out
    assert " 0 mismatches, 0 refused" in out


def test_the_format_is_guessed_and_mismatches_fail(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.log"
    log.write_text("[R +0.1] readl 0xfed90000\n[S +0.1] OK 0x0000000000000011\n"
                   "[R +0.2] readl 0xfed9001c\n[S +0.2] OK 0x0000000000000005\n")
    assert main(["replay", str(log), "--device", "vtd"]) == 1
    out = capsys.readouterr().out
    assert "line 1: readl 0xfed90000: dmar0.VER read 0x10, trace has 0x11" in out
    assert "mismatches" in out
    assert main(["replay", str(log), "--device", "vtd", "--ignore", "VER"]) == 0
    assert "(trace 0x5, not compared)" in capsys.readouterr().out  # GSTS is status


def test_a_qtest_replay_needs_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "s.qtest"
    script.write_text("outb 0x80 0\n")
    assert main(["replay", "--format", "qtest", str(script)]) == 2
    assert "needs --device" in capsys.readouterr().err
    assert main(["replay", "--format", "qtest", str(script), "--device", "vtd"]) == 2
    assert "line 1: port I/O is not supported" in capsys.readouterr().err
