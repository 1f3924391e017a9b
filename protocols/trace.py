"""The viommu trace format, version 1: one guest session as JSON Lines.

A trace is what ``vmm daemon --record`` writes for each guest connection and what ``vmm
replay`` re-runs without the guest (``../shared/reference/protocols.md`` §6 recommends JSON
Lines: diff-able, greppable, append-only, compressible).  The file is UTF-8 text, one JSON
object per line; ``.gz`` files are gzip and ``.zst``/``.zstd`` files zstandard (written by
suffix, read by their magic bytes, so a renamed file still opens; zstandard needs the
``zstandard`` module).

Line 1, the header::

    {"format": "viommu-trace", "version": 1,
     "config": {"devices": [...]},            # DaemonConfig.to_json(): the whole configuration
     "features": "0x300000006",               # what the session offered
     "state": {"0": {"IDR0": "0x...", ...}},  # each model's registers after construction
     "source": "vmm daemon", "connection": 1, "created": "2026-11-22T12:00:00Z",
     "vmm": "0.1.0"}

Every further line is one *event*, an object whose ``"k"`` names its kind; they come in the
order they happened.  Addresses, offsets, register values and feature words are strings
``"0x..."`` (hex, any case on input); ids, sizes, counts and statuses are JSON integers; byte
strings are lowercase hex (``""`` when empty); a PASID is an integer or ``null`` (none).
Readers ignore members they do not know; a kind they do not know is an error.

**Requests** — one line per message the session handled, carrying its reply.  The line comes
before the events the request caused.  Reply members: ``"status"`` when it is not 0, then the
reply data in the kind's own members, or as ``"reply"`` (hex) when it does not fit them.  A
request that carried fds lists them by what they were — ``"eventfd"``, ``"stream"`` (a
connected stream socket), ``"socket"``, ``"file:SIZE"``, ``"other"``, ``"bad"`` — in
``"fds"``, with ``"late": true`` when some came with payload bytes rather than with the header
(the request then fails, -EINVAL).
``"regs"`` is how the request changed the models' registers: ``{"<device id>": {"NAME":
"0x..."}}`` for every register whose value changed (absent when none did).  Models that keep
their registers in a ``devices.regs.RegisterFile`` (``model.regs``) are watched; after an MMIO
request only its target model is looked at (one model's MMIO cannot reach another's
registers), after any other request all of them.

=====================  ========================================  ==========================
kind                   request members                           reply members
=====================  ========================================  ==========================
get_features           —                                         features
set_features           features                                  —
get_config             —                                         text (the JSON, verbatim)
set_mem_table          regions: [[gpa, size, mmap_offset], ...]  —
add_mem_reg            region: [gpa, size, mmap_offset]          —
rem_mem_reg            region                                    —
reset                  dev                                       —
mmio_read              dev, size, off                            value
mmio_write             dev, size, off, value                     —
dma                    seg, req, pasid, iova, len, flags,        data (a read), or
                       data (hex, with WRITE)                    fault {kind, code,
                                                                 address, stage}
translate              seg, req, pasid, iova, flags              address, size, perms, or
                                                                 fault
pv_iommu_op            subop, body (hex)                         result (hex: the structure
                                                                 as updated)
set_irq_fd             dev, vector                               —
set_backend_channel    —                                         —
translate_batch        payload (hex)                             reply (hex)
dma_batch              payload (hex)                             reply (hex)
page_request           seg, req, pasid, flags, address, group    —
msg                    code, flags, size, payload (hex)          reply (hex)
=====================  ========================================  ==========================

``msg`` is any message that is not the well-formed request of its code (wrong size, reserved
bits, bad flags, unknown code): kept raw so that it replays byte for byte.  An oversized
message (step 2: answered -E2BIG, connection closed, payload never read) is a ``msg`` with
``size`` 1 MiB + 65 and no payload, whatever size it announced: only "too large" matters.

**Inputs the models took from guest memory, and their outputs**, between two requests:

- ``read`` ``gpa, n, data``: a read of guest memory by a model or the host IOMMU and the
  bytes it got (``null``: not guest RAM).  32- and 64-bit reads are ``n`` 4 and 8,
  little-endian bytes.
- ``write`` ``gpa, data`` (+ ``"ok": false`` when no RAM was there): a write to guest memory.
- ``table`` ``op`` ("set", "add", "rem") (+ ``errno``, negative, when refused): what the memory
  table did with a SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG — an input, since it depends on
  the fds the guest sent.
- ``irq`` ``dev, vec`` (+ ``addr``, ``data`` for an MSI that did not land in RAM, + ``"ok":
  false`` when no route took that MSI): an interrupt, whatever route it then took (eventfd,
  back-end channel, dropped).  An MSI's ``ok`` is an input: the model reacts to an aborted
  MSI (SMMUv3 GERROR.MSI_*_ABT_ERR), and replay answers it from the trace.
- ``atc_inv`` ``seg, req, pasid, addr, size`` (+ ``"ok": false`` when no open channel took
  it — an input, as for ``irq``: SMMUv3 CERROR_ATC_INV_SYNC, VT-d ITE) and ``page_resp``
  ``seg, req, pasid, group, code``: back-end channel messages (whether or not a channel was
  there to carry them).

**Stream events**: ``eof`` (the guest went away; a half-read message is dropped) and ``end``
``events`` (the recorder closed the file cleanly; a trace without it was cut short).

Events are numbered from 1 in file order: event N is on line N + 1.

Example (an SMMU whose illegal command raises GERROR on its wired interrupt)::

    {"k":"mmio_write","dev":0,"size":4,"off":"0x98","value":"0x1","regs":{"0":{"GERROR":"0x1",
     "CMDQ_PROD":"0x1","CMDQ_CONS":"0x1000000"}}}
    {"k":"read","gpa":"0x40000000","n":16,"data":"00000000000000000000000000000000"}
    {"k":"irq","dev":0,"vec":3}

Versioning: ``version`` goes up when a reader of the old version would misread a new trace;
added members and new optional header fields do not change it.  Readers refuse newer versions.
"""

