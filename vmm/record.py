"""Recording one guest session as a trace (the format: ``protocols/trace.py``).

A ``Recorder`` watches a ``GuestSession`` from three places, which together see every input
the models receive and every output they make:

* ``RecordingConnection`` — the session's ``protocols.session.Connection``, hooked at its
  dispatch step: each message it handles (its bytes, what its fds were) with its reply, and
  how the request changed the models' registers;
* ``RecordingMemory`` — wraps the session's ``GuestMemory``: every read a model or the host
  IOMMU makes (and the bytes it got), every write, every memory-table change.  It has no
  ``regions``, so the C walker (``devices.pagetable.fast``) takes its Python path and every
  table read still passes here;
* the session's observer hooks (``GuestSession.recorder``): interrupts, ATC invalidations and
  page responses, whatever route they then take.

Cost: the hot path appends a tuple to a list (and compares the registers of the model a
request reached); lines are formatted and written in batches (every ``batch`` entries, when
the daemon is idle and a second has passed, and at close).  scripts/bench_replay.py measures
it: ``record_throughput_ratio``.
A write error stops the recording (logged once); the guest is served on.

File names: ``--record PATTERN`` makes one file per connection; ``{conn}`` or ``%d`` in the
pattern is the connection's number (from 1), ``{pid}`` the daemon's pid and ``{seq}`` a
number counting the connections of the process.  Without a
placeholder the first connection writes the name as given and connection N adds ``.N``
before the first dot of the file name (``trace.jsonl.gz`` → ``trace.2.jsonl.gz``).
``VIOMMU_RECORD_DIR`` records every connection of a daemon started without ``--record``
(``env_pattern``): the whole test suite can run with recording on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import compress, count
from operator import ne
from typing import TYPE_CHECKING, Any, Protocol

from devices.regs import RegisterFile
from protocols import messages as m
from protocols import trace as t
from protocols.messages import RegionSpec
from protocols.session import Connection, Phase
from vmm import __version__
from vmm.channel import is_connected_stream
from vmm.config import DaemonConfig
from vmm.memory import RegionError, SessionMemory

if TYPE_CHECKING:
    from vmm.guest import GuestSession

log = logging.getLogger(__name__)


class Observer(Protocol):
    """What a ``GuestSession`` tells the one watching it (a recorder, a replay checker)."""

    def wrap_memory(self, memory: SessionMemory) -> SessionMemory:
        """The memory the session will use instead of ``memory``."""

    def irq(self, device: int, vector: int, msi_address: int, msi_data: int,
            delivered: bool) -> bool:
        """An interrupt and whether a route took it; returns the outcome the session
        reports to the model (a recorder passes ``delivered`` on, replay the recorded one)."""

    def atc_invalidate(self, segment: int, requester: int, pasid: int, address: int,
                       size: int, delivered: bool) -> bool:
        """An ATC_INVALIDATE and whether a channel took it; returns the outcome, as ``irq``."""

    def page_response(self, segment: int, requester: int, pasid: int, group: int,
                      code: int) -> None: ...


def fd_kind(fd: int) -> str:
    """What a received fd is, in the words of the trace format (``"eventfd"``, ...)."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
    except (OSError, ValueError):
        return "bad"
    if link == "anon_inode:[eventfd]":
        return "eventfd"
    if stat.S_ISSOCK(st.st_mode):
        return "stream" if is_connected_stream(fd) else "socket"
    if stat.S_ISREG(st.st_mode):
        return f"file:{st.st_size}"
    return "other"


RECORD_DIR_ENV = "VIOMMU_RECORD_DIR"
"""Where every daemon of this process (and of its children) records when it was given no
``--record``: ``$VIOMMU_RECORD_DIR/vmm-{pid}-{seq}.jsonl.gz`` (how the test suite runs with
recording on)."""

_SEQ = count(1)


def env_pattern() -> str | None:
    """The ``--record`` pattern ``VIOMMU_RECORD_DIR`` asks for, if it is set."""
    directory = os.environ.get(RECORD_DIR_ENV)
    return os.path.join(directory, "vmm-{pid}-{seq}.jsonl.gz") if directory else None


