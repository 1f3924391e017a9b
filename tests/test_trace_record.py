"""Recording (vmm/record.py): what a recorder sees of a session, and that it changes nothing."""

from __future__ import annotations

import errno as E
import json
import os
import socket
from pathlib import Path

import pytest

from protocols import messages as m
from protocols import trace as t
from protocols.messages import Request
from protocols.session import Connection
from tests.trace_helpers import CONFIG, RAM, drive
from vmm.guest import GuestSession
from vmm.memory import make_memfd
from vmm.record import Recorder, check_pattern, fd_kind, trace_path


def read_events(path: Path) -> list[t.Event]:
    with t.TraceReader(str(path)) as reader:
        return [ev for _, ev in reader.events()]


def test_a_session_is_recorded_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    rec = Recorder(str(path), CONFIG, source="test")
    session = GuestSession(CONFIG, recorder=rec)
    drive(rec.connection(session))
    session.close()
    rec.close()
    kinds = [ev["k"] for ev in read_events(path)]
    assert kinds == ["set_mem_table", "table", "mmio_write", "mmio_write", "mmio_write",
                     "mmio_write", "read", "irq", "mmio_read", "dma", "write", "dma", "read",
                     "end"]
    events = read_events(path)
    assert events[0]["fds"] == [f"file:{1 << 20}"]
    prod = events[5]
    assert prod["regs"]["0"]["GERROR"] == "0x1"  # the request's effect on the registers
    assert events[6] == {"k": "read", "gpa": hex(RAM), "n": 16, "data": "00" * 16}
    assert events[7] == {"k": "irq", "dev": 0, "vec": 3}  # gerror, wired: no channel needed
    assert events[10] == {"k": "write", "gpa": hex(RAM + 0x100), "data": "aaaaaaaa"}
    assert events[11]["data"] == "aaaaaaaa" and events[12]["data"] == "aaaaaaaa"
    assert events[-1] == {"k": "end", "events": 14}
    with t.TraceReader(str(path)) as reader:
        assert reader.header["config"] == CONFIG.to_json()
        assert reader.header["state"]["0"]["IDR0"] != "0x0"


def test_recording_changes_no_reply(tmp_path: Path) -> None:
    plain = drive(Connection(GuestSession(CONFIG)))
    rec = Recorder(str(tmp_path / "s.jsonl"), CONFIG)
    recorded = drive(rec.connection(GuestSession(CONFIG, recorder=rec)))
    rec.close()
    assert recorded == plain


def test_split_and_pipelined_messages_are_whole_requests(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    rec = Recorder(str(path), CONFIG)
    conn = rec.connection(GuestSession(CONFIG, recorder=rec))
    reads = b"".join(m.request(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, off))
                     for off in (0, 4, 8))
    out = conn.receive(reads[:5]) + conn.receive(reads[5:30]) + conn.receive(reads[30:])
    assert out.count(m.REPLY_HEAD.pack(Request.MMIO_READ, m.REPLY_FLAGS, 16, 0, 0)) == 3
    conn.receive(m.HEADER.pack(Request.MMIO_READ, m.VERSION, 16) + b"\x00")  # cut short
    conn.eof()
    rec.close()
    assert [(ev["k"], ev.get("off")) for ev in read_events(path)] == [
        ("mmio_read", "0x0"), ("mmio_read", "0x4"), ("mmio_read", "0x8"), ("eof", None),
        ("end", None)]


def test_batches_are_written_as_they_fill(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    rec = Recorder(str(path), CONFIG, batch=2)
    conn = rec.connection(GuestSession(CONFIG, recorder=rec))
    for _ in range(5):
        conn.receive(m.request(Request.GET_FEATURES))
    assert rec.events == 4 and len(rec.entries) == 1
    rec.close()
    assert len(read_events(path)) == 6


def test_a_write_error_stops_recording_not_the_guest() -> None:
    rec = Recorder("/dev/full", CONFIG, batch=1)
    conn = rec.connection(GuestSession(CONFIG, recorder=rec))
    reply = conn.receive(m.request(Request.GET_FEATURES))
    assert m.STATUS.unpack(reply, m.HEADER_SIZE)[0] == 0
    rec.flush(sync=True)
    assert rec.failed
    assert conn.receive(m.request(Request.GET_FEATURES))  # still served
    rec.close()


def test_fd_kinds() -> None:
    a, b = socket.socketpair()
    lone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    efd = os.eventfd(0)
    memfd = make_memfd(8192)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        assert fd_kind(efd) == "eventfd"
        assert fd_kind(a.fileno()) == "stream"
        assert fd_kind(lone.fileno()) == "socket"
        assert fd_kind(memfd) == "file:8192"
        assert fd_kind(null) == "other"
        assert fd_kind(-1) == "bad"
    finally:
        for fd in (efd, memfd, null):
            os.close(fd)
        for s in (a, b, lone):
            s.close()


@pytest.mark.parametrize(("pattern", "n", "expected"), [
    ("trace.jsonl.gz", 1, "trace.jsonl.gz"),
    ("trace.jsonl.gz", 3, "trace.3.jsonl.gz"),
    ("/tmp/x/trace", 2, "/tmp/x/trace.2"),
    ("t-{conn}.jsonl", 7, "t-7.jsonl"),
    ("t-%d.jsonl", 7, "t-7.jsonl"),
])
def test_file_patterns(pattern: str, n: int, expected: str) -> None:
    assert trace_path(pattern, n) == expected


def test_patterns_are_checked_at_start(tmp_path: Path) -> None:
    assert check_pattern(str(tmp_path / "t-{conn}.jsonl")) is None
    assert "no directory" in str(check_pattern(str(tmp_path / "nowhere" / "t.jsonl")))


def test_header_lines_are_compact_json(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    rec = Recorder(str(path), CONFIG, connection=4)
    rec.connection(GuestSession(CONFIG, recorder=rec))
    rec.close()
    header = json.loads(path.read_text().splitlines()[0])
    assert header["format"] == "viommu-trace" and header["connection"] == 4
    assert set(header["state"]) == {"0", "1"}


def test_an_oversized_message_is_recorded_and_replays(tmp_path: Path) -> None:
    from vmm.replay import replay_file

    path = tmp_path / "big.jsonl"
    rec = Recorder(str(path), CONFIG)
    conn = rec.connection(GuestSession(CONFIG, recorder=rec))
    conn.receive(m.request(Request.GET_FEATURES))
    reply = conn.receive(m.HEADER.pack(Request.DMA, m.VERSION, m.MAX_PAYLOAD + 4096))
    assert m.STATUS.unpack(reply, m.HEADER_SIZE)[0] == -E.E2BIG and conn.closed
    conn.eof()
    rec.close()
    events = read_events(path)
    assert events[1] == {"k": "msg", "code": Request.DMA, "flags": 1,
                         "size": m.MAX_PAYLOAD + 1, "payload": "", "status": -E.E2BIG}
    summary, _ = replay_file(str(path))
    assert summary.divergences == [] and summary.requests == 2
