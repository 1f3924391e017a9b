"""The protocol target: mutated messages and fds thrown at a live daemon over its socket.

The daemon runs as a subprocess (``python -m vmm daemon --socket-path P --device ...``), so
the socket edge, the fd handling and the session all take part.  One execution is one message.
Messages start from a well-formed request of every code (memfds, eventfds, sockets attached
where the request takes them) and are mutated field by field (interesting values, flags, sizes,
extra/missing/wrong fds, fds sent with payload bytes, unknown codes); their ``size`` stays true
so the stream stays in step, except for the inputs that end a connection on purpose (an
oversized ``size``, a message cut short).

Messages go in pipelined batches, each followed by a GET_FEATURES.  Oracles per batch:

- the daemon is alive and answers: exactly one reply per request, in order, each well formed
  (``vmm.fuzz.oracles.check_reply``), the final GET_FEATURES with status 0 and its 8 bytes;
- a batch answers within ``REPLY_TIMEOUT`` seconds;
- fds: while a connection lasts the daemon holds at most what the requests may keep (64
  regions, one eventfd per interrupt vector, one channel) above its idle count; once the
  connection is closed its fd count returns to the idle count (/proc/PID/fd).

A failure keeps the messages of the connection that failed; they are minimized (ddmin against
fresh daemons, within ``--minimize-seconds``) and written as a reproducer
(``{"target": "protocol", "messages": [{"data": hex, "fds": [kind...], "late": bool}]}``) that
``vmm fuzz --reproduce`` sends to a fresh daemon again.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import errno as E
import hashlib
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols import messages as m
from protocols.messages import Request
from vmm import config
from vmm.fuzz.minimize import ddmin
from vmm.fuzz.oracles import Failure, check_reply, split_reply
from vmm.fuzz.program import RandomSource, Source, flip_bits, pick, word

BATCH = 48
BATCHES_PER_CONNECTION = 24
REPLY_TIMEOUT = 10.0
FD_SLACK = 4
MAX_KEPT_FDS = 64 + 16 + 1
"""What one connection may legitimately hold: 64 mapped regions, the eventfds of every
interrupt vector (up to 16 across the models here), one back-end channel."""

FD_KINDS = ("memfd", "eventfd", "stream", "socket", "pipe", "small-memfd")
_HDR = struct.Struct("<III")


@dataclass
class Message:
    data: bytes
    fds: tuple[str, ...] = ()
    late: bool = False
    """Send the fds with the payload's first byte instead of the header's."""
    ends: bool = False
    """The connection ends after it (oversized size, or cut short)."""

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data.hex(), "fds": list(self.fds), "late": self.late,
                "ends": self.ends}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Message:
        return cls(bytes.fromhex(doc["data"]), tuple(doc.get("fds", ())),
                   bool(doc.get("late", False)), bool(doc.get("ends", False)))


def daemon_devices() -> list[str]:
    devices = ["smmuv3", "vtd,scalable-mode=on,pasid-bits=8,device-iotlb=on,pri=on"]
    if "pv-iommu" in config.MODELS:
        devices.append("pv-iommu")
    return devices


# -- fds ----------------------------------------------------------------------------------------


def make_fd(kind: str, keep: list[int]) -> int:
    """A fresh fd of ``kind``; any peer we must keep open goes to ``keep``."""
    if kind in ("memfd", "small-memfd"):
        fd = os.memfd_create("fuzz-ram", os.MFD_CLOEXEC)
        os.ftruncate(fd, 0x10000 if kind == "memfd" else 0x1000)
        return fd
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    if kind == "stream":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        keep.append(ours.detach())
        return theirs.detach()
    if kind == "socket":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach()
    r, w = os.pipe2(os.O_CLOEXEC)
    keep.append(w)
    return r


# -- message generation ---------------------------------------------------------------------------

_REQUEST_CODES = tuple(int(c) for c in Request)


def _region(src: Source, index: int) -> bytes:
    gpa = pick(src, (0, 0x10000 * (index + 1), 0x8000_0000, 1 << 52, 0x1234))
    size = pick(src, (0x10000, 0x1000, 0, 0x20000, 1 << 40))
    offset = pick(src, (0, 0, 0x1000, 0x10000, 3))
    return m.REGION.pack(gpa, size, offset)


def request(src: Source) -> Message:
    """A well-formed (or nearly) request of a random code, with its fds."""
    code = pick(src, _REQUEST_CODES)
    dev = pick(src, (0, 1, 2, 0xFFFF_FFFF, 7))
    fds: tuple[str, ...] = ()
    if code in (Request.GET_FEATURES, Request.GET_CONFIG):
        payload = b""
    elif code == Request.SET_FEATURES:
        payload = m.FEATURES.pack(pick(src, (0, 0x6, 0x3_0000_0006, 0x7, 1 << 63)))
    elif code == Request.SET_MEM_TABLE:
        n = pick(src, (0, 1, 2, 3))
        payload = m.MEM_TABLE_HEAD.pack(n, 0) + b"".join(_region(src, i) for i in range(n))
        fds = tuple(pick(src, ("memfd", "memfd", "small-memfd")) for _ in range(n))
    elif code == Request.ADD_MEM_REG:
        payload = _region(src, src.below(8))
        fds = ("memfd",)
    elif code == Request.REM_MEM_REG:
        payload = _region(src, src.below(8))
    elif code == Request.RESET:
        payload = m.RESET.pack(dev, 0)
    elif code in (Request.MMIO_READ, Request.MMIO_WRITE):
        size = pick(src, (4, 8, 4, 1, 2, 3))
        offset = pick(src, (0, 0x20, 0x24, 0x18, 0x1C, 0x98, 0x88, 0x100A8, 0xFFC, 0x1FFF8))
        if code == Request.MMIO_READ:
            payload = m.MMIO_READ.pack(dev, size, offset)
        else:
            payload = m.MMIO_WRITE.pack(dev, size, offset, word(src, 8 * min(size, 8)))
    elif code in (Request.DMA, Request.TRANSLATE):
        pasid = m.NO_PASID if src.below(3) else src.below(4)
        iova = pick(src, (0, 0x1000, 0x10000, (1 << 64) - 8, 1 << 52, 0x8000_0000))
        flags = src.below(8) if src.below(8) else src.bits(16)
        segment = pick(src, (0, 1, 2, 3))
        if code == Request.DMA:
            length = pick(src, (4, 64, 4096, 0, 8, (1 << 20) + 1))
            if not src.below(64):
                length = 1 << 20  # a whole MiB: slow to serve, so rare
            body = bytes(min(length, 1 << 20)) if flags & 1 and length <= 8192 else b""
            payload = m.DMA.pack(src.below(512), pasid, iova, length, flags, segment) + body
        else:
            payload = m.TRANSLATE.pack(src.below(512), pasid, iova, flags, segment, 0)
    elif code == Request.PV_IOMMU_OP:
        payload = struct.pack("<II", src.below(14), 0) + bytes(8 * src.below(6))
    elif code == Request.SET_IRQ_FD:
        payload = m.SET_IRQ_FD.pack(dev, src.below(5))
        fds = ("eventfd",)
    elif code == Request.SET_BACKEND_CHANNEL:
        payload = b""
        fds = ("stream",)
    elif code in (Request.TRANSLATE_BATCH, Request.DMA_BATCH):
        count = pick(src, (0, 1, 3, 16))
        head = m.BATCH_HEAD.pack(count, 0)
        if code == Request.TRANSLATE_BATCH:
            payload = head + b"".join(m.TRANSLATE.pack(src.below(16), m.NO_PASID,
                                                       0x1000 * src.below(16), src.below(2),
                                                       src.below(2), 0) for _ in range(count))
        else:
            payload = head + b"".join(m.DMA.pack(src.below(16), m.NO_PASID, 0x1000 * i, 8, 0,
                                                 src.below(2)) for i in range(count))
    else:  # PAGE_REQUEST
        payload = m.PAGE_REQUEST.pack(src.below(3), 0, src.below(512), src.below(4),
                                      src.below(32), 0x1000 * src.below(16), src.below(512), 0)
    return Message(m.request(code, payload), fds)


def mutate(src: Source, msg: Message) -> Message:
    """One change to a message; its ``size`` is kept true unless the change ends the stream."""
    code, flags, size = _HDR.unpack_from(msg.data)
    payload = msg.data[m.HEADER_SIZE :]
    fds, late = msg.fds, msg.late
    k = src.below(16)
    if k < 5 and payload:
        payload = flip_bits(src, payload, 1 + src.below(4))
    elif k < 7 and len(payload) >= 4:
        at = 4 * src.below(len(payload) // 4)
        value = pick(src, (0, 1, 0xFFFF_FFFF, 0x8000_0000, 0x7FFF_FFFF, 4096, src.bits(32)))
        payload = payload[:at] + struct.pack("<I", value) + payload[at + 4 :]
    elif k == 7:
        payload = payload[: src.below(len(payload) + 1)]
    elif k == 8:
        payload = payload + bytes(src.below(32)) if src.below(2) else payload + payload
    elif k == 9:
        flags = pick(src, (0, 2, 3, 5, 9, 1 | 1 << 31, src.bits(32)))
    elif k == 10:
        code = pick(src, (0, 8, 15, 18, 31, 34, 47, 49, 63, 66, 127, 131, 255, 0xFFFF_FFFF))
    elif k == 11:
        fds = fds + tuple(pick(src, FD_KINDS) for _ in range(1 + src.below(3)))
    elif k == 12:
        fds = fds[:-1] if fds else (pick(src, FD_KINDS),)
    elif k == 13:
        fds = tuple(pick(src, FD_KINDS) for _ in fds) or (pick(src, FD_KINDS),)
    elif k == 14 or src.below(32):
        late = not late
    else:
        if src.below(2):  # oversized: -E2BIG and the end of the connection
            data = _HDR.pack(code, flags, m.MAX_PAYLOAD + 1 + src.below(1 << 20))
            return Message(data, fds, late, ends=True)
        cut = _HDR.pack(code, flags, len(payload) + 1 + src.below(64)) + payload
        return Message(cut, fds, late, ends=True)
    return Message(_HDR.pack(code & 0xFFFF_FFFF, flags & 0xFFFF_FFFF, len(payload)) + payload,
                   fds, late)


def generate(src: Source) -> Message:
    msg = request(src)
    for _ in range(src.below(3)):
        msg = mutate(src, msg)
    return msg


# -- the daemon --------------------------------------------------------------------------------


class Daemon:
    """A daemon subprocess on a fresh socket; its fds counted through /proc."""

    def __init__(self, devices: list[str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="vmm-fuzz-")
        self.path = os.path.join(self.dir, "vmm.sock")
        pidfile = os.path.join(self.dir, "vmm.pid")
        self.log_path = os.path.join(self.dir, "vmm.log")
        cmd = [sys.executable, "-m", "vmm", "daemon", "--socket-path", self.path,
               "--pidfile", pidfile, "-v", *(f"--device={d}" for d in devices)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.exists(pidfile):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon did not start: {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("daemon did not start in 30 s")
            time.sleep(0.01)
        self.idle_fds = self.fd_count()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self, lines: int = 40) -> str:
        """The end of the daemon's log (warnings and the connection events at -v)."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def settle(self, timeout: float = 3.0) -> int:
        """Wait for the fd count to come back to idle; the count it ends at."""
        deadline = time.monotonic() + timeout
        count = self.fd_count()
        while count != self.idle_fds and time.monotonic() < deadline and self.alive():
            time.sleep(0.001)
            count = self.fd_count()
        return count

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in (self.path, self.log_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


# -- one connection -------------------------------------------------------------------------------


class Session:
    """A client connection that sends messages (with real fds) and checks the replies."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(daemon.path)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        self.keep: list[int] = []
        self.log: list[Message] = []
        self.buf = bytearray()
        self.seen: set[tuple[int, int]] = set()
        """(request code, status) pairs answered: the protocol target's behaviour map."""

    def close(self) -> None:
        self.sock.close()
        for fd in self.keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.keep.clear()

    def _send(self, msg: Message) -> None:
        fds = [make_fd(kind, self.keep) for kind in msg.fds]
        try:
            if not fds:
                self.sock.sendall(msg.data)
                return
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            # (sendall of nothing still makes a send() call, which fails with EPIPE once
            # the daemon has rightly closed after an oversized header: skip it.)
            if msg.late and len(msg.data) > m.HEADER_SIZE:
                self.sock.sendall(msg.data[: m.HEADER_SIZE])
                sent = m.HEADER_SIZE + self.sock.sendmsg([msg.data[m.HEADER_SIZE :]], rights)
            else:
                sent = self.sock.sendmsg([msg.data], rights)
            if sent < len(msg.data):
                self.sock.sendall(msg.data[sent:])
        finally:
            for fd in fds:
                os.close(fd)

    def _reply(self) -> bytes:
        while True:
            if len(self.buf) >= m.HEADER_SIZE:
                _, _, size = _HDR.unpack_from(self.buf)
                if len(self.buf) >= m.HEADER_SIZE + size:
                    reply = bytes(self.buf[: m.HEADER_SIZE + size])
                    del self.buf[: m.HEADER_SIZE + size]
                    return reply
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise Failure("hang", f"no reply within {REPLY_TIMEOUT} s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                time.sleep(0.1)
                raise Failure("closed", "the daemon closed a connection it should have kept:\n"
                              + self.daemon.stderr(8))
            self.buf += chunk

    def _pump(self) -> None:
        """Take whatever replies are there already, so neither side blocks on a full buffer
        while the other is still writing (DMA replies are up to 1 MiB)."""
        while self.poller.poll(0):
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            self.buf += chunk

    def drain_channels(self) -> None:
        for fd in self.keep:
            with contextlib.suppress(OSError):
                while os.read(fd, 1 << 16):
                    pass

    def batch(self, msgs: list[Message]) -> None:
        """Send ``msgs`` (pipelined) then GET_FEATURES; check every reply."""
        expected: list[int] = []
        ends = oversized = False
        for msg in msgs:
            self.log.append(msg)
            try:
                self._send(msg)
            except (BrokenPipeError, ConnectionResetError) as exc:
                time.sleep(0.1)  # let the daemon log why
                raise Failure("closed", f"the daemon closed the connection mid-batch "
                              f"({type(exc).__name__} sending message {len(self.log)}):\n"
                              + self.daemon.stderr(8)) from None
            except TimeoutError:
                raise Failure("hang", f"the daemon took no input for {REPLY_TIMEOUT} s") from None
            self._pump()
            code, _, size = _HDR.unpack_from(msg.data)
            if msg.ends:
                ends = True
                oversized = size > m.MAX_PAYLOAD
                if oversized:
                    expected.append(code)
                break
            expected.append(code)
        if not ends:
            sentinel = Message(m.request(Request.GET_FEATURES))
            self.log.append(sentinel)
            self._send(sentinel)
            expected.append(Request.GET_FEATURES)
        else:
            self.sock.shutdown(socket.SHUT_WR)
        for i, code in enumerate(expected):
            reply = self._reply()
            if oversized and i == len(expected) - 1:
                got, _, status, _ = split_reply(reply)
                if got != code or status != -E.E2BIG:
                    raise Failure("reply:e2big", f"oversized request {code} answered {got} with "
                                           f"status {status}, not -E2BIG")
                continue
            status, data = check_reply(code, reply)
            self.seen.add((code, status))
            last_sentinel = code == Request.GET_FEATURES and i == len(expected) - 1 and not ends
            if last_sentinel and (status != 0 or len(data) != 8):
                raise Failure("reply:features", f"GET_FEATURES answered {status} with {len(data)} bytes")
        self.drain_channels()


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class ProtocolStats:
    execs: int = 0
    connections: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the daemon and of this client together."""
    behaviours: set[int] = field(default_factory=set)
    failures: list[tuple[str, str, str | None, int]] = field(default_factory=list)


def check_fds(daemon: Daemon, connected: bool) -> None:
    if not daemon.alive():
        raise Failure("died", f"the daemon exited ({daemon.proc.returncode}): {daemon.stderr()}")
    if connected:
        count = daemon.fd_count()
        if count > daemon.idle_fds + 1 + MAX_KEPT_FDS + FD_SLACK:
            raise Failure("fd-leak", f"{count} fds open in one connection (idle "
                                     f"{daemon.idle_fds})")
        return
    count = daemon.settle()
    if count != daemon.idle_fds:
        raise Failure("fd-leak", f"{count} fds open after the connection closed (idle "
                                 f"{daemon.idle_fds})")


def run_messages(daemon: Daemon, msgs: list[Message],
                 seen: set[tuple[int, int]] | None = None) -> Failure | None:
    """Send ``msgs`` on one connection in batches, close, check; the failure or None.
    ``seen`` collects the (request, status) pairs answered."""
    session = Session(daemon)
    failure: Failure | None = None
    try:
        for i in range(0, len(msgs), BATCH):
            part = msgs[i : i + BATCH]
            session.batch(part)
            check_fds(daemon, True)
            if any(msg.ends for msg in part):
                break
    except Failure as exc:
        failure = exc
    except OSError as exc:
        failure = Failure("closed", f"socket error: {exc}")
    finally:
        session.close()
        if seen is not None:
            seen |= session.seen
    if failure is None:
        try:
            check_fds(daemon, False)
        except Failure as exc:
            failure = exc
    return failure


def fuzz_protocol(*, runs: int | None, seconds: float | None, seed: int, crashes: Path | None,
                  minimize_seconds: float, log: Callable[[str], None] | None) -> ProtocolStats:
    src = RandomSource(random.Random(seed))
    devices = daemon_devices()
    stats = ProtocolStats()
    seen: set[tuple[int, int]] = set()
    kinds: set[str] = set()
    start = time.monotonic()
    last = start
    client_cpu = time.process_time()
    daemon = Daemon(devices)
    cpu_start = _cpu(daemon)
    try:
        while True:
            now = time.monotonic()
            if runs is not None and stats.execs >= runs:
                break
            if seconds is not None and now - start >= seconds:
                break
            # One connection's messages; a message that ends the stream ends them.
            budget = BATCH * BATCHES_PER_CONNECTION
            if runs is not None:
                budget = min(budget, runs - stats.execs)
            msgs: list[Message] = []
            while len(msgs) < budget and not (msgs and msgs[-1].ends):
                msgs.append(generate(src))
            stats.execs += len(msgs)
            stats.connections += 1
            failure = run_messages(daemon, msgs, seen)
            if failure is not None:
                if failure.kind not in kinds:
                    kinds.add(failure.kind)
                    path = handle_failure(failure, msgs, crashes, minimize_seconds, devices, log)
                    stats.failures.append((failure.kind, failure.detail.splitlines()[0],
                                           str(path) if path else None, len(msgs)))
                if not daemon.alive() or failure.kind in ("hang", "fd-leak"):
                    stats.cpu_seconds += _cpu(daemon) - cpu_start
                    daemon.stop()
                    daemon = Daemon(devices)
                    cpu_start = _cpu(daemon)
            if log is not None and now - last >= 5.0:
                last = now
                rate = stats.execs / max(now - start, 1e-9)
                log(f"  protocol: {stats.execs} execs, {rate:,.0f} exec/s, "
                    f"{stats.connections} connections, {len(seen)} (request, status) pairs, "
                    f"failures {len(stats.failures)}")
        stats.cpu_seconds += _cpu(daemon) - cpu_start
    finally:
        daemon.stop()
    stats.behaviours = {hash(pair) for pair in seen}
    stats.seconds = time.monotonic() - start
    stats.cpu_seconds += time.process_time() - client_cpu
    return stats


def _cpu(daemon: Daemon) -> float:
    """CPU seconds the daemon has used (utime + stime from /proc/PID/stat)."""
    try:
        with open(f"/proc/{daemon.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def handle_failure(failure: Failure, msgs: list[Message], crashes: Path | None,
                   minimize_seconds: float, devices: list[str],
                   log: Callable[[str], None] | None) -> Path | None:
    """Minimize the failing connection's messages against fresh daemons (when the failure
    reproduces there at all) and write the reproducer; its path."""
    if log is not None:
        log(f"  FAILURE {failure.kind}: {failure.detail.splitlines()[0]}")
    if crashes is None:
        return None
    candidates = list(msgs)
    deadline = time.monotonic() + minimize_seconds

    def fails(subset: list[Message]) -> bool:
        daemon = Daemon(devices)
        try:
            got = run_messages(daemon, subset)
        finally:
            daemon.stop()
        return got is not None and got.kind == failure.kind

    small = ddmin(candidates, fails, deadline=deadline) if fails(candidates) else candidates
    crashes.mkdir(parents=True, exist_ok=True)
    doc = {"format": "viommu-fuzz", "version": 1, "target": "protocol", "devices": devices,
           "failure": {"kind": failure.kind, "detail": failure.detail},
           "messages": [msg.to_json() for msg in small]}
    digest = hashlib.sha1(json.dumps(doc["messages"]).encode()).hexdigest()[:10]
    slug = "".join(c if c.isalnum() else "-" for c in failure.kind)
    path = crashes / f"protocol-{slug}-{digest}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    if log is not None:
        log(f"  minimized {len(candidates)} -> {len(small)} messages: {path}")
    return path


def reproduce_protocol(doc: dict[str, Any]) -> Failure | None:
    msgs = [Message.from_json(d) for d in doc["messages"]]
    daemon = Daemon(list(doc.get("devices") or daemon_devices()))
    try:
        return run_messages(daemon, msgs)
    finally:
        daemon.stop()


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    log = None if spec["quiet"] else (lambda text: print(text, file=sys.stderr, flush=True))
    stats = fuzz_protocol(runs=spec["runs"], seconds=spec["time"], seed=spec["seed"],
                          crashes=spec["crashes"], minimize_seconds=spec["minimize"], log=log)
    line = (f"protocol: {stats.execs} execs in {stats.seconds:.1f} s = "
            f"{stats.execs / max(stats.seconds, 1e-9):,.0f} exec/s")
    return {"execs": stats.execs, "programs": stats.connections, "seconds": stats.seconds,
            "cpu": stats.cpu_seconds, "features": len(stats.behaviours), "corpus": 0, "failures": stats.failures,
            "line": line}


def fuzz_protocol_jobs(args: argparse.Namespace) -> int:
    from vmm.fuzz.cli import report, run_specs

    jobs = max(1, args.jobs)
    specs = [{"runs": None if args.runs is None else args.runs // jobs + (i < args.runs % jobs),
              "time": args.time, "seed": args.seed + i, "crashes": args.crashes,
              "minimize": args.minimize_seconds, "quiet": args.quiet or i > 0}
             for i in range(jobs)]
    print(f"vmm fuzz: target protocol, live daemon ({', '.join(daemon_devices())}), "
          f"{jobs} job(s)", flush=True)
    results, wall = run_specs(_job, specs, jobs)
    return report("protocol", results, wall)