def trace_path(pattern: str, connection: int) -> str:
    """The file name of connection ``connection`` (from 1) for ``--record PATTERN``;
    ``{seq}`` counts the connections of the whole process."""
    if any(p in pattern for p in ("{conn}", "%d", "{pid}", "{seq}")):
        path = pattern.replace("{conn}", str(connection)).replace("%d", str(connection))
        path = path.replace("{pid}", str(os.getpid()))
        if "{seq}" in path:
            path = path.replace("{seq}", str(next(_SEQ)))
        if any(p in pattern for p in ("{conn}", "%d", "{seq}")) or connection == 1:
            return path
        pattern = path
    if connection == 1:
        return pattern
    head, name = os.path.split(pattern)
    stem, dot, rest = name.partition(".")
    return os.path.join(head, f"{stem}.{connection}{dot}{rest}")


def check_pattern(pattern: str) -> str | None:
    """Why ``--record PATTERN`` cannot work (a missing directory, zstd without its module),
    or None: checked at start-up so that a typo is not found at the first guest."""
    directory = os.path.dirname(trace_path(pattern, 1)) or "."
    if not os.path.isdir(directory):
        return f"no directory {directory}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot write in {directory}"
    if t.compression_for(pattern) == "zstd":
        try:
            t.zstandard_module()
        except t.TraceError as exc:
            return str(exc)
    return None


_MMIO_CODES = frozenset((int(m.Request.MMIO_READ), int(m.Request.MMIO_WRITE)))