from __future__ import annotations

import errno as E
import gzip
import io
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from protocols import messages as m
from protocols.messages import Request

FORMAT = "viommu-trace"
VERSION = 1

Event = dict[str, Any]
"""One parsed trace line."""


class TraceError(Exception):
    """A trace that cannot be read (not a trace, a newer version, a broken line): the file's
    fault, or the fault of whoever edited it.  ``line`` is 1-based, 0 when unknown."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


# -- files -------------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstandard_module() -> Any:
    try:
        import zstandard
    except ImportError:
        raise TraceError("zstd traces need the 'zstandard' Python module "
                         "(pip install zstandard), or use .gz") from None
    return zstandard


def compression_for(path: str) -> str:
    """``"gzip"``, ``"zstd"`` or ``""`` by the file name's suffix."""
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith((".zst", ".zstd")):
        return "zstd"
    return ""


def open_for_writing(path: str, *, gzip_level: int = 1) -> io.BufferedIOBase:
    """A binary file that compresses by suffix (gzip level 1 by default: recording is on the
    daemon's hot path, and JSON Lines compress well at any level)."""
    kind = compression_for(path)
    if kind == "zstd":
        zstandard = zstandard_module()
        raw = open(path, "wb")  # noqa: SIM115 - owned by the stream writer
        writer: io.BufferedIOBase = zstandard.ZstdCompressor(level=3).stream_writer(raw)
        return writer
    if kind == "gzip":
        return gzip.open(path, "wb", compresslevel=gzip_level)
    return open(path, "wb")  # noqa: SIM115 - the caller closes it


