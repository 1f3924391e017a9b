"""Determinism, proven: sessions recorded through the real daemon replay bit-exact, and a
corrupted trace is reported as a divergence at the right place (vmm/replay.py)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from protocols import messages as m
from protocols import pviommu as pv
from protocols import trace as t
from protocols.messages import Request
from tests.trace_helpers import CONFIG, drive
from vmm.cli import bind_listener, main
from vmm.config import MODELS, DaemonConfig, build_devices
from vmm.daemon import serve_listener
from vmm.guest import GuestSession
from vmm.harness import Client, GuestRam
from vmm.memory import make_memfd
from vmm.record import Recorder
from vmm.replay import Summary, replay_file
from vmm.testguest import run_test_guest

ROOT = Path(__file__).resolve().parent.parent


def complete(path: Path) -> bool:
    try:
        with t.TraceReader(str(path)) as reader:
            last = None
            for _, ev in reader.events():
                last = ev
            return last is not None and last["k"] == "end"
    except (OSError, EOFError, t.TraceError):
        return False


async def wait_complete(path: Path) -> None:
    """The server writes the end of a trace once it has seen the guest go away."""
    with trio.fail_after(10):
        while not complete(path):
            await trio.sleep(0.01)


def replay_ok(path: Path) -> Summary:
    summary, _ = replay_file(str(path))
    assert [d.render() for d in summary.divergences] == []
    assert summary.complete
    return summary


@pytest.mark.parametrize("devices", [["smmuv3", "vtd"], ["vtd,scalable-mode=on"]],
                         ids=["smmuv3+vtd", "vtd-scalable"])
async def test_the_test_guest_replays_bit_exact(tmp_path: Path, nursery: trio.Nursery,
                                                devices: list[str]) -> None:
    sock = str(tmp_path / "vmm.sock")
    pattern = str(tmp_path / "trace-{conn}.jsonl.gz")
    listener = bind_listener(sock)
    config = DaemonConfig(build_devices(devices))
    await nursery.start(lambda task_status: serve_listener(listener, config, task_status,
                                                           record=pattern))
    report = await run_test_guest(sock)
    path = tmp_path / "trace-1.jsonl.gz"
    await wait_complete(path)
    listener.close()
    summary = replay_ok(path)
    with t.TraceReader(str(path)) as reader:
        events = list(reader.events())
    assert summary.events == len(events)
    kinds = {ev["k"] for _, ev in events}
    assert {"mmio_read", "mmio_write", "dma", "read", "write"} <= kinds
    assert report.devices  # the guest did its work (its own checks are not ours)


@pytest.mark.skipif("pv-iommu" not in MODELS, reason="no PV-IOMMU model yet")
async def test_a_pv_iommu_session_replays_bit_exact(tmp_path: Path,
                                                    nursery: trio.Nursery) -> None:
    path = tmp_path / "pv.jsonl"
    client = Client.in_process(nursery, ["pv-iommu,rids=0-0xff", "smmuv3,sids=0x100-0x1ff"],
                               record=str(path))
    ram = GuestRam(0x4000_0000, 1 << 20)
    try:
        await client.set_features(await client.get_features())
        await client.set_mem_table([ram])

        async def op(cmd: pv.Cmd, layout: Any, **fields: int) -> dict[str, int]:
            reply = await client.call(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(cmd, 0)
                                      + pv.pack(layout, **fields))
            return {"status": reply.status, **pv.unpack(layout, reply.data)}

        await op(pv.Cmd.query_capabilities, pv.Capabilities)
        await op(pv.Cmd.init, pv.Init, max_ctx_no=2)
        ctx = (await op(pv.Cmd.alloc_context, pv.Alloc))["ctx_no"]
        ram.write(0x4000_2010, b"pv-iommu")
        mapped = await op(pv.Cmd.map_pages, pv.MapPages, ctx_no=ctx, gfn=0x40002, dfn=7,
                          map_flags=pv.IOMMU_MAP_readable, pgsize=4096, nr_pages=1)
        assert mapped["status"] == 0
        await op(pv.Cmd.reattach_device, pv.ReattachDevice, ctx_no=ctx, devfn=5)
        seg = (await client.get_config())["devices"][0]["segment"]
        assert await client.dma(5, 0x7010, 8, segment=seg) == b"pv-iommu"
        await client.dma(5, 0x8000, 8, segment=seg)  # not mapped: a fault
        await op(pv.Cmd.unmap_pages, pv.UnmapPages, ctx_no=ctx, dfn=7, pgsize=4096,
                 nr_pages=1)
        await client.mmio_read(1, 0)
    finally:
        await client.aclose()
        ram.close()
    await wait_complete(path)
    replay_ok(path)
    assert "pv_iommu_op" in path.read_text()


def test_the_daemon_process_records_and_vmm_replay_agrees(tmp_path: Path) -> None:
    sock = str(tmp_path / "d.sock")
    pidfile = str(tmp_path / "d.pid")
    pattern = str(tmp_path / "conn%d.jsonl.gz")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmm", "daemon", "--socket-path", sock, "--pidfile", pidfile,
         "--device", "smmuv3", "--device", "vtd", "--record", pattern], env=env)
    try:
        for _ in range(1000):
            if os.path.exists(pidfile):
                break
            trio.run(trio.sleep, 0.01)
        trio.run(run_test_guest, sock)
        trio.run(run_test_guest, sock)  # a second guest: a second file
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    for n in (1, 2):
        out = subprocess.run([sys.executable, "-m", "vmm", "replay",
                              str(tmp_path / f"conn{n}.jsonl.gz")],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "no divergence" in out.stdout


def test_a_bad_record_pattern_stops_the_daemon_at_start(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        ) -> None:
    code = main(["daemon", "--socket-path", str(tmp_path / "s"), "--device", "smmuv3",
                 "--record", str(tmp_path / "missing" / "t.jsonl")])
    assert code == 1
    assert "no directory" in capsys.readouterr().err


# -- corruption ----------------------------------------------------------------------------------

@pytest.fixture
def gerror_trace(tmp_path: Path) -> list[str]:
    """The lines of a small recorded session: an illegal SMMU command raises GERROR."""
    path = tmp_path / "g.jsonl"
    rec = Recorder(str(path), CONFIG, source="test")
    session = GuestSession(CONFIG, recorder=rec)
    drive(rec.connection(session))
    session.close()
    rec.close()
    return path.read_text().splitlines()


def replay_lines(tmp_path: Path, lines: list[str], **kw: object) -> Summary:
    path = tmp_path / "edited.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary, _ = replay_file(str(path), **kw)  # type: ignore[arg-type]
    return summary


def find(lines: list[str], kind: str, start: int = 1) -> int:
    """Index (0-based; line number - 1) of the first event of ``kind``."""
    return next(i for i in range(start, len(lines)) if json.loads(lines[i])["k"] == kind)


def request_of(lines: list[str], index: int) -> int:
    while json.loads(lines[index])["k"] not in t.REQUEST_KINDS:
        index -= 1
    return index


def test_the_untouched_trace_replays(tmp_path: Path, gerror_trace: list[str]) -> None:
    summary = replay_lines(tmp_path, gerror_trace)
    assert summary.divergences == [] and summary.complete


def test_a_changed_read_value_diverges_in_its_request(tmp_path: Path,
                                                      gerror_trace: list[str]) -> None:
    i = find(gerror_trace, "read")
    ev = json.loads(gerror_trace[i])
    ev["data"] = "46" + ev["data"][2:]  # the command becomes CMD_SYNC: legal, no GERROR
    lines = [*gerror_trace[:i], json.dumps(ev), *gerror_trace[i + 1:]]
    first = replay_lines(tmp_path, lines).divergences[0]
    assert first.request_line == request_of(lines, i) + 1
    assert first.line == i + 2  # the interrupt the changed command no longer raises
    assert first.what == "recorded output the replay did not produce"
    assert "GERROR" in {d.register for d in first.state}  # and the register that differs


def test_a_dropped_read_line_is_pointed_at(tmp_path: Path, gerror_trace: list[str]) -> None:
    i = find(gerror_trace, "read")
    lines = gerror_trace[:i] + gerror_trace[i + 1:]
    first = replay_lines(tmp_path, lines).divergences[0]
    assert (first.line, first.what) == (i + 1, "read not as recorded")
    assert first.observed.startswith("read gpa=0x40000000 n=16")


def test_a_dropped_interrupt_is_pointed_at(tmp_path: Path, gerror_trace: list[str]) -> None:
    i = find(gerror_trace, "irq")
    lines = gerror_trace[:i] + gerror_trace[i + 1:]
    first = replay_lines(tmp_path, lines).divergences[0]
    assert first.line == i + 1
    assert first.what == "irq the trace does not have"
    assert first.observed == "irq dev=0 vec=3"


def test_a_dropped_request_line_is_found(tmp_path: Path, gerror_trace: list[str]) -> None:
    i = find(gerror_trace, "mmio_write")  # IRQ_CTRL: without it no interrupt is raised
    lines = gerror_trace[:i] + gerror_trace[i + 1:]
    first = replay_lines(tmp_path, lines).divergences[0]
    assert json.loads(lines[first.line - 1])["k"] == "irq"
    assert first.what == "recorded output the replay did not produce"


def test_a_changed_reply_is_pointed_at(tmp_path: Path, gerror_trace: list[str]) -> None:
    i = find(gerror_trace, "mmio_read")
    ev = json.loads(gerror_trace[i])
    ev["value"] = "0x0"
    lines = [*gerror_trace[:i], json.dumps(ev), *gerror_trace[i + 1:]]
    first = replay_lines(tmp_path, lines).divergences[0]
    assert (first.line, first.what) == (i + 1, "reply differs")
    assert (first.expected, first.observed) == ("value=0x0", "value=0x1")


def test_changed_registers_are_a_divergence(tmp_path: Path, gerror_trace: list[str]) -> None:
    i = find(gerror_trace, "mmio_write")
    ev = json.loads(gerror_trace[i])
    ev["regs"]["0"]["IRQ_CTRLACK"] = "0x0"
    lines = [*gerror_trace[:i], json.dumps(ev), *gerror_trace[i + 1:]]
    first = replay_lines(tmp_path, lines).divergences[0]
    assert (first.line, first.what) == (i + 1, "registers differ after the request")
    assert [str(d) for d in first.state] == ["smmu0.IRQ_CTRLACK: expected 0x0, observed 0x1"]


def test_continue_reports_every_divergence(tmp_path: Path, gerror_trace: list[str]) -> None:
    lines = list(gerror_trace)
    for kind in ("irq", "mmio_read"):
        i = find(lines, kind)
        ev = json.loads(lines[i])
        if kind == "irq":
            ev["vec"] = 0
        else:
            ev["value"] = "0x5"
        lines[i] = json.dumps(ev)
    assert len(replay_lines(tmp_path, lines).divergences) == 1
    found = replay_lines(tmp_path, lines, keep_going=True).divergences
    assert [d.what for d in found] == ["irq not as recorded",
                                       "recorded output the replay did not produce",
                                       "reply differs"]


def test_until_stops_at_an_event(tmp_path: Path, gerror_trace: list[str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(gerror_trace) + "\n")
    summary, run = replay_file(str(path), until=4)
    assert summary.stopped_at == 4 and summary.requests == 3
    assert ("smmu0", "IRQ_CTRL", 1) in run.registers()
    assert main(["replay", str(path), "--until", "4"]) == 0
    out = capsys.readouterr().out
    assert "stopped after event 4" in out and "smmu0.IRQ_CTRL = 0x1" in out


def test_the_command_reports_and_exits_non_zero(tmp_path: Path, gerror_trace: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    i = find(gerror_trace, "irq")
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(gerror_trace[:i] + gerror_trace[i + 1:]) + "\n")
    assert main(["replay", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"divergence at line {i + 1} (event {i})" in out
    assert "in request at line" in out and "expected:" in out and "observed:" in out
    assert "device state that differs" not in out or "GERROR" in out
    assert "1 divergence" in out


def test_a_truncated_trace_says_so(tmp_path: Path, gerror_trace: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text("\n".join(gerror_trace[:-1]) + "\n")
    assert main(["replay", "--quiet", str(path)]) == 0
    assert "cut short" in capsys.readouterr().out


def test_not_a_trace_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"format": "something else"}\n')
    assert main(["replay", "--format", "trace", str(path)]) == 2
    assert "not a viommu trace" in capsys.readouterr().err
    path.write_text(json.dumps(t.make_header(CONFIG.to_json(), features=0, state={},
                                             source="t", connection=1, created="", vmm="0"))
                    + '\n{"k": "teleport"}\n')
    assert main(["replay", str(path)]) == 2
    assert "line 2: unknown event kind 'teleport'" in capsys.readouterr().err


def vtd_walk_trace(path: Path) -> list[str]:
    """A VT-d unit in legacy mode translating a DMA read through second-stage tables: the
    walk reads root, context and four page-table entries from guest memory."""
    config = DaemonConfig(build_devices(["vtd,rids=0x18-0x18"]))
    rec = Recorder(str(path), config, source="test")
    session = GuestSession(config, recorder=rec)
    conn = rec.connection(session)
    ram = GuestRam(0x4000_0000, 4 << 20)
    root, ctx, pml4, pdpt, pd, pt = (ram.gpa + n * 0x1000 for n in range(6))
    ram.write_u64(root, ctx | 1)
    ram.write_u64(ctx + 16 * 0x18, pml4 | 1)  # present, TT=0 (second stage), SSPTPTR
    ram.write_u64(ctx + 16 * 0x18 + 8, 2 | (5 << 8))  # AW=2 (48-bit, 4 levels), DID 5
    for table, child in ((pml4, pdpt), (pdpt, pd), (pd, pt)):
        ram.write_u64(table, child | 3)
    ram.write_u64(pt + 8 * 3, (ram.gpa + 0x10_0000) | 3)  # IOVA page 3 -> RAM + 1 MiB, R|W
    ram.write(ram.gpa + 0x10_0000, b"walked!!")

    def send(code: int, payload: bytes, fds: list[int] | None = None) -> bytes:
        return conn.receive(m.request(code, payload), fds or [])

    send(Request.SET_MEM_TABLE, m.MEM_TABLE_HEAD.pack(1, 0) + m.REGION.pack(ram.gpa,
                                                                            ram.size, 0),
         [os.dup(ram.fd)])
    send(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 8, 0x20, root))  # RTADDR
    send(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 4, 0x18, 1 << 30))  # GCMD.SRTP
    send(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 4, 0x18, 1 << 31))  # GCMD.TE
    reply = send(Request.DMA, m.DMA.pack(0x18, m.NO_PASID, 0x3000, 8, 0, 0))
    assert reply.endswith(b"walked!!")
    send(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0x34))  # FSTS
    session.close()
    rec.close()
    ram.close()
    return path.read_text().splitlines()


def test_a_changed_page_table_entry_diverges_at_its_dma(tmp_path: Path) -> None:
    lines = vtd_walk_trace(tmp_path / "walk.jsonl")
    assert replay_lines(tmp_path, lines).divergences == []
    dma = find(lines, "dma")
    leaf = next(i for i in range(dma, len(lines))
                if json.loads(lines[i]).get("gpa") == hex(0x4000_5000 + 8 * 3))
    ev = json.loads(lines[leaf])
    ev["data"] = "00" + ev["data"][2:]  # R and W cleared: the page is no longer mapped
    edited = [*lines[:leaf], json.dumps(ev), *lines[leaf + 1:]]
    first = replay_lines(tmp_path, edited).divergences[0]
    assert first.request_line == dma + 1
    assert dma + 1 <= first.line <= find(edited, "mmio_read", dma) + 1
    assert "fault" in first.observed
    assert {"FSTS"} <= {d.register for d in first.state}  # the fault it recorded


def test_a_dropped_walk_read_is_pointed_at(tmp_path: Path) -> None:
    lines = vtd_walk_trace(tmp_path / "walk.jsonl")
    dma = find(lines, "dma")
    third = find(lines, "read", dma) + 2
    edited = lines[:third] + lines[third + 1:]
    first = replay_lines(tmp_path, edited).divergences[0]
    assert (first.line, first.what) == (third + 1, "read not as recorded")


def test_progress_is_reported_for_long_traces(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl.gz"
    rec = Recorder(str(path), CONFIG)
    conn = rec.connection(GuestSession(CONFIG, recorder=rec))
    for i in range(3000):
        conn.receive(m.request(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 4, 0x70, i)))
    rec.close()
    seen: list[tuple[int, int]] = []
    summary, _ = replay_file(str(path), progress=lambda done, total: seen.append((done, total)))
    assert summary.requests == 3000 and not summary.divergences
    assert len(seen) == 2 and all(0 < done <= total for done, total in seen)


def test_a_directory_replays_every_trace(tmp_path: Path, gerror_trace: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "a.jsonl").write_text("\n".join(gerror_trace) + "\n")
    (traces / "b.jsonl").write_text("\n".join(gerror_trace[:-2]) + "\n")  # a read, the end
    (traces / "notes.txt").write_text("not a trace")
    assert main(["replay", str(traces), "-q"]) == 1
    out = capsys.readouterr().out
    events = len(gerror_trace) - 1
    assert f"a.jsonl: {events} events, no divergence" in out
    assert f"b.jsonl: {events - 2} events, 1 divergence" in out
    assert "replayed 2 traces: 1 with divergences" in out


async def test_vmm_record_dir_records_every_daemon(tmp_path: Path, nursery: trio.Nursery,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIOMMU_RECORD_DIR", str(tmp_path))
    sock = str(tmp_path / "d.sock")
    listener = bind_listener(sock)
    await nursery.start(serve_listener, listener, CONFIG)
    for _ in range(2):
        async with await Client.connect(sock) as client:
            await client.mmio_read(0, 0)
    with trio.fail_after(10):
        while len(list(tmp_path.glob("vmm-*.jsonl.gz"))) < 2 or not all(
                complete(p) for p in tmp_path.glob("vmm-*.jsonl.gz")):
            await trio.sleep(0.01)
    listener.close()
    for path in tmp_path.glob("vmm-*.jsonl.gz"):
        replay_ok(path)


# -- delivery outcomes are inputs (protocol.md §1 "ATC_INVALIDATE", "Interrupts") -----------

def lost_delivery_trace(tmp_path: Path) -> list[str]:
    """No back-end channel: an ATC_INV nobody takes fails the CMD_SYNC (CERROR_ATC_INV_SYNC)
    and the GERROR MSI to a non-RAM address aborts (MSI_GERROR_ABT_ERR)."""
    ram = 0x4000_0000
    fd = make_memfd(1 << 20)
    os.pwrite(fd, struct.pack("<4Q", 0x40 | 5 << 32, 0, 0x46, 0), 0)  # ATC_INV; CMD_SYNC
    script = [(m.request(Request.SET_MEM_TABLE,
                         m.MEM_TABLE_HEAD.pack(1, 0) + m.REGION.pack(ram, 1 << 20, 0)), [fd])]
    for off, value, size in ((0x68, 0x0800_0000, 8), (0x50, 1, 4), (0x90, ram | 4, 8),
                             (0x20, 1 << 3 | 1, 4), (0x98, 2, 4)):
        script.append((m.request(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, size, off, value)),
                       []))
    path = tmp_path / "lost.jsonl"
    rec = Recorder(str(path), CONFIG, source="test")
    session = GuestSession(CONFIG, recorder=rec)
    conn = rec.connection(session)
    for message, fds in script:
        conn.receive(message, [os.dup(f) for f in fds])
    os.close(fd)
    gerror = session.slots[0].model.mmio_read(0x60, 4)
    assert gerror == 1 | 1 << 7  # CMDQ_ERR | MSI_GERROR_ABT_ERR
    session.close()
    rec.close()
    return path.read_text().splitlines()


def test_lost_atc_and_msi_outcomes_are_recorded_and_replay(tmp_path: Path) -> None:
    lines = lost_delivery_trace(tmp_path)
    events = [json.loads(line) for line in lines[1:]]
    assert [e.get("ok") for e in events if e["k"] == "atc_inv"] == [False]
    assert [e.get("ok") for e in events if e["k"] == "irq"] == [False]
    summary = replay_lines(tmp_path, lines)
    assert summary.divergences == [] and summary.complete


def test_replay_answers_delivery_from_the_trace(tmp_path: Path) -> None:
    lines = lost_delivery_trace(tmp_path)
    i = find(lines, "atc_inv")
    ev = json.loads(lines[i])
    del ev["ok"]  # as if a device had taken it: the CMD_SYNC completes, no GERROR
    edited = [*lines[:i], json.dumps(ev), *lines[i + 1:]]
    first = replay_lines(tmp_path, edited).divergences[0]
    assert first.what == "recorded output the replay did not produce"  # the GERROR MSI
    assert {d.register for d in first.state} >= {"GERROR", "CMDQ_CONS"}
