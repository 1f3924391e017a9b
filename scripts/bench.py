#!/usr/bin/env python3
"""Benchmarks of the viommu daemon, reported as named figures.

    python scripts/bench.py                 # human table, placement stated
    python scripts/bench.py --json          # one JSON object of named figures
    python scripts/bench.py --only mmio_roundtrip --reps 7 --seconds 3

Method (shared/reference/performance-baseline.md): client and server are pinned to the same
CPU (``os.sched_setaffinity``; placement alone changes round trips five-fold on these
machines), every repetition runs all variants of a benchmark back to back (interleaved),
ratios are computed inside one repetition and the median over repetitions is reported.

Each benchmark is a function in ``BENCHMARKS`` that returns a ``Result``: named figures (they
all go into the one ``--json`` object, so names must be unique across benchmarks) and table
rows for the human report.  Later benchmarks (translation, DMA, replay, ...) register the same
way with ``@benchmark("name")``.

``mmio_roundtrip``: MMIO_READ round trips per second over the Unix socket with a blocking
client, beside a raw Unix-socket echo server in C (compiled here with the system's ``cc -O2``;
a blocking-Python echo server where there is no compiler) driven by the same client loop with
the same 28-byte messages.  Figures: ``mmio_roundtrips_per_s``, ``raw_echo_roundtrips_per_s``,
``mmio_vs_raw_ratio`` (target ≥ 0.45), plus ``raw_echo_impl``, CPU time per round trip of
each side, and ``mmio_vs_raw_cpu_ratio`` (the same comparison in CPU time of both ends, which a
busy machine disturbs less than wall-clock time).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from protocols import messages as m  # noqa: E402

Figure = float | int | str


# -- options, results and the registry ---------------------------------------------------

@dataclass(frozen=True)
class Options:
    reps: int
    seconds: float | None  # per measurement, when iterations is None
    iterations: int | None  # per measurement, overrides seconds
    cpu: int | None  # None: leave placement to the scheduler
    echo: str  # "auto", "c" or "python"

    @property
    def placement(self) -> str:
        if self.cpu is None:
            return "unpinned (scheduler decides; bimodal on these machines)"
        return f"client and server pinned to CPU {self.cpu}"


@dataclass
class Result:
    figures: dict[str, Figure] = field(default_factory=dict)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Benchmark = Callable[[Options], Result]
BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str) -> Callable[[Benchmark], Benchmark]:
    def register(fn: Benchmark) -> Benchmark:
        BENCHMARKS[name] = fn
        return fn

    return register


# -- helpers -------------------------------------------------------------------------------

def _proc_cpu_ns(pid: int) -> int | None:
    """CPU time of all threads of ``pid`` in ns (schedstat; None where it is not available)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _cpu_busy() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in vals]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def idlest_cpu(window: float = 0.3) -> int:
    allowed = os.sched_getaffinity(0)
    a = _cpu_busy()
    time.sleep(window)
    b = _cpu_busy()

    def load(c: int) -> float:
        busy = b[c][0] - a[c][0]
        total = b[c][1] - a[c][1]
        return busy / total if total else 0.0

    return min(sorted(c for c in allowed if c in a and c in b), key=load)


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


# -- the round-trip client ---------------------------------------------------------------------

def roundtrips(sock: socket.socket, request: bytes, reply_size: int, n: int) -> None:
    """The tightest blocking loop: send ``request``, receive exactly ``reply_size`` bytes, n times.

    The same code drives the daemon and the raw echo server.
    """
    send = sock.send
    recv = sock.recv
    waitall = socket.MSG_WAITALL
    for _ in range(n):
        send(request)  # 28 bytes into an empty blocking Unix socket: always whole
        if len(recv(reply_size, waitall)) != reply_size:
            raise ConnectionError("short reply (peer went away?)")