class _Counting(io.RawIOBase):
    """The raw file under a decompressor, counting bytes consumed (for progress)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self.f.readinto(buf)  # type: ignore[attr-defined]
        self.consumed += n
        return int(n)

    def close(self) -> None:
        self.f.close()
        super().close()


class TraceReader:
    """A trace file opened for reading: ``header``, then ``events()`` with line numbers.

    ``total`` and ``consumed`` are bytes of the file as stored (compressed or not), for a
    progress bar."""

    def __init__(self, path: str) -> None:
        self.path = path
        raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.total = os.fstat(raw.fileno()).st_size
        magic = raw.read(4)
        raw.seek(0)
        self._raw = _Counting(raw)
        buffered = io.BufferedReader(self._raw, 1 << 16)
        stream: io.BufferedIOBase
        if magic.startswith(_GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=buffered, mode="rb")
        elif magic == _ZSTD_MAGIC:
            stream = io.BufferedReader(zstandard_module().ZstdDecompressor().stream_reader(buffered),
                                       1 << 16)
        else:
            stream = buffered
        self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
        self.line = 0
        self.truncated = False
        """The compressed stream ended early; the events read so far are all there is."""
        try:
            first = self._text.readline()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            self.close()
            raise TraceError(f"{path}: cannot read: {exc}") from None
        self.line = 1
        if not first.strip():
            self.close()
            raise TraceError(f"{path}: empty file, not a viommu trace", 1)
        try:
            self.header = check_header(parse_line(first, 1))
        except TraceError:
            self.close()
            raise

    @property
    def consumed(self) -> int:
        return self._raw.consumed

    def events(self) -> Iterator[tuple[int, Event]]:
        """(line number, event) for every event line; blank lines are skipped."""
        decode = _DECODE  # json.loads without its wrapper: lines start with "{"
        lineno = self.line
        try:
            for text in self._text:
                lineno += 1
                try:
                    ev = decode(text)[0]
                except ValueError:
                    if text.isspace():
                        continue
                    try:
                        ev = json.loads(text)  # leading blanks, say, after an edit
                    except ValueError as exc:
                        if not text.endswith("\n"):  # the last line, half written
                            self.truncated = True
                            break
                        raise TraceError(f"not JSON: {exc}", lineno) from None
                if ev.__class__ is not dict or "k" not in ev:
                    raise TraceError("an event must be an object with a 'k' member", lineno)
                yield lineno, ev
            self.line = lineno
        except EOFError:
            # A compressed stream cut short (the recording process was killed): what was
            # written before is a trace like any other, without its end.
            self.truncated = True
            self.line = lineno
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceError(f"cannot read further: {exc}", lineno + 1) from None

    def close(self) -> None:
        self._text.close()
        self._raw.close()  # a GzipFile given a file object leaves it open

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_line(text: str, line: int) -> Event:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise TraceError(f"not JSON: {exc}", line) from None
    if not isinstance(doc, dict):
        raise TraceError("not a JSON object", line)
    return doc


def make_header(config: dict[str, Any], *, features: int, state: dict[str, dict[str, int]],
                source: str, connection: int | None, created: str, vmm: str) -> Event:
    return {
        "format": FORMAT, "version": VERSION, "config": config, "features": hex(features),
        "state": {dev: {name: hex(v) for name, v in regs.items()} for dev, regs in state.items()},
        "source": source, "connection": connection, "created": created, "vmm": vmm,
    }


def check_header(doc: Event) -> Event:
    if doc.get("format") != FORMAT:
        raise TraceError("not a viommu trace (no \"format\": \"viommu-trace\" header); "
                         "for qtest scripts or QEMU trace logs use --format", 1)
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise TraceError(f"bad trace version {version!r}", 1)
    if version > VERSION:
        raise TraceError(f"trace version {version} is newer than this vmm reads ({VERSION})", 1)
    config = doc.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("devices"), list):
        raise TraceError("the header has no daemon configuration", 1)
    return doc


def header_state(doc: Event) -> dict[str, dict[str, int]]:
    """The header's register state, as integers."""
    state = doc.get("state") or {}
    return {dev: {name: int(v, 16) for name, v in regs.items()} for dev, regs in state.items()}


# -- the recorder's buffer ---------------------------------------------------------------------
#
# The recorder appends plain tuples (cheap on the daemon's hot path) and turns them into lines
# in batches with ``format_entries``.  The first item of each tuple is its tag:

REQ = 0  # (REQ, message bytes, fd kinds, late, reply bytes, regs delta | None)
READ = 1  # (READ, gpa, length, bytes | None)
READ32 = 2  # (READ32, gpa, int | None)
READ64 = 3  # (READ64, gpa, int | None)
WRITE = 4  # (WRITE, gpa, bytes, ok)
WRITE32 = 5  # (WRITE32, gpa, int, ok)
WRITE64 = 6  # (WRITE64, gpa, int, ok)
IRQ = 7  # (IRQ, device, vector, msi_address, msi_data, delivered)
ATC = 8  # (ATC, segment, requester, pasid, address, size, delivered)
PRESP = 9  # (PRESP, segment, requester, pasid, group, code)
TABLE = 10  # (TABLE, op, errno)
EOF = 11  # (EOF,)
END = 12  # (END, events)

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_DECODE = json.JSONDecoder().raw_decode


def encode_line(doc: Event) -> str:
    """One line of a trace (compact JSON and a newline)."""
    return _DUMPS(doc) + "\n"


def _hex_or_null(data: bytes | None) -> str:
    return "null" if data is None else f'"{data.hex()}"'


_MMIO_READ_HEAD = m.HEADER.pack(Request.MMIO_READ, m.VERSION, m.MMIO_READ.size)
_MMIO_WRITE_HEAD = m.HEADER.pack(Request.MMIO_WRITE, m.VERSION, m.MMIO_WRITE.size)
_MMIO_READ_OK = m.REPLY_HEAD.pack(Request.MMIO_READ, m.REPLY_FLAGS, 16, 0, 0)
_MMIO_WRITE_OK = m.REPLY_HEAD.pack(Request.MMIO_WRITE, m.REPLY_FLAGS, 8, 0, 0)
_MMIO_READ_BODY = struct.Struct("<IIQ12xQ")  # request payload, reply head, value
_MMIO_WRITE_BODY = struct.Struct("<IIQQ")


