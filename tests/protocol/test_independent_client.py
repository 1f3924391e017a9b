"""A client written only from ../shared/protocol.md: struct, socket, memfd — no project code.

It talks to the daemon started as a user would start it (a subprocess), so this is what an
independent front-end sees.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HDR = struct.Struct("<III")


class WireClient:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)

    def call(self, code: int, payload: bytes = b"", fds: list[int] | None = None) -> tuple[int, bytes]:
        msg = HDR.pack(code, 1, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        self.s.sendmsg([msg], anc)
        rcode, flags, size = HDR.unpack(self.s.recv(12, socket.MSG_WAITALL))
        body = self.s.recv(size, socket.MSG_WAITALL) if size else b""
        assert rcode == code and flags == 1 | 4
        status = struct.unpack_from("<i", body)[0]
        return status, body[8:]

    def read(self, dev: int, off: int, size: int = 4) -> int:
        status, data = self.call(16, struct.pack("<IIQ", dev, size, off))
        assert status == 0
        return int(struct.unpack("<Q", data)[0])

    def write(self, dev: int, off: int, value: int, size: int = 4) -> None:
        status, _ = self.call(17, struct.pack("<IIQQ", dev, size, off, value))
        assert status == 0


def test_independent_client(tmp_path: Path) -> None:
    path, pidfile = str(tmp_path / "d.sock"), str(tmp_path / "d.pid")
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "daemon", "--socket-path", path,
                             "--pidfile", pidfile, "--device", "smmuv3,stage=s1,oas=48",
                             "--device", "vtd,aw-bits=39,caching-mode=on"])
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(pidfile):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        c = WireClient(path)
        status, feats = c.call(1)
        assert status == 0 and struct.unpack("<Q", feats)[0] & 0b110 == 0b110
        fd = os.memfd_create("ram")
        os.ftruncate(fd, 1 << 20)
        status, _ = c.call(4, struct.pack("<II", 1, 0) + struct.pack("<QQQ", 0x100000, 1 << 20, 0), [fd])
        assert status == 0
        status, cfg_bytes = c.call(3)
        cfg = json.loads(cfg_bytes)
        smmu, vtd = cfg["devices"]
        assert smmu["model"] == "smmuv3" and vtd["model"] == "vtd"

        # SMMUv3: IDR0 says stage 1 only, AArch64 tables; IDR5.OAS = 48 bits (5).
        idr0 = c.read(smmu["id"], 0x0)
        assert idr0 & 0b11 == 0b10 and (idr0 >> 2) & 3 == 2
        assert c.read(smmu["id"], 0x14) & 0x7 == 5
        c.write(smmu["id"], 0x20, 0b1100)  # CR0: CMDQEN | EVENTQEN
        assert c.read(smmu["id"], 0x24) == 0b1100  # CR0ACK follows
        gerror = c.read(smmu["id"], 0x60)
        c.write(smmu["id"], 0x60, 0xFFFFFFFF)  # GERROR is read-only
        assert c.read(smmu["id"], 0x60) == gerror
        assert c.read(smmu["id"], 0x64) == gerror  # GERRORN == GERROR: no error active

        # VT-d: CAP.SAGAW = 39-bit (bit 1), MGAW = 38, CM set; ECAP.QI.
        cap = c.read(vtd["id"], 0x08, 8)
        assert (cap >> 8) & 0x1F == 0b10 and (cap >> 16) & 0x3F == 38 and cap & (1 << 7)
        assert c.read(vtd["id"], 0x10, 8) & 0b10
        assert c.read(vtd["id"], 0x08, 4) == cap & 0xFFFFFFFF  # a 64-bit register's low half
        c.write(vtd["id"], 0x18, 1 << 31)  # GCMD.TE
        assert c.read(vtd["id"], 0x1C) & (1 << 31)  # GSTS.TES
        assert c.read(vtd["id"], 0x18) == 0  # GCMD reads as zero

        # DMA with translation off on the VT-d unit lands in the memfd.
        c.write(vtd["id"], 0x18, 0)  # TE off again
        status, _ = c.call(32, struct.pack("<IIQIHH", 0x10, 0xFFFFFFFF, 0x100040, 4, 1, vtd["segment"]) + b"wxyz")
        assert status == 0
        with mmap.mmap(fd, 1 << 20) as mm:
            assert mm[0x40:0x44] == b"wxyz"
        os.close(fd)
        c.s.close()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
