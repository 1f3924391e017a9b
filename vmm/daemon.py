"""The socket edge: a trio server that feeds each connection's bytes to its sans-IO session.

Hot path (reference/performance.md): plain non-blocking ``recvmsg``/``send`` on the stdlib
socket, ``wait_readable`` only when nothing is there, no task or channel hop per message.
Each connection is one guest with its own ``GuestSession``; a guest that disconnects or
misbehaves loses only its own state.

Start-up follows the vhost-user back-end conventions (reference/ecosystem.md §1.5): listen
first, then write the pid file, then serve; SIGTERM or SIGINT end the process promptly and
cleanly; a failed start exits non-zero with a message.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from protocols.session import Connection, close_fds
from vmm.config import DaemonConfig
from vmm.guest import GuestSession
from vmm.record import Recorder, env_pattern, open_recorder

log = logging.getLogger(__name__)

MAX_FDS = 68  # 64 regions plus slack; more makes the request fail (MSG_CTRUNC)
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
_FAIRNESS = 64  # messages served back to back before yielding to other guests
# Replies this large (DMA reads, batches) are held back while the next request is already
# queued, and sent together when the socket runs dry, up to _HOLD_MAX bytes: a pipelining
# client is then woken once per burst instead of once per reply.  Small replies (MMIO) go
# out at once, so a lone round trip never waits for the next read to find the socket empty.
_HOLD_MIN = 1024
_HOLD_MAX = 256 * 1024
# A plain int: ``int & socket.MSG_CTRUNC`` goes through enum.Flag and costs ~1 µs per recv.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


def _fds_from(ancdata: list[tuple[int, int, bytes]], flags: int) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    if flags & _MSG_CTRUNC:
        fds.append(-1)  # the kernel dropped some: make the count wrong so the request fails
    return fds


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _send(sock: socket.socket, out: bytes) -> bool:
    """Send all of ``out``; False when the guest went away."""
    try:
        try:
            sent = sock.send(out)
        except BlockingIOError:
            sent = 0
        if sent < len(out):
            await _send_all(sock, out[sent:])
    except OSError as exc:
        log.info("guest went away while answered: %s", exc)
        return False
    return True


@dataclass
class Stats:
    connections: int = 0
    active: int = 0


async def serve_connection(sock: socket.socket, session: GuestSession,
                           recorder: Recorder | None = None) -> None:
    """Serve one guest until it goes away or breaks framing (``recorder``: built for
    ``session``, it records the connection and is closed at the end)."""
    conn = Connection(session) if recorder is None else recorder.connection(session)
    recvmsg = sock.recvmsg
    receive = conn.receive
    served = 0
    held: list[bytes] = []  # replies held back (_HOLD_MIN), in order
    held_size = 0
    try:
        while not conn.closed:
            try:
                data, ancdata, flags, _ = recvmsg(conn.wanted(), _ANC_SPACE)
            except BlockingIOError:
                if held:
                    if not await _send(sock, b"".join(held)):
                        break
                    held.clear()
                    held_size = 0
                channel = session.channel
                if channel is not None and channel.backlog:
                    channel.flush()
                if recorder is not None:
                    recorder.idle()
                await trio.lowlevel.wait_readable(sock)
                continue
            except (ConnectionResetError, OSError) as exc:
                log.info("guest connection error: %s", exc)
                conn.eof()
                break
            if not data:
                conn.eof()
                break
            fds = _fds_from(ancdata, flags) if ancdata or flags & _MSG_CTRUNC else ()
            out = receive(data, fds)
            if out:
                if len(out) >= _HOLD_MIN and held_size + len(out) <= _HOLD_MAX \
                        and not conn.closed:
                    held.append(out)
                    held_size += len(out)
                else:
                    if held:
                        held.append(out)
                        out = b"".join(held)
                        held.clear()
                        held_size = 0
                    # Inline, not through _send: a coroutine per reply costs the MMIO path.
                    try:
                        try:
                            sent = sock.send(out)
                        except BlockingIOError:
                            sent = 0
                        if sent < len(out):
                            await _send_all(sock, out[sent:])
                    except OSError as exc:
                        log.info("guest went away while answered: %s", exc)
                        break
            served += 1
            if served >= _FAIRNESS:
                served = 0
                if held:
                    if not await _send(sock, b"".join(held)):
                        break
                    held.clear()
                    held_size = 0
                await trio.lowlevel.checkpoint()
        if held:  # the guest stopped sending (EOF) or broke framing: it still gets its replies
            await _send(sock, b"".join(held))
    finally:
        close_fds(conn._fds)
        session.close()
        if recorder is not None:
            recorder.close()
        sock.close()


async def serve_listener(
    listener: socket.socket,
    config: DaemonConfig,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    *,
    record: str | None = None,
) -> None:
    """Accept guests forever, each in its own task with its own session (``record``: a
    ``--record`` file pattern, one trace per connection)."""
    listener.setblocking(False)
    stats = Stats()
    if record is None:
        record = env_pattern()
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                log.warning("accept: %s", exc)
                await trio.sleep(0.01)
                continue
            sock.setblocking(False)
            stats.connections += 1
            recorder = open_recorder(record, config, stats.connections) if record else None
            try:
                session = GuestSession(config, recorder=recorder)
            except Exception:
                log.exception("cannot build the guest's devices")
                if recorder is not None:
                    recorder.close()
                sock.close()
                continue
            log.info("guest %d connected", stats.connections)
            nursery.start_soon(serve_connection, sock, session, recorder)


async def run_daemon(
    listener: socket.socket | None,
    connected: socket.socket | None,
    config: DaemonConfig,
    pidfile: str | None,
    on_ready: Callable[[], None] | None = None,
    *,
    record: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; with ``connected``, serve that one guest and return."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("signal %d: stopping", signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            if pidfile:
                write_pidfile(pidfile)
            if on_ready is not None:
                on_ready()
            if connected is not None:
                connected.setblocking(False)
                if record is None:
                    record = env_pattern()
                recorder = open_recorder(record, config, 1) if record else None
                await serve_connection(connected, GuestSession(config, recorder=recorder),
                                       recorder)
                nursery.cancel_scope.cancel()
            else:
                assert listener is not None
                await serve_listener(listener, config, record=record)


def write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_quietly(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