@dataclass
class Sample:
    count: int
    wall: float
    client_cpu: float
    server_cpu_ns: int | None

    @property
    def rate(self) -> float:
        return self.count / self.wall

    def us_per(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds / self.count * 1e6


def measure(sock: socket.socket, request: bytes, reply_size: int, server_pid: int,
            opts: Options) -> Sample:
    chunk = 1000
    cpu0 = _proc_cpu_ns(server_pid)
    c0 = time.process_time()
    t0 = time.perf_counter()
    if opts.iterations is not None:
        roundtrips(sock, request, reply_size, opts.iterations)
        count = opts.iterations
        t1 = time.perf_counter()
    else:
        assert opts.seconds is not None
        deadline = t0 + opts.seconds
        count = 0
        while True:
            roundtrips(sock, request, reply_size, chunk)
            count += chunk
            t1 = time.perf_counter()
            if t1 >= deadline:
                break
    c1 = time.process_time()
    cpu1 = _proc_cpu_ns(server_pid)
    server = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Sample(count, t1 - t0, c1 - c0, server)


# -- servers ---------------------------------------------------------------------------------

ECHO_C = r"""
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* argv[1]: an inherited listening Unix socket.  Accept one connection, echo until EOF. */
int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int lfd = atoi(argv[1]);
    int c = accept(lfd, NULL, NULL);
    if (c < 0) return 1;
    close(lfd);
    char buf[4096];
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n < 0;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                return 1;
            }
            off += w;
        }
    }
}
"""

ECHO_PY = r"""
import socket, sys
lst = socket.socket(fileno=int(sys.argv[1]))
conn, _ = lst.accept()
lst.close()
recv, send = conn.recv, conn.sendall
while True:
    data = recv(4096)
    if not data:
        break
    send(data)
"""


def build_echo(tmp: str, want: str) -> tuple[list[str], str, str]:
    """The echo server's command line (listening fd appended later), its impl name, and why."""
    python_cmd = [sys.executable, "-c", ECHO_PY]
    if want == "python":
        return python_cmd, "python", "blocking-Python echo (requested with --echo python)"
    cc = shutil.which("cc")
    why = "no `cc` on PATH"
    if cc is not None:
        src = os.path.join(tmp, "echo.c")
        exe = os.path.join(tmp, "echo")
        with open(src, "w") as f:
            f.write(ECHO_C)
        done = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True)
        if done.returncode == 0:
            return [exe], "c", f"C echo ({cc} -O2)"
        why = f"`cc` failed: {done.stderr.strip()[:200]}"
    if want == "c":
        raise SystemExit(f"bench: --echo c but {why}")
    return python_cmd, "python", f"blocking-Python echo (fallback: {why})"