def _regs_member(regs: dict[str, dict[str, int]] | None) -> str:
    if not regs:
        return ""
    if len(regs) == 1:
        for dev, delta in regs.items():
            if len(delta) == 1:  # the usual MMIO write: one register of one model
                for name, v in delta.items():
                    return f',"regs":{{"{dev}":{{"{name}":"{v:#x}"}}}}'
    inner = ",".join(
        f'"{dev}":{{' + ",".join(f'"{name}":"{v:#x}"' for name, v in delta.items()) + "}"
        for dev, delta in regs.items())
    return f',"regs":{{{inner}}}'


def _mmio_line(e: Any) -> str | None:
    """The line of a successful MMIO request, written without building an object (the
    daemon's hot path); None for anything else.  Same content as ``request_event``."""
    message, reply = e[1], e[4]
    if e[2] or e[3]:
        return None
    if len(message) == 28 and message.startswith(_MMIO_READ_HEAD) and len(reply) == 28 \
            and reply.startswith(_MMIO_READ_OK):
        dev, size, off, value = _MMIO_READ_BODY.unpack(message[12:] + reply[8:])
        return (f'{{"k":"mmio_read","dev":{dev},"size":{size},"off":"{off:#x}",'
                f'"value":"{value:#x}"{_regs_member(e[5])}}}\n')
    if len(message) == 36 and message.startswith(_MMIO_WRITE_HEAD) and reply == _MMIO_WRITE_OK:
        dev, size, off, value = _MMIO_WRITE_BODY.unpack_from(message, 12)
        return (f'{{"k":"mmio_write","dev":{dev},"size":{size},"off":"{off:#x}",'
                f'"value":"{value:#x}"{_regs_member(e[5])}}}\n')
    return None


_SEEN_LINES: dict[bytes, str] = {}
"""Lines of requests without fds or register changes, by message + reply bytes."""


def format_entries(entries: list[Any]) -> str:
    """Lines (each ending in a newline) for a batch of recorder entries."""
    out: list[str] = []
    add = out.append
    for e in entries:
        tag = e[0]
        if tag == READ64:
            v = e[2]
            data = "null" if v is None else f'"{v.to_bytes(8, "little").hex()}"'
            add(f'{{"k":"read","gpa":"{e[1]:#x}","n":8,"data":{data}}}\n')
        elif tag == REQ:
            if e[5] is None and not e[2]:
                # Drivers poll: the same request with the same reply, over and over.
                key = e[1] + e[4]
                line = _SEEN_LINES.get(key)
                if line is None:
                    line = _mmio_line(e) or _DUMPS(request_event(e[1], (), e[3], e[4], None)) \
                        + "\n"
                    if len(_SEEN_LINES) >= 4096:
                        _SEEN_LINES.clear()
                    _SEEN_LINES[key] = line
                add(line)
            else:
                add(_mmio_line(e) or _DUMPS(request_event(e[1], e[2], e[3], e[4], e[5])) + "\n")
        elif tag == READ32:
            v = e[2]
            data = "null" if v is None else f'"{v.to_bytes(4, "little").hex()}"'
            add(f'{{"k":"read","gpa":"{e[1]:#x}","n":4,"data":{data}}}\n')
        elif tag == READ:
            add(f'{{"k":"read","gpa":"{e[1]:#x}","n":{e[2]},"data":{_hex_or_null(e[3])}}}\n')
        elif tag in (WRITE, WRITE32, WRITE64):
            if tag == WRITE:
                hexdata = e[2].hex()
            else:
                hexdata = e[2].to_bytes(4 if tag == WRITE32 else 8, "little").hex()
            ok = "" if e[3] else ',"ok":false'
            add(f'{{"k":"write","gpa":"{e[1]:#x}","data":"{hexdata}"{ok}}}\n')
        elif tag == IRQ:
            msi = f',"addr":"{e[3]:#x}","data":"{e[4]:#x}"' if e[3] or e[4] else ""
            if msi and not e[5]:
                msi += ',"ok":false'
            add(f'{{"k":"irq","dev":{e[1]},"vec":{e[2]}{msi}}}\n')
        elif tag == ATC:
            atc = {"k": "atc_inv", "seg": e[1], "req": e[2], "pasid": _pasid(e[3]),
                   "addr": hex(e[4]), "size": hex(e[5])}
            if not e[6]:
                atc["ok"] = False
            add(_DUMPS(atc) + "\n")
        elif tag == PRESP:
            add(_DUMPS({"k": "page_resp", "seg": e[1], "req": e[2], "pasid": _pasid(e[3]),
                        "group": e[4], "code": e[5]}) + "\n")
        elif tag == TABLE:
            err = f',"errno":{e[2]}' if e[2] else ""
            add(f'{{"k":"table","op":"{e[1]}"{err}}}\n')
        elif tag == EOF:
            add('{"k":"eof"}\n')
        elif tag == END:
            add(f'{{"k":"end","events":{e[1]}}}\n')
        else:  # pragma: no cover - a recorder bug
            raise ValueError(f"unknown recorder entry {e!r}")
    return "".join(out)


