#!/usr/bin/env python3
"""Benchmarks of record and replay (issue 7), as named figures.

    python scripts/bench_replay.py            # a table
    python scripts/bench_replay.py --json     # {"replay_events_per_s": ..., ...}

``replay_figures()`` is the entry point for a benchmark registry.  Figures:

* ``replay_events_per_s`` (target ≥ 50,000): trace events (lines after the header) replayed
  per second by ``vmm.replay.replay_file``, reading a gzip trace.  The trace is recorded here
  from a sans-IO session doing what a driver does: MMIO writes and reads on both models,
  VT-d DMA through second-stage tables (each walk reads root, context and page-table entries
  from guest memory), DMA data, and SMMU command-queue work with CMD_SYNC MSIs written to
  RAM.  Median of ``reps`` runs, CPU time.
* ``record_throughput_ratio`` (target ≥ 0.7): MMIO round trips per second of a ``vmm daemon
  --record trace.jsonl.gz`` over those of a daemon without it, each a subprocess serving a
  blocking client alternating MMIO_WRITE (a register that changes every time, so each write
  carries a register delta) and MMIO_READ.  Client and daemons are pinned to one CPU (as
  scripts/bench.py does); the two daemons are measured back to back in every repetition and
  the median ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from protocols import messages as m  # noqa: E402
from protocols.messages import Request  # noqa: E402

RAM = 0x4000_0000
RAM_SIZE = 8 << 20
SID = 0x18  # 00:03.0
VTD, SMMU = 1, 0


# -- a recorded workload ---------------------------------------------------------------------

def _workload(requests: int) -> Iterator[tuple[bytes, list[int]]]:
    from vmm.memory import make_memfd

    fd = make_memfd(RAM_SIZE)
    mm = __import__("mmap").mmap(fd, RAM_SIZE)

    def put(gpa: int, value: int) -> None:
        struct.pack_into("<Q", mm, gpa - RAM, value)

    # VT-d legacy mode: root table, one context entry (TT=0, AW=48-bit), 4-level tables
    # mapping IOVA page i to RAM + 1 MiB + i pages for 512 pages.
    root, ctx, pml4, pdpt, pd, pt = (RAM + n * 0x1000 for n in range(6))
    put(root, ctx | 1)
    put(ctx + 16 * SID, pml4 | 1)
    put(ctx + 16 * SID + 8, 2 | (5 << 8))
    put(pml4, pdpt | 3)
    put(pdpt, pd | 3)
    put(pd, pt | 3)
    for i in range(512):
        put(pt + 8 * i, (RAM + 0x10_0000 + 0x1000 * i) | 3)
    # SMMUv3: a command queue of CMD_SYNCs with an MSI write to RAM (CS=SIG_IRQ... MSI).
    cmdq = RAM + 0x8_0000
    for i in range(16):
        put(cmdq + 16 * i, 0x46 | (1 << 12) | (0x5A5A << 32))  # CMD_SYNC, CS=IRQ, MSIData
        put(cmdq + 16 * i + 8, RAM + 0x9_0000)  # MSIAddress
    yield m.request(Request.SET_MEM_TABLE,
                    m.MEM_TABLE_HEAD.pack(1, 0) + m.REGION.pack(RAM, RAM_SIZE, 0)), [fd]

    def mw(dev: int, off: int, value: int, size: int = 4) -> bytes:
        return m.request(Request.MMIO_WRITE, m.MMIO_WRITE.pack(dev, size, off, value))

    def mr(dev: int, off: int, size: int = 4) -> bytes:
        return m.request(Request.MMIO_READ, m.MMIO_READ.pack(dev, size, off))

    yield mw(VTD, 0x20, root, 8), []
    yield mw(VTD, 0x18, 1 << 30), []  # SRTP
    yield mw(VTD, 0x18, 1 << 31), []  # TE
    yield mw(SMMU, 0x90, cmdq | 4, 8), []
    yield mw(SMMU, 0x20, 1 << 3), []  # CMDQEN
    prod = 0
    n = 0
    while n < requests:
        for i in range(64):
            page = (n * 7 + i) % 512
            yield mw(VTD, 0x3C, n & 0xFFFF), []  # FEDATA: drops the session's cache too
            yield m.request(Request.DMA, m.DMA.pack(SID, m.NO_PASID, page << 12, 64, 0, VTD)), []
            yield mr(VTD, 0x34), []
            n += 3
        prod = (prod + 1) & 0x1F
        yield mw(SMMU, 0x98, prod), []
        yield mr(SMMU, 0x9C), []
        n += 2
    mm.close()
    os.close(fd)


def record_workload(path: str, requests: int) -> int:
    """Record the workload in-process into ``path``; returns the events written."""
    from vmm.config import DaemonConfig, build_devices
    from vmm.guest import GuestSession
    from vmm.record import Recorder

    config = DaemonConfig(build_devices(["smmuv3", f"vtd,rids={SID:#x}-{SID:#x}"]))
    rec = Recorder(path, config, source="bench")
    session = GuestSession(config, recorder=rec)
    conn = rec.connection(session)
    for message, fds in _workload(requests):
        conn.receive(message, [os.dup(fd) for fd in fds])
    session.close()
    rec.close()
    return rec.events


def replay_rate(path: str, reps: int) -> tuple[float, int, int]:
    """(median events/s, events, divergences) of replaying ``path``."""
    from vmm.replay import replay_file

    rates = []
    events = diverged = 0
    for _ in range(reps):
        c0 = time.process_time()
        summary, _ = replay_file(path)
        cpu = time.process_time() - c0
        events, diverged = summary.events, len(summary.divergences)
        rates.append(summary.events / cpu)
    return statistics.median(rates), events, diverged


# -- recording cost in the daemon ------------------------------------------------------------

def _daemon(tmp: str, name: str, cpu: int, record: str | None) -> tuple[subprocess.Popen[bytes],
                                                                          socket.socket]:
    path = os.path.join(tmp, f"{name}.sock")
    cmd = [sys.executable, "-m", "vmm", "daemon", "--socket-path", path,
           "--pidfile", path + ".pid", "--device", "smmuv3", "--device", "vtd"]
    if record:
        cmd += ["--record", record]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    deadline = time.monotonic() + 30
    while not os.path.exists(path + ".pid"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the daemon did not start")
        time.sleep(0.02)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return proc, sock


def _mmio_rate(sock: socket.socket, seconds: float) -> float:
    send, recv = sock.send, sock.recv
    waitall = socket.MSG_WAITALL
    read = m.request(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0x70))
    pack_write = m.MMIO_WRITE.codec.pack
    head = m.HEADER.pack(Request.MMIO_WRITE, m.VERSION, m.MMIO_WRITE.size)
    count = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for i in range(500):
            send(head + pack_write(0, 4, 0x70, (count + i) & 0xFFFF))  # GERROR_IRQ_CFG1
            if len(recv(20, waitall)) != 20:
                raise ConnectionError("short reply")
            send(read)
            if len(recv(28, waitall)) != 28:
                raise ConnectionError("short reply")
        count += 1000
        t1 = time.perf_counter()
        if t1 >= deadline:
            return count / (t1 - t0)


def record_ratio(seconds: float, reps: int) -> tuple[float, float, float]:
    """(median with/without ratio, round trips/s without, with)."""
    cpu = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    ratios, plain_rates, rec_rates = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        plain, plain_sock = _daemon(tmp, "plain", cpu, None)
        recorded, rec_sock = _daemon(tmp, "rec", cpu, os.path.join(tmp, "t.jsonl.gz"))
        try:
            _mmio_rate(plain_sock, 0.2)  # warm both up
            _mmio_rate(rec_sock, 0.2)
            for rep in range(reps):
                order = [(plain_sock, plain_rates), (rec_sock, rec_rates)]
                for sock, rates in order if rep % 2 == 0 else order[::-1]:
                    rates.append(_mmio_rate(sock, seconds))
                ratios.append(rec_rates[-1] / plain_rates[-1])
        finally:
            for proc, sock in ((plain, plain_sock), (recorded, rec_sock)):
                sock.close()
                proc.terminate()
                proc.wait(10)
            os.sched_setaffinity(0, old)
    return statistics.median(ratios), statistics.median(plain_rates), statistics.median(rec_rates)


def replay_figures(seconds: float = 2.0, reps: int = 5,
                   requests: int = 100_000) -> dict[str, float]:
    """The figures of this benchmark (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = os.path.join(tmp, "workload.jsonl.gz")
        record_workload(path, requests)
        size = os.path.getsize(path)
        rate, events, diverged = replay_rate(path, max(1, reps // 2))
    if diverged:
        raise RuntimeError(f"the benchmark trace diverged in replay ({diverged})")
    ratio, plain, recorded = record_ratio(seconds, reps)
    return {
        "replay_events_per_s": round(rate),
        "replay_trace_events": events,
        "replay_trace_bytes_per_event": round(size / events, 1),
        "record_throughput_ratio": round(ratio, 3),
        "record_mmio_roundtrips_per_s": round(recorded),
        "plain_mmio_roundtrips_per_s": round(plain),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    figures = replay_figures(args.seconds, args.reps, args.requests)
    if args.json:
        print(json.dumps(figures))
    else:
        targets = {"replay_events_per_s": "≥ 50,000", "record_throughput_ratio": "≥ 0.7"}
        for name, value in figures.items():
            print(f"{name:32} {value:>12,}  {targets.get(name, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