@contextlib.contextmanager
def served(cmd: list[str], tmp: str, name: str, cpu: int | None,
           ready_request: bytes, reply_size: int) -> Iterator[tuple[socket.socket, int]]:
    """Start a server on an inherited listening socket; yield (connected client, server pid)."""
    path = os.path.join(tmp, f"{name}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    fd = listener.fileno()
    proc = subprocess.Popen(
        [*cmd, str(fd)], pass_fds=[fd], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, preexec_fn=(lambda: _pin(cpu)) if cpu is not None else None,
    )
    listener.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if cpu is not None and os.sched_getaffinity(proc.pid) != {cpu}:
            raise RuntimeError(f"{name}: server not pinned to CPU {cpu}")
        sock.connect(path)
        sock.settimeout(30.0)  # the first reply waits for the server to start (trio import)
        sock.sendall(ready_request)
        first = sock.recv(reply_size, socket.MSG_WAITALL)
        if len(first) != reply_size:
            raise RuntimeError(f"{name}: no reply to the first request (exit {proc.poll()})")
        sock.settimeout(None)  # truly blocking from here on: no poll() per call
        yield sock, proc.pid
    finally:
        sock.close()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- benchmarks ------------------------------------------------------------------------------

MMIO_DEVICE, MMIO_SIZE, MMIO_OFFSET = 0, 4, 0x20  # smmuv3 (first --device), SMMU_CR0
DAEMON_DEVICES = ["smmuv3", "vtd"]


def _check_mmio_reply(reply: bytes) -> None:
    code, flags, size, status, _ = m.REPLY_HEAD.unpack_from(reply, 0)
    if (code, flags, size, status) != (m.Request.MMIO_READ, m.REPLY_FLAGS, 16, 0):
        raise RuntimeError(f"unexpected MMIO_READ reply {reply.hex()}")


@benchmark("mmio_roundtrip")
def bench_mmio_roundtrip(opts: Options) -> Result:
    request = m.request(m.Request.MMIO_READ, m.MMIO_READ.pack(MMIO_DEVICE, MMIO_SIZE, MMIO_OFFSET))
    reply_size = m.HEADER_SIZE + 8 + m.MMIO_VALUE.size
    assert len(request) == reply_size == 28, "the echo must answer as many bytes as the daemon"
    daemon_cmd = [sys.executable, "-m", "vmm", "daemon"]
    for dev in DAEMON_DEVICES:
        daemon_cmd += ["--device", dev]
    daemon_cmd.append("--fd")

    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        echo_cmd, echo_impl, echo_desc = build_echo(tmp, opts.echo)
        with served(echo_cmd, tmp, "echo", opts.cpu, request, reply_size) as (esock, epid), \
                served(daemon_cmd, tmp, "daemon", opts.cpu, request, reply_size) as (dsock, dpid):
            dsock.sendall(request)
            _check_mmio_reply(dsock.recv(reply_size, socket.MSG_WAITALL))
            warm = Options(opts.reps, None, 20_000, opts.cpu, opts.echo)
            measure(esock, request, reply_size, epid, warm)
            measure(dsock, request, reply_size, dpid, warm)
            echo: list[Sample] = []
            mmio: list[Sample] = []
            for _ in range(opts.reps):  # interleaved: echo then MMIO in every repetition
                echo.append(measure(esock, request, reply_size, epid, opts))
                mmio.append(measure(dsock, request, reply_size, dpid, opts))
            dsock.sendall(request)
            _check_mmio_reply(dsock.recv(reply_size, socket.MSG_WAITALL))

    ratios = [b.rate / a.rate for a, b in zip(echo, mmio, strict=True)]
    res = Result()
    f = res.figures
    f["mmio_roundtrips_per_s"] = round(statistics.median(s.rate for s in mmio), 1)
    f["raw_echo_roundtrips_per_s"] = round(statistics.median(s.rate for s in echo), 1)
    f["mmio_vs_raw_ratio"] = round(statistics.median(ratios), 4)
    cpu_ratios = [((a.server_cpu_ns / 1e9 + a.client_cpu) / a.count)
                  / ((b.server_cpu_ns / 1e9 + b.client_cpu) / b.count)
                  for a, b in zip(echo, mmio, strict=True)
                  if a.server_cpu_ns is not None and b.server_cpu_ns is not None]
    if cpu_ratios:  # CPU time of both ends per round trip: steadier than wall clock on a busy box
        f["mmio_vs_raw_cpu_ratio"] = round(statistics.median(cpu_ratios), 4)
    f["raw_echo_impl"] = echo_impl
    f["mmio_roundtrip_placement"] = "cpu" + str(opts.cpu) if opts.cpu is not None else "unpinned"
    for name, samples in (("mmio", mmio), ("raw_echo", echo)):
        server = _median_or_none([s.us_per(None if s.server_cpu_ns is None else
                                           s.server_cpu_ns / 1e9) for s in samples])
        client = statistics.median(s.client_cpu / s.count * 1e6 for s in samples)
        if server is not None:
            f[f"{name}_server_cpu_us_per_roundtrip"] = round(server, 3)
        f[f"{name}_client_cpu_us_per_roundtrip"] = round(client, 3)

    res.headers = ["variant", "round trips/s", "µs/rt (median)", "min–max µs",
                   "server CPU µs/rt", "client CPU µs/rt", "ratio to echo"]
    for label, samples, prefix in ((f"raw echo, {echo_impl}", echo, "raw_echo"),
                                   ("daemon MMIO_READ", mmio, "mmio")):
        us = [1e6 / s.rate for s in samples]
        srv = f.get(f"{prefix}_server_cpu_us_per_roundtrip")
        res.rows.append([
            label,
            _fmt_rate(statistics.median(s.rate for s in samples)),
            f"{statistics.median(us):.2f}",
            _spread(us),
            "?" if srv is None else f"{srv:.2f}",
            f"{f[f'{prefix}_client_cpu_us_per_roundtrip']:.2f}",
            "1.000" if prefix == "raw_echo" else
            f"{f['mmio_vs_raw_ratio']:.3f} (per rep {min(ratios):.3f}–{max(ratios):.3f})",
        ])
    n = mmio[0].count if opts.iterations is not None else None
    res.notes.append(
        f"{opts.reps} reps x " + (f"{n:,} round trips" if n else f"~{opts.seconds:g} s")
        + " per variant, interleaved; ratio per rep, then median; target ratio ≥ 0.45"
    )
    if cpu_ratios:
        res.notes.append(f"ratio of CPU time per round trip (both ends, echo ÷ MMIO): "
                         f"{f['mmio_vs_raw_cpu_ratio']:.3f}")
    res.notes.append(f"reference: {echo_desc}; client: blocking send + recv(MSG_WAITALL) "
                     f"of 28-byte messages (MMIO_READ device {MMIO_DEVICE}, "
                     f"size {MMIO_SIZE}, offset {MMIO_OFFSET:#x})")
    return res


def _pipelined(sock: socket.socket, request: bytes, reply_size: int, n: int,
               window: int) -> None:
    """Send ``window`` requests back to back, then read their replies; ``n`` in all."""
    batch = request * window
    recv = sock.recv
    waitall = socket.MSG_WAITALL
    want = reply_size * window
    for _ in range(n // window):
        sock.sendall(batch)
        got = 0
        while got < want:
            chunk = recv(min(want - got, 1 << 20), waitall)
            if not chunk:
                raise ConnectionError("daemon went away")
            got += len(chunk)


def _timed(fn: Callable[[int], None], per_call: int, opts: Options) -> float:
    """Items per second of ``fn(calls)`` over the measurement time (``per_call`` items each)."""
    calls = max(1, (opts.iterations or 0) // per_call) if opts.iterations else 0
    t0 = time.perf_counter()
    if calls:
        fn(calls)
        done = calls
    else:
        assert opts.seconds is not None
        deadline, done, step = t0 + opts.seconds, 0, 4
        while time.perf_counter() < deadline:
            fn(step)
            done += step
    return done * per_call / (time.perf_counter() - t0)


@benchmark("socket_paths")
def bench_socket_paths(opts: Options) -> Result:
    """DMA and batched TRANSLATE through the socket, beside the raw C echo's round trips.

    The requester is StreamID 0x10 of the vSMMUv3 with SMMUEN=0 and GBPA bypass, so what is
    measured is the protocol, the session, the model's routing and guest memory — not a walk.
    """
    from vmm.harness import GuestRam

    echo_req = m.request(m.Request.MMIO_READ, m.MMIO_READ.pack(MMIO_DEVICE, MMIO_SIZE, MMIO_OFFSET))
    daemon_cmd = [sys.executable, "-m", "vmm", "daemon"]
    for dev in DAEMON_DEVICES:
        daemon_cmd += ["--device", dev]
    daemon_cmd.append("--fd")
    ram = GuestRam(0x4000_0000, 64 << 20)
    dma_req = m.request(m.Request.DMA, m.DMA.pack(0x10, m.NO_PASID, ram.gpa + 0x10_0000, 4096, 0, 0))
    dma_reply = m.HEADER_SIZE + 8 + 4096
    n_batch = 1024
    batch_req = m.request(m.Request.TRANSLATE_BATCH, m.BATCH_HEAD.pack(n_batch, 0) + b"".join(
        m.TRANSLATE.pack(0x10, m.NO_PASID, ram.gpa + (i % 256) * 4096, 0, 0, 0)
        for i in range(n_batch)))
    batch_reply = m.HEADER_SIZE + 8 + 32 * n_batch
    echo_rates: list[float] = []
    dma_rates: list[float] = []
    tr_rates: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
            echo_cmd, echo_impl, _ = build_echo(tmp, opts.echo)
            with served(echo_cmd, tmp, "echo", opts.cpu, echo_req, 28) as (esock, _e), \
                    served(daemon_cmd, tmp, "daemon", opts.cpu, echo_req, 28) as (dsock, _d):
                table = m.MEM_TABLE_HEAD.pack(1, 0) + m.REGION.pack(ram.gpa, ram.size, 0)
                dsock.sendmsg([m.request(m.Request.SET_MEM_TABLE, table)],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [ram.fd]).tobytes())])
                head = dsock.recv(20, socket.MSG_WAITALL)
                if m.REPLY_HEAD.unpack(head)[3] != 0:
                    raise RuntimeError("SET_MEM_TABLE failed")
                for _ in range(opts.reps):
                    echo_rates.append(_timed(
                        lambda k: roundtrips(esock, echo_req, 28, k * 1000), 1000, opts))
                    dma_rates.append(_timed(
                        lambda k: _pipelined(dsock, dma_req, dma_reply, k * 64, 32), 64, opts))
                    tr_rates.append(_timed(
                        lambda k: _pipelined(dsock, batch_req, batch_reply, k, 1), n_batch, opts))
    finally:
        ram.close()
    res = Result(headers=["figure", "median /s", "range"])
    f = res.figures
    f["dma_4k_pipelined_per_s"] = round(statistics.median(dma_rates), 1)
    f["translate_batched_per_s"] = round(statistics.median(tr_rates), 1)
    ratios = [t / e for t, e in zip(tr_rates, echo_rates, strict=True)]
    f["translate_batched_vs_raw_rtt_ratio"] = round(statistics.median(ratios), 3)
    for name, rates in (("raw echo round trips", echo_rates), ("DMA 4 KiB reads, 32 in flight",
                        dma_rates), ("TRANSLATE in batches of 1024", tr_rates)):
        res.rows.append([name, _fmt_rate(statistics.median(rates)),
                         f"{_fmt_rate(min(rates))}–{_fmt_rate(max(rates))}"])
    res.notes.append(f"echo: {echo_impl}; targets: dma_4k_pipelined_per_s >= 40,000; "
                     "translate_batched_vs_raw_rtt_ratio >= 5 (per rep, then median)")
    return res