# -- requests: wire bytes <-> events -------------------------------------------------------------

def _pasid(value: int) -> int | None:
    return None if value == m.NO_PASID else value


def _wire_pasid(value: int | None) -> int:
    return m.NO_PASID if value is None else int(value)


def _x(value: str) -> int:
    return int(value, 16)


def _region(spec: tuple[int, int, int]) -> list[str]:
    return [hex(v) for v in spec]


def _fault(data: bytes) -> dict[str, Any] | None:
    if len(data) != m.FAULT_RECORD.size:
        return None
    kind, code, address, stage, reserved = m.FAULT_RECORD.unpack(data)
    if reserved:
        return None
    return {"fault": {"kind": kind, "code": code, "address": hex(address), "stage": stage}}


def _fault_bytes(ev: Event) -> bytes:
    f = ev["fault"]
    return m.FAULT_RECORD.pack(f["kind"], f["code"], _x(f["address"]), f["stage"], 0)


Fields = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """How one request code is written in a trace and rebuilt from it."""

    name: str
    code: int
    decode: Callable[[bytes], Fields | None]
    """Payload → request members; None when the payload is not this request's clean form."""
    encode: Callable[[Event], bytes]
    """Request members → payload."""
    decode_reply: Callable[[int, bytes], Fields | None] = lambda status, data: (
        None if data else {})
    """(status, reply data) → reply members; None: keep the data raw (``"reply"``)."""
    encode_reply: Callable[[Event], bytes] = lambda ev: b""
    members: tuple[str, ...] = ()
    """The request's own members, in the order a human reads them."""


def _empty(payload: bytes) -> Fields | None:
    return {} if not payload else None


def _no_payload(ev: Event) -> bytes:
    return b""


def _dec_features(payload: bytes) -> Fields | None:
    if len(payload) != m.FEATURES.size:
        return None
    return {"features": hex(m.FEATURES.unpack(payload)[0])}


def _dec_features_reply(status: int, data: bytes) -> Fields | None:
    if status == 0 and len(data) == m.FEATURES.size:
        return {"features": hex(m.FEATURES.unpack(data)[0])}
    return None if data else {}


def _dec_config_reply(status: int, data: bytes) -> Fields | None:
    if status == 0 and data:
        try:
            return {"text": data.decode("utf-8")}
        except UnicodeDecodeError:
            return None
    return None if data else {}


def _dec_mem_table(payload: bytes) -> Fields | None:
    if len(payload) < m.MEM_TABLE_HEAD.size:
        return None
    n, reserved = m.MEM_TABLE_HEAD.unpack(payload)
    if reserved or len(payload) != m.MEM_TABLE_HEAD.size + m.REGION.size * n:
        return None
    return {"regions": [
        _region(m.REGION.unpack(payload, m.MEM_TABLE_HEAD.size + m.REGION.size * i))
        for i in range(n)]}


def _enc_mem_table(ev: Event) -> bytes:
    regions = ev["regions"]
    return m.MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(
        m.REGION.pack(*(_x(v) for v in r)) for r in regions)


def _dec_region(payload: bytes) -> Fields | None:
    if len(payload) != m.REGION.size:
        return None
    return {"region": _region(m.REGION.unpack(payload))}


def _enc_region(ev: Event) -> bytes:
    return m.REGION.pack(*(_x(v) for v in ev["region"]))


def _dec_reset(payload: bytes) -> Fields | None:
    if len(payload) != m.RESET.size:
        return None
    dev, reserved = m.RESET.unpack(payload)
    return None if reserved else {"dev": dev}


def _dec_mmio_read(payload: bytes) -> Fields | None:
    if len(payload) != m.MMIO_READ.size:
        return None
    dev, size, off = m.MMIO_READ.unpack(payload)
    return {"dev": dev, "size": size, "off": hex(off)}


def _dec_value_reply(status: int, data: bytes) -> Fields | None:
    if status == 0 and len(data) == m.MMIO_VALUE.size:
        return {"value": hex(m.MMIO_VALUE.unpack(data)[0])}
    return None if data else {}


def _dec_mmio_write(payload: bytes) -> Fields | None:
    if len(payload) != m.MMIO_WRITE.size:
        return None
    dev, size, off, value = m.MMIO_WRITE.unpack(payload)
    return {"dev": dev, "size": size, "off": hex(off), "value": hex(value)}


