"""Interrupt delivery and the back-end channel (protocol.md, "Back-end channel").

The back-end never blocks on the channel: messages go out with non-blocking sends, what does
not fit waits in a bounded queue that the daemon flushes when the socket is writable.
Undelivered IRQs of one vector coalesce into one, as a level-triggered line would; other
messages queue up to ``MAX_QUEUED``, beyond which the channel is closed and the event logged.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import struct

from protocols import messages as m

log = logging.getLogger(__name__)

MAX_QUEUED = 4096
_EVENTFD_ONE = struct.pack("<Q", 1)


def is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def is_connected_stream(fd: int) -> bool:
    dup = os.dup(fd)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)  # not a socket at all
        return False
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            return False
        sock.getpeername()
        return True
    except OSError:
        return False
    finally:
        sock.close()


class BackendChannel:
    """The socket given by SET_BACKEND_CHANNEL, with a bounded non-blocking send queue."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=os.dup(fd))
        self.sock.setblocking(False)
        # Each queued item: (message bytes, coalescing key or None for non-IRQ messages).
        self._queue: collections.deque[tuple[bytes, tuple[int, int] | None]] = collections.deque()
        self._pending_irqs: set[tuple[int, int]] = set()
        self._partial = b""
        self._queued_other = 0
        self.closed = False
        self.dropped = 0

    @property
    def backlog(self) -> bool:
        return bool(self._queue or self._partial)

    def irq(self, device: int, vector: int, msi_address: int = 0, msi_data: int = 0) -> bool:
        """Queue an IRQ message; False only when the channel is closed (a coalesced IRQ is
        delivered: the one still queued stands for it)."""
        key = (device, vector)
        if self.closed:
            return False
        if key in self._pending_irqs:
            self.dropped += 1  # coalesced into the undelivered one
            return True
        msg = m.backend_message(
            m.BackendMessage.IRQ, m.IRQ_MESSAGE.pack(device, vector, msi_address, msi_data, 0)
        )
        self._pending_irqs.add(key)
        self._queue.append((msg, key))
        self.flush()
        return not self.closed  # a send error closes the channel: the message is lost

    def atc_invalidate(
        self, segment: int, requester: int, pasid: int, address: int, size: int
    ) -> bool:
        return self._post(m.backend_message(
            m.BackendMessage.ATC_INVALIDATE,
            m.ATC_INVALIDATE.pack(segment, 0, requester, pasid, 0, address, size),
        ))

    def page_response(self, segment: int, requester: int, pasid: int, group: int,
                      code: int) -> None:
        self._post(m.backend_message(
            m.BackendMessage.PAGE_RESPONSE,
            m.PAGE_RESPONSE.pack(segment, 0, requester, pasid, group, code, 0),
        ))

    def _post(self, msg: bytes) -> bool:
        """Queue a message that is not an IRQ; past MAX_QUEUED undelivered, close.  Returns
        whether the message was taken (sent, or queued on a channel still open)."""
        if self.closed:
            return False
        if self._queued_other >= MAX_QUEUED:
            log.warning("back-end channel: %d messages undelivered; closing it",
                        self._queued_other)
            self.close()
            return False
        self._queued_other += 1
        self._queue.append((msg, None))
        self.flush()
        return not self.closed

    def flush(self) -> None:
        """Send what the socket takes now; never blocks."""
        while not self.closed and (self._partial or self._queue):
            if not self._partial:
                msg, key = self._queue.popleft()
                if key is not None:
                    self._pending_irqs.discard(key)
                else:
                    self._queued_other -= 1
                self._partial = msg
            try:
                sent = self.sock.send(self._partial)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("back-end channel closed: %s", exc)
                self.close()
                return
            self._partial = self._partial[sent:]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.clear()
            self._queued_other = 0
            self._pending_irqs.clear()
            self._partial = b""
            self.sock.close()


def signal_eventfd(fd: int) -> None:
    try:
        os.write(fd, _EVENTFD_ONE)
    except BlockingIOError:
        pass  # counter saturated: the consumer has a pending signal already
    except OSError as exc:
        log.warning("irq eventfd %d: %s", fd, exc)