@benchmark("pv_map_unmap")
def bench_pv_map_unmap(opts: Options) -> Result:
    """PV-IOMMU batches against the trap-and-emulate vIOMMUs (scripts/bench_pv.py)."""
    import math

    from bench_pv import pv_figures

    notes: dict[str, str] = {}
    seconds = min(opts.seconds or 0.5, 1.0)  # three variants per repetition
    got = pv_figures(seconds, opts.reps, cpu=opts.cpu, notes=notes)
    res = Result(headers=["figure", "value"])
    for name, value in got.items():
        if math.isnan(value):
            res.rows.append([name, "n/a"])
            continue
        res.figures[name] = value
        res.rows.append([name, f"{value:,.2f}" if "ratio" in name else _fmt_rate(value)])
    res.notes = [f"{name}: {note}" for name, note in notes.items()]
    res.notes.append("PV: map_pages + unmap_pages batches; trap paths: one page per "
                     "dma_map/dma_unmap, strict invalidation (target ratio >= 5)")
    return res


@benchmark("translate")
def bench_translate(opts: Options) -> Result:
    """In-process translations: IOTLB hits and 4-level walk misses in Python and C, beside a
    plain C walker over the same tables (scripts/bench_translate.py)."""
    from bench_translate import translate_figures

    rows: list[list[str]] = []
    # At least 9 repetitions: each is a fraction of a second, and the fastest of a few short
    # runs still depends on when the machine was quiet.
    got = translate_figures(max(opts.reps, 9), rows=rows)  # main() has pinned this process
    res = Result(figures=dict(got),
                 headers=["figure", "fastest /s", "ns each", "median /s", "range"], rows=rows)
    res.notes.append("targets: iotlb_hit_per_s >= 3 M/s, walk_miss_python_per_s >= 500 k/s, "
                     "walk_c_batched_vs_reference_ratio >= 0.3; rates in CPU time, each "
                     "figure the fastest repetition (interference only adds time)")
    res.notes.append("the *_vs_python_loop ratios: per repetition, over the bare loop; on the "
                     "baseline machine (36.9 M loops/s) the targets are 0.081 and 0.0135")
    return res