def _dec_dma(payload: bytes) -> Fields | None:
    if len(payload) < m.DMA.size:
        return None
    req, pasid, iova, length, flags, seg = m.DMA.unpack(payload)
    writes = bool(flags & m.DmaFlag.WRITE)
    if len(payload) != m.DMA.size + (length if writes else 0):
        return None
    ev: Fields = {"seg": seg, "req": req, "pasid": _pasid(pasid), "iova": hex(iova),
                  "len": length, "flags": flags}
    if writes:
        ev["data"] = payload[m.DMA.size:].hex()
    return ev


def _enc_dma(ev: Event) -> bytes:
    head = m.DMA.pack(ev["req"], _wire_pasid(ev["pasid"]), _x(ev["iova"]), ev["len"],
                      ev["flags"], ev["seg"])
    if ev["flags"] & m.DmaFlag.WRITE:
        return head + bytes.fromhex(ev["data"])
    return head


def _dec_dma_reply(status: int, data: bytes) -> Fields | None:
    if status == 0:
        return {"data": data.hex()} if data else {}
    if status == -E.EFAULT:
        return _fault(data)
    return None if data else {}


def _enc_dma_reply(ev: Event) -> bytes:
    if "fault" in ev:
        return _fault_bytes(ev)
    # a DMA write's request carries "data" too; only a read's reply does
    if ev["flags"] & m.DmaFlag.WRITE:
        return b""
    data = ev.get("data")
    return bytes.fromhex(data) if data else b""


def _dec_translate(payload: bytes) -> Fields | None:
    if len(payload) != m.TRANSLATE.size:
        return None
    req, pasid, iova, flags, seg, reserved = m.TRANSLATE.unpack(payload)
    if reserved:
        return None
    return {"seg": seg, "req": req, "pasid": _pasid(pasid), "iova": hex(iova), "flags": flags}


def _enc_translate(ev: Event) -> bytes:
    return m.TRANSLATE.pack(ev["req"], _wire_pasid(ev["pasid"]), _x(ev["iova"]), ev["flags"],
                            ev["seg"], 0)


def _dec_translate_reply(status: int, data: bytes) -> Fields | None:
    if status == 0 and len(data) == m.TRANSLATE_RESULT.size:
        address, size, perms, reserved = m.TRANSLATE_RESULT.unpack(data)
        if reserved:
            return None
        return {"address": hex(address), "size": hex(size), "perms": perms}
    if status == -E.EFAULT:
        return _fault(data)
    return None if data else {}


def _enc_translate_reply(ev: Event) -> bytes:
    if "fault" in ev:
        return _fault_bytes(ev)
    if "address" in ev:
        return m.TRANSLATE_RESULT.pack(_x(ev["address"]), _x(ev["size"]), ev["perms"], 0)
    return b""


def _dec_pv(payload: bytes) -> Fields | None:
    if len(payload) < m.PV_IOMMU_HEAD.size:
        return None
    subop, reserved = m.PV_IOMMU_HEAD.unpack(payload)
    if reserved:
        return None
    return {"subop": subop, "body": payload[m.PV_IOMMU_HEAD.size:].hex()}


def _enc_pv(ev: Event) -> bytes:
    return m.PV_IOMMU_HEAD.pack(ev["subop"], 0) + bytes.fromhex(ev["body"])


def _dec_pv_reply(status: int, data: bytes) -> Fields | None:
    return {"result": data.hex()}


def _enc_pv_reply(ev: Event) -> bytes:
    return bytes.fromhex(ev["result"])


def _dec_irq_fd(payload: bytes) -> Fields | None:
    if len(payload) != m.SET_IRQ_FD.size:
        return None
    dev, vector = m.SET_IRQ_FD.unpack(payload)
    return {"dev": dev, "vector": vector}


def _dec_raw(payload: bytes) -> Fields | None:
    return {"payload": payload.hex()}


def _enc_raw(ev: Event) -> bytes:
    return bytes.fromhex(ev["payload"])


def _dec_page_request(payload: bytes) -> Fields | None:
    if len(payload) != m.PAGE_REQUEST.size:
        return None
    seg, rsv0, req, pasid, flags, address, group, rsv1 = m.PAGE_REQUEST.unpack(payload)
    if rsv0 or rsv1:
        return None
    return {"seg": seg, "req": req, "pasid": _pasid(pasid), "flags": flags,
            "address": hex(address), "group": group}


def _enc_page_request(ev: Event) -> bytes:
    return m.PAGE_REQUEST.pack(ev["seg"], 0, ev["req"], _wire_pasid(ev["pasid"]), ev["flags"],
                               _x(ev["address"]), ev["group"], 0)


