"""The fuzzer's oracles: what must hold after every step, and how a violation is reported.

Each oracle turns what it sees into a ``Failure`` carrying a short ``kind`` (used to tell one
bug from another during minimization) and a message.  Whose fault: a ``Failure`` always
means the project under test broke a rule; the fuzzer's own mistakes are ordinary exceptions.

- ``check_reply``: a reply is one well-formed message (protocol.md "Replies"): the request's
  code, flags = VERSION | REPLY, a size that accounts for the bytes, status 0 or a negative
  errno the request may answer, and reply data of the size the request defines — including
  the fault record of DMA/TRANSLATE and the TRANSLATE result's alignment and permissions.
- ``WorkExceeded`` / ``Hang``: raised *inside* a step (by the memory observer or the
  watchdog signal) so that a runaway loop stops; both derive from ``BaseException`` so a
  model's ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

import errno as E
import struct

from protocols import messages as m
from protocols.messages import Request

_REPLY_HEAD = struct.Struct("<IIIiI")
_U64 = struct.Struct("<Q")
_FAULT = m.FAULT_RECORD.codec
_TRANSLATED = m.TRANSLATE_RESULT.codec

KIND_MAX = 8
NO_STAGE_KINDS = frozenset({5, 7, 8})
"""Fault kinds whose ``stage`` is always 0 (protocol.md, "DMA and TRANSLATE")."""


class Failure(Exception):
    """An oracle saw the project break a rule.  ``kind`` classifies it, ``detail`` says how."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class WorkExceeded(BaseException):  # noqa: N818 - a stop signal, named for what happened
    """A step made more guest-memory accesses than its bound (raised mid-step)."""


class Hang(BaseException):  # noqa: N818
    """A step ran longer than the watchdog allows (raised from SIGALRM mid-step)."""


_COMMON = {0, -E.EINVAL, -E.ENODEV, -E.ENOSYS}
ALLOWED_STATUS: dict[int, frozenset[int]] = {
    code: frozenset(_COMMON | extra) for code, extra in {
        Request.GET_FEATURES: set(),
        Request.SET_FEATURES: set(),
        Request.GET_CONFIG: set(),
        Request.SET_MEM_TABLE: set(),
        Request.ADD_MEM_REG: set(),
        Request.REM_MEM_REG: {-E.ENOENT},
        Request.RESET: set(),
        Request.MMIO_READ: set(),
        Request.MMIO_WRITE: set(),
        Request.DMA: {-E.EFAULT},
        Request.TRANSLATE: {-E.EFAULT},
        Request.SET_IRQ_FD: set(),
        Request.SET_BACKEND_CHANNEL: set(),
        Request.TRANSLATE_BATCH: set(),
        Request.DMA_BATCH: set(),
        Request.PAGE_REQUEST: set(),
    }.items()
}
"""Statuses a request may answer; PV_IOMMU_OP answers any negative errno its op returns."""


def _fail(what: str, detail: str) -> Failure:
    """A malformed reply; ``what`` names the rule, so distinct bugs stay distinct kinds."""
    return Failure(f"reply:{what}", detail)


def split_reply(reply: bytes) -> tuple[int, int, int, bytes]:
    """(code, flags, status, data) of exactly one reply message; ``Failure`` otherwise."""
    if len(reply) < _REPLY_HEAD.size:
        raise _fail("short", f"reply of {len(reply)} bytes is shorter than a header and status")
    code, flags, size, status, reserved = _REPLY_HEAD.unpack_from(reply)
    if size + m.HEADER_SIZE != len(reply):
        raise _fail("size", f"reply size field {size} but {len(reply) - m.HEADER_SIZE} payload bytes "
                    "(not exactly one reply)")
    if flags != m.REPLY_FLAGS:
        raise _fail("flags", f"reply flags {flags:#x}, expected {m.REPLY_FLAGS:#x}")
    if reserved:
        raise _fail("reserved", f"reply reserved word {reserved:#x}")
    return code, flags, status, reply[_REPLY_HEAD.size :]


def check_fault_record(data: bytes, *, translate: bool, iova: int, length: int) -> tuple[int, int, int]:
    """The fault record of a -EFAULT reply; returns (kind, code, stage)."""
    if len(data) != _FAULT.size:
        raise _fail("fault-size", f"fault reply with {len(data)} bytes of data, expected {_FAULT.size}")
    kind, code, address, stage, reserved = _FAULT.unpack(data)
    if not 1 <= kind <= KIND_MAX:
        raise _fail("fault-kind", f"fault kind {kind}")
    if stage not in (0, 1, 2) or reserved:
        raise _fail("fault-stage", f"fault stage {stage} / reserved {reserved:#x}")
    if kind in NO_STAGE_KINDS and stage:
        raise _fail("fault-stage", f"fault kind {kind} with stage {stage} (must be 0)")
    if kind == 8 and (translate or code):
        raise _fail("fault-kind8", "kind 8 (no memory) " + ("from TRANSLATE" if translate else f"with code {code}"))
    if not iova <= address < iova + length:
        raise _fail("fault-address", f"fault address {address:#x} outside the access [{iova:#x}, +{length:#x})")
    return kind, code, stage


def check_translation(data: bytes, iova: int, flags: int) -> tuple[int, int, int]:
    """A successful TRANSLATE's data; returns (address, size, perms)."""
    if len(data) != _TRANSLATED.size:
        raise _fail("translate-size", f"TRANSLATE reply with {len(data)} bytes of data")
    address, size, perms, reserved = _TRANSLATED.unpack(data)
    if reserved or perms & ~7:
        raise _fail("translate-perms", f"TRANSLATE perms {perms:#x} / reserved {reserved:#x}")
    if size < 4096 or size & (size - 1):
        raise _fail("translate-block", f"TRANSLATE size {size:#x} is not a power of two >= 4 KiB")
    if (address ^ iova) & (size - 1):
        raise _fail("translate-congruence", f"TRANSLATE {iova:#x} -> {address:#x} not congruent within its {size:#x} block")
    want = (2 if flags & m.DmaFlag.WRITE else 1) | (4 if flags & m.DmaFlag.EXECUTE else 0)
    if want & ~perms:
        raise _fail("translate-perms", f"TRANSLATE granted perms {perms:#x} for an access needing {want:#x}")
    return address, size, perms


def check_reply(request: int, reply: bytes) -> tuple[int, bytes]:
    """The header, flags and status rules common to every reply; returns (status, data)."""
    code, _, status, data = split_reply(reply)
    if code != request:
        raise _fail("code", f"reply code {code} to request {request}")
    if status > 0:
        raise _fail("status", f"positive status {status}")
    if request == Request.PV_IOMMU_OP:
        if status and -status not in E.errorcode:
            raise _fail("pv-status", f"PV_IOMMU_OP status {status} is not an errno")
        return status, data
    allowed = ALLOWED_STATUS.get(request)
    if allowed is not None and status not in allowed:
        raise _fail("status", f"request {request} answered status {status}")
    if status not in (0, -E.EFAULT) and data:
        raise _fail("error-data", f"error reply {status} carries {len(data)} bytes of data")
    return status, data


def check_mmio_read(data: bytes, size: int) -> int:
    if len(data) != 8:
        raise _fail("mmio-read-size", f"MMIO_READ reply with {len(data)} bytes of data")
    (value,) = _U64.unpack(data)
    if value >> (8 * size):
        raise _fail("mmio-read-value", f"MMIO_READ of {size} bytes answered {value:#x}")
    return int(value)