class RecordingMemory:
    """A ``SessionMemory`` that forwards to another and notes every access in a recorder."""

    __slots__ = ("inner", "_add")

    def __init__(self, inner: SessionMemory, recorder: Recorder) -> None:
        self.inner = inner
        self._add = recorder.entries.append

    @property
    def generation(self) -> int:
        return self.inner.generation

    def ram_ranges(self) -> list[tuple[int, int]]:
        return self.inner.ram_ranges()

    def contains(self, gpa: int, length: int) -> bool:
        return self.inner.contains(gpa, length)

    def read(self, gpa: int, length: int) -> bytes | None:
        data = self.inner.read(gpa, length)
        self._add((t.READ, gpa, length, data))
        return data

    def read_u32(self, gpa: int) -> int | None:
        value = self.inner.read_u32(gpa)
        self._add((t.READ32, gpa, value))
        return value

    def read_u64(self, gpa: int) -> int | None:
        value = self.inner.read_u64(gpa)
        self._add((t.READ64, gpa, value))
        return value

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        ok = self.inner.write(gpa, data)
        self._add((t.WRITE, gpa, bytes(data), ok))
        return ok

    def write_u32(self, gpa: int, value: int) -> bool:
        ok = self.inner.write_u32(gpa, value)
        self._add((t.WRITE32, gpa, value & 0xFFFF_FFFF, ok))
        return ok

    def write_u64(self, gpa: int, value: int) -> bool:
        ok = self.inner.write_u64(gpa, value)
        self._add((t.WRITE64, gpa, value & 0xFFFF_FFFF_FFFF_FFFF, ok))
        return ok

    def set_table(self, entries: list[tuple[RegionSpec, int]]) -> None:
        self._table("set", self.inner.set_table, entries)

    def add(self, spec: RegionSpec, fd: int) -> None:
        self._table("add", self.inner.add, spec, fd)

    def remove(self, gpa: int, size: int) -> None:
        self._table("rem", self.inner.remove, gpa, size)

    def _table(self, op: str, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except RegionError as exc:
            self._add((t.TABLE, op, exc.errno))
            raise
        self._add((t.TABLE, op, 0))

    def clear(self) -> None:
        # The session's teardown, not something the guest asked for: not an event.
        self.inner.clear()


def model_registers(session: GuestSession) -> list[tuple[str, RegisterFile]]:
    """(device id, register file) of every model that keeps its registers in ``regs``."""
    out = []
    for dev_id, slot in session.slots.items():
        regs = getattr(slot.model, "regs", None)
        if isinstance(regs, RegisterFile):
            out.append((str(dev_id), regs))
    return out


class _Tracked:
    """One model's registers as the recorder last wrote them down."""

    __slots__ = ("device", "values", "view", "seen", "names")

    def __init__(self, device: str, values: dict[str, int]) -> None:
        self.device = device
        self.values = values  # RegisterFile.values: one dict for the file's life
        self.view = values.values()
        self.seen = list(self.view)  # in the dict's order, which never changes
        self.names = list(values)

    def changes(self, now: list[int]) -> dict[str, int]:
        """The registers whose values ``now`` differ from the last seen, which they become."""
        if len(now) == len(self.names):  # the names in order: compared in C
            changed = dict(compress(zip(self.names, now, strict=True),
                                    map(ne, now, self.seen)))
        else:  # a register appeared: compare by name
            old = dict(zip(self.names, self.seen, strict=True))
            self.names = list(self.values)
            changed = {n: v for n, v in self.values.items() if old.get(n) != v}
        self.seen = now
        return changed


class RecordingConnection(Connection):
    """A ``Connection`` that hands every message it dispatches, whole, to its recorder.

    It wraps the connection's dispatch step (``Connection.dispatch``, called once per
    message with its header fields and fds collected in ``Connection.received``), so chunks
    pass through untouched and everything a request causes lands between its placeholder
    entry and the next one.  An oversized message (step 2) is not dispatched: ``receive``
    notes it."""

    def __init__(self, session: GuestSession, recorder: Recorder) -> None:
        super().__init__(session)
        self.recorder = recorder

    def dispatch(self, payload: bytes) -> bytes:
        recorder = self.recorder
        entries = recorder.entries
        mark = len(entries)
        entries.append(None)  # what the request causes comes after its line
        code, flags, size, fds, late = self.received
        message = _PACK_HEADER(code, flags, size) + payload
        kinds = tuple(fd_kind(fd) for fd in fds) if fds else ()
        # An MMIO request reaches one model: only its registers can have changed.
        tracked = recorder._by_device.get(payload[:4], recorder._tracked) \
            if code in _MMIO_CODES else recorder._tracked
        try:
            reply = super().dispatch(payload)
        except BaseException:
            # A bug escaped the model: keep the request (with no reply) so the trace ends at
            # the request that raised and ``vmm replay`` raises there again.
            entries[mark] = (t.REQ, message, kinds, late, b"", None)
            raise
        delta = None
        for entry in tracked:
            now = [*entry.view]
            if now != entry.seen:
                if delta is None:
                    delta = {}
                delta[entry.device] = entry.changes(now)
        entries[mark] = (t.REQ, message, kinds, late, reply, delta)
        if len(entries) >= recorder.batch:
            recorder.flush()
        return reply

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> bytes:
        reply = Connection.receive(self, data, fds)
        if self.phase is _CLOSED and reply and not self.recorder.cut:
            # closed by the peer's oversized message: the reply is its -E2BIG
            code, _, _, status, _ = m.REPLY_HEAD.unpack_from(reply, len(reply) - 20)
            self.recorder.cut = True
            self.recorder.entries.append((t.REQ, _PACK_HEADER(code, m.VERSION,
                                                              m.MAX_PAYLOAD + 1),
                                          (), False, reply[-20:], None))
        return reply

    def eof(self) -> None:
        if not self.closed:
            self.recorder.entries.append((t.EOF,))
        super().eof()


_PACK_HEADER = m.HEADER.codec.pack
_CLOSED = Phase.CLOSED


class Recorder:
    """Records one guest session into the trace file at ``path``.

    Use: ``rec = Recorder(path, config)``; ``session = GuestSession(config, recorder=rec)``;
    ``conn = rec.connection(session)``; drive ``conn``; ``rec.idle()`` when waiting;
    ``rec.close()`` at the end.  Raises ``OSError`` when the file cannot be created, and
    ``protocols.trace.TraceError`` for a ``.zst`` name without the zstandard module."""

    def __init__(self, path: str, config: DaemonConfig, *, source: str = "vmm daemon",
                 connection: int | None = None, batch: int = 4096,
                 flush_seconds: float = 1.0) -> None:
        self.path = path
        self.config = config
        self.source = source
        self.number = connection
        self.batch = batch
        self.flush_seconds = flush_seconds
        self.entries: list[Any] = []
        self.cut = False
        """The connection was closed on an oversized message (noted once)."""
        self.events = 0
        self.failed = False
        self.closed = False
        self._file: io.BufferedIOBase | None = t.open_for_writing(path)
        self._last_flush = time.monotonic()
        self._tracked: list[_Tracked] = []
        self._by_device: dict[bytes, list[_Tracked]] = {}
        self._session: GuestSession | None = None

    # -- wiring ------------------------------------------------------------------------------

    def wrap_memory(self, memory: SessionMemory) -> SessionMemory:
        return RecordingMemory(memory, self)

    def connection(self, session: GuestSession) -> RecordingConnection:
        """The connection to drive ``session`` with; writes the trace's header."""
        self.attach(session)
        return RecordingConnection(session, self)

    def attach(self, session: GuestSession) -> None:
        if self._session is session:
            return
        self._session = session
        self._tracked = [_Tracked(dev, regs.values) for dev, regs in model_registers(session)]
        self._by_device = {int(entry.device).to_bytes(4, "little"): [entry]
                           for entry in self._tracked}
        header = t.make_header(
            self.config.to_json(), features=session.features(),
            state={entry.device: dict(entry.values) for entry in self._tracked},
            source=self.source, connection=self.number,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), vmm=__version__)
        self._write(t.encode_line(header))

    # -- the session's observer hooks ------------------------------------------------------------

    def irq(self, device: int, vector: int, msi_address: int, msi_data: int,
            delivered: bool) -> bool:
        self.entries.append((t.IRQ, device, vector, msi_address, msi_data, delivered))
        return delivered

    def atc_invalidate(self, segment: int, requester: int, pasid: int, address: int,
                       size: int, delivered: bool) -> bool:
        self.entries.append((t.ATC, segment, requester, pasid, address, size, delivered))
        return delivered

    def page_response(self, segment: int, requester: int, pasid: int, group: int,
                      code: int) -> None:
        self.entries.append((t.PRESP, segment, requester, pasid, group, code))

    # -- requests --------------------------------------------------------------------------------

    # -- output ----------------------------------------------------------------------------------

    def idle(self) -> None:
        """The daemon is about to wait: write what is pending if a while has passed."""
        if self.entries and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush(sync=True)

    def flush(self, sync: bool = False) -> None:
        entries = self.entries
        if not entries or entries[-1] is None:  # None: a request is being handled
            if sync and self._file is not None:
                self._write("", sync)
            return
        text = t.format_entries(entries)
        self.events += len(entries)
        entries.clear()
        self._write(text, sync)
        self._last_flush = time.monotonic()

    def _write(self, text: str, sync: bool = False) -> None:
        f = self._file
        if f is None:
            return
        try:
            f.write(text.encode())
            if sync:
                f.flush()
        except OSError as exc:
            log.error("recording to %s failed (%s); recording stopped", self.path, exc)
            self.failed = True
            self._file = None
            self.entries.clear()
            with contextlib.suppress(OSError):
                f.close()

    def close(self) -> None:
        """Write everything, an ``end`` event, and close the file."""
        if self.closed:
            return
        self.closed = True
        if self._session is None:  # never attached: no header, so no trace either
            self.entries.clear()
        if self.entries and self.entries[-1] is None:
            self.entries.pop()  # a request cut short by an error: it has no reply
        if self._session is not None:
            self.entries.append((t.END, self.events + len(self.entries) + 1))
            self.flush()
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                log.error("recording to %s: %s", self.path, exc)
                with contextlib.suppress(OSError):
                    f.close()


def open_recorder(pattern: str, config: DaemonConfig, connection: int, *,
                  source: str = "vmm daemon") -> Recorder | None:
    """The recorder of connection ``connection`` for ``--record PATTERN`` (None, logged, when
    the file cannot be created: the guest is served unrecorded rather than refused)."""
    path = trace_path(pattern, connection)
    try:
        recorder = Recorder(path, config, source=source, connection=connection)
    except (OSError, t.TraceError) as exc:
        log.error("cannot record connection %d to %s: %s", connection, path, exc)
        return None
    log.info("recording connection %d to %s", connection, path)
    return recorder