_ADDR = ("seg", "req", "pasid", "iova")

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("get_features", Request.GET_FEATURES, _empty, _no_payload, _dec_features_reply,
         lambda ev: m.FEATURES.pack(_x(ev["features"])) if "features" in ev else b""),
    Kind("set_features", Request.SET_FEATURES, _dec_features,
         lambda ev: m.FEATURES.pack(_x(ev["features"])), members=("features",)),
    Kind("get_config", Request.GET_CONFIG, _empty, _no_payload, _dec_config_reply,
         lambda ev: ev["text"].encode("utf-8") if "text" in ev else b""),
    Kind("set_mem_table", Request.SET_MEM_TABLE, _dec_mem_table, _enc_mem_table,
         members=("regions", "fds", "late")),
    Kind("add_mem_reg", Request.ADD_MEM_REG, _dec_region, _enc_region,
         members=("region", "fds", "late")),
    Kind("rem_mem_reg", Request.REM_MEM_REG, _dec_region, _enc_region, members=("region",)),
    Kind("reset", Request.RESET, _dec_reset, lambda ev: m.RESET.pack(ev["dev"], 0),
         members=("dev",)),
    Kind("mmio_read", Request.MMIO_READ, _dec_mmio_read,
         lambda ev: m.MMIO_READ.pack(ev["dev"], ev["size"], _x(ev["off"])), _dec_value_reply,
         lambda ev: m.MMIO_VALUE.pack(_x(ev["value"])) if "value" in ev else b"",
         members=("dev", "off", "size")),
    Kind("mmio_write", Request.MMIO_WRITE, _dec_mmio_write,
         lambda ev: m.MMIO_WRITE.pack(ev["dev"], ev["size"], _x(ev["off"]), _x(ev["value"])),
         members=("dev", "off", "size", "value")),
    Kind("dma", Request.DMA, _dec_dma, _enc_dma, _dec_dma_reply, _enc_dma_reply,
         members=(*_ADDR, "len", "flags")),
    Kind("translate", Request.TRANSLATE, _dec_translate, _enc_translate, _dec_translate_reply,
         _enc_translate_reply, members=(*_ADDR, "flags")),
    Kind("pv_iommu_op", Request.PV_IOMMU_OP, _dec_pv, _enc_pv, _dec_pv_reply, _enc_pv_reply,
         members=("subop", "body")),
    Kind("set_irq_fd", Request.SET_IRQ_FD, _dec_irq_fd,
         lambda ev: m.SET_IRQ_FD.pack(ev["dev"], ev["vector"]),
         members=("dev", "vector", "fds", "late")),
    Kind("set_backend_channel", Request.SET_BACKEND_CHANNEL, _empty, _no_payload,
         members=("fds", "late")),
    Kind("translate_batch", Request.TRANSLATE_BATCH, _dec_raw, _enc_raw, members=("payload",)),
    Kind("dma_batch", Request.DMA_BATCH, _dec_raw, _enc_raw, members=("payload",)),
    Kind("page_request", Request.PAGE_REQUEST, _dec_page_request, _enc_page_request,
         members=("seg", "req", "pasid", "flags", "address", "group")),
)}
_MSG_MEMBERS = ("code", "flags", "size", "payload", "fds", "late")
_BY_CODE: dict[int, Kind] = {k.code: k for k in KINDS.values()}

REQUEST_KINDS = frozenset([*KINDS, "msg"])
"""Event kinds that are requests (a line that starts a new request)."""
EFFECT_KINDS = frozenset(["read", "write", "table", "irq", "atc_inv", "page_resp"])
"""Event kinds a request causes (they follow it)."""
STREAM_KINDS = frozenset(["eof", "end"])


def _reply_members(kind: Kind | None, reply: bytes) -> Fields:
    if len(reply) < m.HEADER_SIZE + m.STATUS.size:
        return {"reply_raw": reply.hex()}  # never made by this daemon; kept whole
    status = m.STATUS.unpack(reply, m.HEADER_SIZE)[0]
    data = reply[m.HEADER_SIZE + m.STATUS.size:]
    out: Fields = {"status": status} if status else {}
    fields = kind.decode_reply(status, data) if kind is not None else None
    if fields is None:
        if data:
            out["reply"] = data.hex()
    else:
        out.update(fields)
    return out


