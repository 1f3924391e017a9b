"""qtest scripts and logs as replayable events (``../shared/reference/protocols.md`` §3).

QEMU's qtest protocol drives a machine with text commands — ``writel ADDR VALUE``,
``readq ADDR``, ``write ADDR SIZE 0xHEX``, ``memset``, ``clock_step`` — and its fuzzers emit
reproducers in it.  ``parse`` turns a script (or a ``-qtest-log`` / ``QTEST_LOG=1`` log) into
events for ``vmm replay --format qtest``:

* an access whose bytes all lie in a device's MMIO window becomes an ``MmioAccess`` at
  ``address - base`` of that device; any other address is guest RAM (``RamWrite`` /
  ``RamRead``);
* numbers are read as QEMU reads them (``strtoull`` base 0: ``0x`` hex, a leading ``0`` octal,
  else decimal; a ``-`` wraps modulo 2^64); ``writeX`` values are truncated to the access size;
  ``write``'s hex data shorter than SIZE is zero-filled, ``b64write`` writes the shorter of
  SIZE and its data, as QEMU does;
* in a log, ``[R +t]`` lines are the requests and an ``[S +t] OK ...`` line is the reply of the
  request before it: its value becomes the read's ``expect``; ``[I ...]`` lines and the
  asynchronous ``IRQ raise/lower`` replies are skipped; the generic fuzzer's ``[DMA]`` and
  ``[DOUBLE-FETCH]`` prefixes are dropped (they mark RAM fills);
* ``clock_step``/``clock_set`` become ``ClockStep`` (the models have no timers); ``endianness``,
  ``irq_intercept_in``/``irq_intercept_out`` are accepted and do nothing (``Note``).

Anything else — port I/O (``outb``/``inl``..., including PCI configuration cycles), ``set_irq_in``,
``module_load``, ``read``/``write`` into a device window, unknown commands, malformed arguments
— is a ``QtestError`` naming the line, or with ``skip_unsupported`` a ``Note`` saying it was
skipped.  No device logic here: the windows come from the caller.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

_U64 = (1 << 64) - 1
_SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}


class QtestError(Exception):
    """A script this importer cannot run (the script's fault); ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class MmioAccess:
    """A register access: ``value`` None for a read; ``expect`` what the source says it read."""

    line: int
    device: int
    offset: int
    size: int
    value: int | None
    expect: int | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class RamWrite:
    line: int
    gpa: int
    data: bytes
    text: str = ""


@dataclass(frozen=True, slots=True)
class RamRead:
    """``as_int``: a ``readX``, whose result is a little-endian integer."""

    line: int
    gpa: int
    size: int
    expect: bytes | None = None
    text: str = ""
    as_int: bool = False


@dataclass(frozen=True, slots=True)
class ClockStep:
    line: int
    ns: int | None
    text: str = ""


@dataclass(frozen=True, slots=True)
class Note:
    """A command accepted (or skipped) without effect on the models."""

    line: int
    text: str


ImportedEvent = MmioAccess | RamWrite | RamRead | ClockStep | Note

_LOG_PREFIX = re.compile(r"^\[([RSI]) [+\-]?[0-9.]+\]\s?(.*)$")
_FUZZ_PREFIX = re.compile(r"^\[(?:DMA|DOUBLE-FETCH)\]\s*")
_ACCESS = re.compile(r"^(read|write)([bwlq])$")
_PORT_IO = {"outb", "outw", "outl", "inb", "inw", "inl"}
_UNSUPPORTED = {
    **{c: "port I/O is not supported: the vIOMMU models have no I/O ports (a PCI "
          "configuration cycle through 0xcf8/0xcfc cannot be replayed)" for c in _PORT_IO},
    "set_irq_in": "set_irq_in is not supported: the vIOMMU models have no input lines",
    "module_load": "module_load is not supported",
}


def number(word: str) -> int:
    """``strtoull(word, NULL, 0)`` as qtest uses it, strictly (ValueError on junk)."""
    text = word.strip()
    negative = text.startswith("-")
    if negative or text.startswith("+"):
        text = text[1:]
    if text[:2].lower() == "0x":
        value = int(text[2:], 16)
    elif len(text) > 1 and text.startswith("0"):
        value = int(text[1:], 8)
    else:
        value = int(text, 10)
    return (-value if negative else value) & _U64


def _window(windows: Sequence[tuple[int, int, int]], addr: int, size: int,
            ) -> tuple[int, int] | None | bool:
    """(device, offset) when ``[addr, addr+size)`` is inside a window; None when it touches
    none; False when it straddles a window's edge."""
    for device, base, length in windows:
        if base <= addr and addr + size <= base + length:
            return device, addr - base
        if addr < base + length and base < addr + size:
            return False
    return None


def parse(text: str, windows: Sequence[tuple[int, int, int]], *,
          skip_unsupported: bool = False) -> list[ImportedEvent]:
    """The events of a qtest script or log; ``windows`` are (device, base, size)."""
    events: list[ImportedEvent] = []
    last_read: int | None = None  # index in events of a read waiting for its [S] line

    def fail(line: int, message: str) -> None:
        if not skip_unsupported:
            raise QtestError(line, message)
        events.append(Note(line, f"skipped: {message}"))

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        log = _LOG_PREFIX.match(line)
        if log is not None:
            tag, line = log.group(1), log.group(2).strip()
            if tag == "I":
                continue
            if tag == "S":
                if last_read is not None:
                    _apply_reply(events, last_read, line, lineno)
                last_read = None
                continue
        line = _FUZZ_PREFIX.sub("", line)
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        if cmd in ("IRQ", "OK", "FAIL", "ERR"):
            continue  # replies that a copied transcript may contain
        last_read = None
        try:
            event = _command(lineno, cmd, args, line, windows)
        except _Unsupported as exc:
            fail(lineno, str(exc))
            continue
        except (ValueError, IndexError, binascii.Error) as exc:
            fail(lineno, f"malformed '{line}': {exc or 'missing argument'}")
            continue
        if event is None:
            continue
        events.append(event)
        if isinstance(event, MmioAccess | RamRead) and (
                not isinstance(event, MmioAccess) or event.value is None):
            last_read = len(events) - 1
    return events


class _Unsupported(Exception):  # noqa: N818 - internal signal, reported as a QtestError
    pass


def _apply_reply(events: list[ImportedEvent], index: int, reply: str, lineno: int) -> None:
    """Attach a log's ``[S] OK value`` to the read it answers."""
    words = reply.split()
    if len(words) < 2 or words[0] != "OK":
        return
    ev = events[index]
    try:
        if isinstance(ev, MmioAccess):
            events[index] = MmioAccess(ev.line, ev.device, ev.offset, ev.size, None,
                                       number(words[1]), ev.text)
        elif isinstance(ev, RamRead):
            if ev.as_int:
                value = number(words[1]) & ((1 << (8 * ev.size)) - 1)
                data = value.to_bytes(ev.size, "little")
            elif ev.text.startswith("b64read"):
                data = base64.b64decode(words[1])
            else:
                data = bytes.fromhex(words[1][2:] if words[1].startswith("0x") else words[1])
            events[index] = RamRead(ev.line, ev.gpa, ev.size, data, ev.text, ev.as_int)
    except (ValueError, binascii.Error) as exc:
        raise QtestError(lineno, f"malformed reply '{reply}': {exc}") from None


def _command(lineno: int, cmd: str, args: list[str], line: str,
             windows: Sequence[tuple[int, int, int]]) -> ImportedEvent | None:
    if cmd in _UNSUPPORTED:
        raise _Unsupported(_UNSUPPORTED[cmd])
    access = _ACCESS.match(cmd)
    if access is not None:
        size = _SIZES[access.group(2)]
        addr = number(args[0])
        where = _window(windows, addr, size)
        if where is False:
            raise _Unsupported(f"'{line}' straddles the edge of a device window")
        if cmd.startswith("write"):
            value = number(args[1]) & ((1 << (8 * size)) - 1)
            if isinstance(where, tuple):
                return MmioAccess(lineno, where[0], where[1], size, value, None, line)
            return RamWrite(lineno, addr, value.to_bytes(size, "little"), line)
        if isinstance(where, tuple):
            return MmioAccess(lineno, where[0], where[1], size, None, None, line)
        return RamRead(lineno, addr, size, None, line, True)
    if cmd in ("read", "b64read", "write", "b64write", "memset"):
        addr, size = number(args[0]), number(args[1])
        if cmd in ("read", "b64read") and size == 0:
            raise _Unsupported(f"{cmd} of size 0 (QEMU asserts)")
        if _window(windows, addr, max(size, 1)) is not None:
            raise _Unsupported(f"'{cmd}' touches a device window: only writeX/readX reach "
                               "registers")
        if cmd in ("read", "b64read"):
            return RamRead(lineno, addr, size, None, line)
        if cmd == "memset":
            return RamWrite(lineno, addr, bytes([number(args[2]) & 0xFF]) * size, line)
        if cmd == "write":
            hexdata = args[2]
            if len(hexdata) < 3 or not hexdata.startswith("0x"):
                raise ValueError("data must be 0x followed by hex digits")
            digits = hexdata[2:]
            data = bytes.fromhex(digits[: 2 * min(len(digits) // 2, size)])
            return RamWrite(lineno, addr, data + bytes(size - len(data)), line)
        data = base64.b64decode(args[2], validate=True)
        return RamWrite(lineno, addr, data[:size], line)
    if cmd in ("clock_step", "clock_set"):
        ns = number(args[0]) if args else None
        if cmd == "clock_set" and ns is None:
            raise IndexError("clock_set needs a time")
        return ClockStep(lineno, ns, f"{line}: no timers in the models, nothing to do")
    if cmd in ("endianness", "irq_intercept_in", "irq_intercept_out"):
        return Note(lineno, f"{line}: accepted (interrupts are reported as they happen)")
    raise _Unsupported(f"unsupported qtest command '{cmd}'")
