"""Shared fixtures: a real daemon, in-process (trio) or as a subprocess, on a real socket."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from vmm.cli import bind_listener
from vmm.config import DaemonConfig, build_devices
from vmm.daemon import serve_listener
from vmm.harness import Client, GuestRam

DEFAULT_DEVICES = ["smmuv3", "vtd"]
_STARTED = time.time()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With VIOMMU_RECORD_DIR set, every daemon of the run recorded its guests (vmm/record.py,
    in-process and subprocess alike): replay each trace, and fail the run on a divergence."""
    directory = os.environ.get("VIOMMU_RECORD_DIR")
    if not directory or not os.path.isdir(directory):
        return
    from vmm.replay import Summary, replay_directory

    results = replay_directory(directory, since=_STARTED - 1)
    bad = [(path, r) for path, r in results if not isinstance(r, Summary) or r.divergences]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"VIOMMU_RECORD_DIR: replayed {len(results)} traces, "
                            f"{len(bad)} diverged or unreadable")
        for path, r in bad:
            detail = r.divergences[0].render() if isinstance(r, Summary) else str(r)
            reporter.write_line(f"  {path}: {detail}")
    if bad:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
async def daemon_path(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[str]:
    """An in-process daemon with one vSMMUv3 (id 0) and one vVT-d (id 1)."""
    path = str(tmp_path / "vmm.sock")
    listener = bind_listener(path)
    config = DaemonConfig(build_devices(DEFAULT_DEVICES))
    await nursery.start(serve_listener, listener, config)
    yield path
    listener.close()


@pytest.fixture
async def client(daemon_path: str) -> AsyncIterator[Client]:
    async with await Client.connect(daemon_path) as c:
        yield c


@pytest.fixture
def ram() -> Iterator[GuestRam]:
    r = GuestRam(0x8000_0000, 16 << 20)
    yield r
    r.close()


class DaemonProcess:
    def __init__(self, tmp: Path, args: list[str]) -> None:
        self.path = str(tmp / "vmmd.sock")
        self.pidfile = str(tmp / "vmmd.pid")
        cmd = [sys.executable, "-m", "vmm", "daemon", "--socket-path", self.path,
               "--pidfile", self.pidfile, *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon died: {self.proc.stderr.read() if self.proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not start")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path, [f"--device={dev}" for dev in DEFAULT_DEVICES])
    yield d
    d.stop()