def request_event(message: bytes, fds: tuple[str, ...], late: bool,
                  reply: bytes, regs: dict[str, dict[str, int]] | None) -> Event:
    """The trace line of one request: the whole message as received, its reply, and how it
    changed the registers."""
    code, flags, size = m.HEADER.unpack(message)
    payload = message[m.HEADER_SIZE:]
    kind = _BY_CODE.get(code)
    fields = None
    if kind is not None and flags == m.VERSION and size == len(payload):
        fields = kind.decode(payload)
    ev: Event
    if fields is None:
        kind = None
        ev = {"k": "msg", "code": code, "flags": flags, "size": size, "payload": payload.hex()}
    else:
        assert kind is not None
        ev = {"k": kind.name, **fields}
    if fds:
        ev["fds"] = list(fds)
    if late:
        ev["late"] = True
    # A DMA write's "data" is a request member, a read's a reply member: never both.
    ev.update(_reply_members(kind, reply))
    if regs:
        ev["regs"] = {dev: {name: hex(v) for name, v in delta.items()}
                      for dev, delta in regs.items()}
    return ev


_PACK_MMIO_READ = m.MMIO_READ.codec.pack
_PACK_MMIO_WRITE = m.MMIO_WRITE.codec.pack
_PACK_VALUE = m.MMIO_VALUE.codec.pack
_PACK_DMA = m.DMA.codec.pack
_PACK_HEADER = m.HEADER.codec.pack
_PACK_REPLY_HEAD = m.REPLY_HEAD.pack
_DMA_OK = m.reply(Request.DMA, 0)


def fast_exchange(ev: Event) -> tuple[bytes, bytes] | None:
    """(message, reply) of a successful MMIO or DMA event without fds, built quickly (replay's
    hot path); None for any other event.  The same bytes as ``request_bytes``/``reply_bytes``."""
    k = ev["k"]
    n = len(ev)
    if k == "mmio_read":
        # k, dev, size, off, value (+ regs); any other member (a status, fds, a raw reply)
        # takes the general path
        if (n == 5 or (n == 6 and "regs" in ev)) and "value" in ev:
            return (_MMIO_READ_HEAD + _PACK_MMIO_READ(ev["dev"], ev["size"], int(ev["off"], 16)),
                    _MMIO_READ_OK + _PACK_VALUE(int(ev["value"], 16)))
    elif k == "mmio_write":
        if (n == 5 or (n == 6 and "regs" in ev)) and "status" not in ev:
            return (_MMIO_WRITE_HEAD + _PACK_MMIO_WRITE(ev["dev"], ev["size"],
                                                        int(ev["off"], 16), int(ev["value"], 16)),
                    _MMIO_WRITE_OK)
    elif k == "dma" and n <= 9 and "status" not in ev and "reply" not in ev \
            and "fds" not in ev and "late" not in ev:
        head = _PACK_DMA(ev["req"], _wire_pasid(ev["pasid"]), int(ev["iova"], 16), ev["len"],
                         ev["flags"], ev["seg"])
        data = bytes.fromhex(ev["data"]) if "data" in ev else b""
        if ev["flags"] & 1:  # WRITE: the data is the request's
            return (_PACK_HEADER(Request.DMA, m.VERSION, len(head) + len(data)) + head + data,
                    _DMA_OK)
        return (_PACK_HEADER(Request.DMA, m.VERSION, len(head)) + head,
                _PACK_REPLY_HEAD(Request.DMA, m.REPLY_FLAGS, 8 + len(data), 0, 0) + data)
    return None


def request_bytes(ev: Event) -> tuple[bytes, bytes]:
    """(header, payload) of the message a request event stands for."""
    k = ev["k"]
    if k == "msg":
        payload = bytes.fromhex(ev["payload"])
        return m.HEADER.pack(ev["code"], ev["flags"], ev["size"]), payload
    kind = KINDS[k]
    payload = kind.encode(ev)
    return m.HEADER.pack(kind.code, m.VERSION, len(payload)), payload


def reply_bytes(ev: Event) -> bytes:
    """The whole reply message the request event recorded."""
    if "reply_raw" in ev:
        return bytes.fromhex(ev["reply_raw"])
    k = ev["k"]
    code = ev["code"] if k == "msg" else KINDS[k].code
    status = ev.get("status", 0)
    if "reply" in ev:
        data = bytes.fromhex(ev["reply"])
    elif k == "msg":
        data = b""
    else:
        data = KINDS[k].encode_reply(ev)
    return m.reply(code, status, data)


def describe_reply(ev: Event, reply: bytes) -> Fields:
    """The reply members a request event would carry for ``reply`` (to show a difference)."""
    k = ev["k"]
    return _reply_members(None if k == "msg" else KINDS[k], reply)


def describe(ev: Event) -> str:
    """The request of an event line for a human, without its reply or register members."""
    k = ev["k"]
    names = KINDS[k].members if k in KINDS else _MSG_MEMBERS
    parts = [k]
    for name in names:
        if name not in ev:
            continue
        value = ev[name]
        if isinstance(value, str) and len(value) > 48:
            value = f"{value[:48]}...({len(value) // 2} bytes)"
        parts.append(f"{name}={value}")
    return " ".join(parts)
