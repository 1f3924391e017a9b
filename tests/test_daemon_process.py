"""The daemon as a user starts it: a subprocess with the vhost-user back-end conventions."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import trio

from protocols import messages as m
from protocols.messages import Request
from tests.conftest import DaemonProcess
from vmm.harness import BlockingClient, GuestRam

VMM = [sys.executable, "-m", "vmm"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMM, *args], capture_output=True, text=True, timeout=30)


def test_print_capabilities_ignores_the_rest() -> None:
    out = run("daemon", "--print-capabilities", "--device", "nonsense", "--fd", "99")
    assert out.returncode == 0
    caps = json.loads(out.stdout)
    assert caps["type"] == "viommu" and "socket-path" in caps["features"]


def test_device_help() -> None:
    out = run("daemon", "--device", "help")
    assert out.returncode == 0 and "smmuv3" in out.stdout and "vtd" in out.stdout
    out = run("daemon", "--device", "smmuv3,help")
    assert out.returncode == 0
    for opt in ("id=", "base=", "sids=", "stage=", "oas=", "ssidsize="):
        assert opt in out.stdout
    out = run("daemon", "--device", "vtd,help")
    for opt in ("aw-bits=", "scalable-mode=", "caching-mode=", "pasid-bits=", "rids="):
        assert opt in out.stdout


def test_failed_starts_exit_nonzero_with_a_message(tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    for args in (["--device", "smmuv3,stage=s3"], ["--device", "nosuch"],
                 ["--device", "vtd,aw-bits=40"], ["--device", "smmuv3,bogus=1"],
                 ["--device", "smmuv3,id=1", "--device", "vtd,id=1"], []):
        out = run("daemon", "--socket-path", sock, *args)
        assert out.returncode != 0 and out.stderr.strip(), args
        assert "Traceback" not in out.stderr
    out = run("daemon", "--device", "smmuv3")  # neither --socket-path nor --fd
    assert out.returncode != 0
    out = run("daemon", "--device", "smmuv3", "--socket-path", "/nonexistent/dir/s")
    assert out.returncode != 0 and "cannot listen" in out.stderr
    Path(tmp_path / "file").write_text("x")
    out = run("daemon", "--device", "smmuv3", "--socket-path", str(tmp_path / "file"))
    assert out.returncode != 0 and "not a socket" in out.stderr


def test_sigterm_ends_within_a_second(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, ["--device", "smmuv3"])
    client = BlockingClient(d.path)  # a guest attached and idle
    assert int(Path(d.pidfile).read_text()) == d.pid
    start = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 1.0
    assert not os.path.exists(d.path) and not os.path.exists(d.pidfile)
    client.close()
    d.stop()


def test_second_daemon_on_a_live_socket_refuses(daemon_process: DaemonProcess) -> None:
    out = run("daemon", "--device", "vtd", "--socket-path", daemon_process.path)
    assert out.returncode != 0 and "listening" in out.stderr


def test_killed_client_leaves_no_fds(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    probe = BlockingClient(d.path)
    probe.call(Request.GET_FEATURES)
    baseline = d.fds()
    for _ in range(3):
        child = os.fork()
        if child == 0:  # a guest that hands over memory and an eventfd, then dies mid-message
            try:
                c = BlockingClient(d.path)
                ram = GuestRam(0x1000_0000, 1 << 20)
                c.set_mem_table([ram])
                efd = os.eventfd(0)
                c.call(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(0, 0), [efd])
                c.sock.sendall(m.HEADER.pack(Request.MMIO_WRITE, 1, 24) + b"\0" * 7)
            finally:
                os.kill(os.getpid(), signal.SIGKILL)
        os.waitpid(child, 0)
    deadline = time.monotonic() + 5
    while d.fds() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.fds() == baseline
    maps = Path(f"/proc/{d.pid}/maps").read_text()
    assert "guest-ram" not in maps  # the memfd mappings are gone too
    assert probe.call(Request.GET_FEATURES).status == 0
    probe.close()


def test_two_guests_see_separate_state(daemon_process: DaemonProcess) -> None:
    a = BlockingClient(daemon_process.path)
    b = BlockingClient(daemon_process.path)
    a.mmio_write(0, 0x20, 0b1000)  # CR0.CMDQEN on guest a's SMMU
    b.mmio_write(1, 0x38, 0)       # FECTL on guest b's VT-d
    assert a.mmio_read(0, 0x24) == 0b1000 and b.mmio_read(0, 0x24) == 0
    assert a.mmio_read(1, 0x38) == 0x8000_0000 and b.mmio_read(1, 0x38) == 0
    # guest b misbehaves and goes away; a is undisturbed
    b.sock.sendall(m.HEADER.pack(1, 1, m.MAX_PAYLOAD + 1))
    assert b.recv_reply().status < 0
    b.close()
    assert a.mmio_read(0, 0x24) == 0b1000
    a.close()


def test_fd_option_listening_and_connected(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    proc = subprocess.Popen([*VMM, "daemon", "--fd", str(listener.fileno()), "--device", "vtd"],
                            pass_fds=[listener.fileno()])
    listener.close()
    try:
        c = BlockingClient(path)
        assert c.mmio_read(0, 0x0) != 0  # VER
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([*VMM, "daemon", "--fd", str(theirs.fileno()), "--device", "smmuv3"],
                            pass_fds=[theirs.fileno()])
    theirs.close()
    ours.sendall(m.request(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0)))
    head = ours.recv(12 + 16, socket.MSG_WAITALL)
    assert struct.unpack_from("<IIIi", head)[3] == 0
    ours.close()  # one guest on an inherited connection: the daemon ends with it
    assert proc.wait(5) == 0


def test_sandbox_sees_only_loopback(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, ["--device", "smmuv3", "--sandbox"])
    try:
        devs = [line.split(":")[0].strip()
                for line in Path(f"/proc/{d.pid}/net/dev").read_text().splitlines()[2:]]
        assert devs == ["lo"]
        ours = [line.split(":")[0].strip()
                for line in Path("/proc/self/net/dev").read_text().splitlines()[2:]]
        assert os.readlink(f"/proc/{d.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert ours  # the test's own namespace is untouched
        c = BlockingClient(d.path)  # the socket still serves from inside
        assert c.call(Request.GET_FEATURES).status == 0
        c.close()
    finally:
        d.stop()


async def test_many_guests_in_process(daemon_path: str) -> None:
    from vmm.harness import Client

    async def guest(n: int) -> None:
        async with await Client.connect(daemon_path) as c:
            await c.mmio_write(0, 0x50, n & 7)
            for _ in range(20):
                assert await c.mmio_read(0, 0x54) == n & 7

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(guest, n)