@benchmark("replay")
def bench_replay(opts: Options) -> Result:
    """Replaying a recorded trace, and what recording costs the daemon (scripts/bench_replay.py)."""
    from bench_replay import replay_figures

    got = replay_figures(min(opts.seconds or 1.0, 2.0), opts.reps, cpu=opts.cpu)
    res = Result(figures=dict(got), headers=["figure", "value"])
    for name, value in got.items():
        res.rows.append([name, f"{value:,.3f}" if "ratio" in name else f"{value:,.0f}"])
    res.notes.append("targets: replay_events_per_s >= 50,000; record_throughput_ratio >= 0.7 "
                     "(MMIO round trips with --record / without; _writes: the costliest mix)")
    return res


# -- driver ----------------------------------------------------------------------------------

def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(
            (c.ljust(w) if i == 0 else c.rjust(w))
            for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object of named figures")
    p.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=float, default=2.0,
                   help="seconds per measurement (default 2)")
    g.add_argument("--iterations", type=int, help="round trips per measurement, instead of --seconds")
    p.add_argument("--only", action="append", metavar="NAME", choices=sorted(BENCHMARKS),
                   help=f"run only this benchmark (repeatable): {', '.join(sorted(BENCHMARKS))}")
    p.add_argument("--cpu", default="0",
                   help="CPU to pin client and servers to: a number (default 0), 'auto' (the "
                        "idlest allowed CPU over 0.3 s), or 'none' (do not pin)")
    p.add_argument("--echo", choices=["auto", "c", "python"], default="auto",
                   help="raw echo server: C if cc works (auto), or force one")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be ≥ 1")
    cpu: int | None
    if args.cpu == "none":
        cpu = None
    elif args.cpu == "auto":
        cpu = idlest_cpu()
    else:
        try:
            cpu = int(args.cpu)
        except ValueError:
            p.error(f"--cpu {args.cpu!r}: not a number, 'auto' or 'none'")
    if cpu is not None and cpu not in os.sched_getaffinity(0):
        p.error(f"CPU {cpu} is not available to this process ({sorted(os.sched_getaffinity(0))})")
    opts = Options(args.reps, None if args.iterations else args.seconds, args.iterations, cpu,
                   args.echo)
    return args, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    _pin(opts.cpu)  # the client; servers are pinned to the same CPU at spawn
    names = args.only or list(BENCHMARKS)
    figures: dict[str, Any] = {}
    for name in names:
        res = BENCHMARKS[name](opts)
        clash = figures.keys() & res.figures.keys()
        if clash:
            raise RuntimeError(f"figure names reused by {name}: {sorted(clash)}")
        figures.update(res.figures)
        if not args.json:
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"== {name} — {opts.placement} ({os.cpu_count()} CPUs online; "
                  f"load average {load})")
            if os.getloadavg()[0] > 1.5:
                print("   busy machine: other processes compete for the CPU, absolute figures "
                      "drop; the per-rep ratio and CPU µs/rt are the steadier figures")
            print(_table(res.headers, res.rows))
            for note in res.notes:
                print(f"   {note}")
            print()
    if args.json:
        print(json.dumps(figures, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
