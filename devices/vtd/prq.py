"""Page request descriptors and the page request queue.

VT-d rev 5.10 §7.4 (page request handling: the queue at PQA, PQH/PQT, PRS.PPR/PRO, the page
request event through PECTL/PEDATA/PEADDR), §7.5.1 (page request descriptor), §7.7 (page
group responses, written by software as invalidation descriptors: descriptors.PageGroupResponse).
Digest: reference/vtd.md §4c.

Decisions:
- A request that cannot be queued because the queue is full (or PRS.PRO is already set) sets
  PRO and, when it is the last of its group, is answered by the hardware itself with
  Success, so the device retries (§7.4.1 "page request queue overflow").
- A request the remapping hardware cannot accept (translation off, legacy mode, a faulty
  root/context/PASID configuration, PRE = 0) is answered with Invalid Request; a
  configuration fault is also recorded (T2 = 1, "page request"), FPD permitting.
- A request that is not the last of its group and carries no private data needs no
  response when it is not queued (PCIe PRI: responses are per group).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import construct as c

from devices.model import MemoryPort
from devices.regs import RegisterFile

from .layout import Layout, qword
from .regs import PQA, PQH, PQT, PRS

PAGE_REQUEST_SIZE = 32
TYPE_PAGE_REQUEST = 1


class PageRequest(NamedTuple):
    """§7.5.1 (page_req_dsc)."""

    PM: int
    EXE: int
    PASID: int
    RID: int
    PDP: int
    PP: int
    TYPE: int
    ADDR: int
    PRGI: int
    LPIG: int
    WRR: int
    RDR: int
    PRIV0: int
    PRIV1: int


PAGE_REQUEST = Layout("page request", [
    qword(c.Padding(10), "PM" / c.Flag, "EXE" / c.Flag, "PASID" / c.BitsInteger(20),
          "RID" / c.BitsInteger(16), c.Padding(6), "PDP" / c.Flag, "PP" / c.Flag,
          "TYPE" / c.BitsInteger(8)),
    qword("ADDR" / c.BitsInteger(52), "PRGI" / c.BitsInteger(9), "LPIG" / c.Flag,
          "WRR" / c.Flag, "RDR" / c.Flag),
    qword("PRIV0" / c.BitsInteger(64)),
    qword("PRIV1" / c.BitsInteger(64)),
], PageRequest)


class PageRequestResult(enum.IntEnum):
    """What the remapping hardware did with a device's page request."""

    QUEUED = 0
    """Written to the page request queue; software answers with a page group response."""
    AUTO_SUCCESS = 1
    """Queue full (PRO): answered Success by the hardware so the device retries."""
    AUTO_INVALID = 2
    """Refused (fault or page requests not enabled): answered Invalid Request."""
    DROPPED = 3
    """Not queued, and the request needs no response (not the last of its group)."""


@dataclass(frozen=True, slots=True)
class PageResponse:
    """A page group response on its way to the device (from software or the hardware)."""

    requester: int
    pasid: int | None
    group_index: int
    code: int
    private_data: tuple[int, int] | None = None


def queue_entries(pqs: int) -> int:
    """Entries in a page request queue of 2^PQS pages."""
    return (4096 << pqs) // PAGE_REQUEST_SIZE


class PageRequestQueue:
    """The hardware's side of the page request queue (§7.4.1): write at PQT, advance it."""

    def __init__(self, regs: RegisterFile, raise_event: Callable[[], None]) -> None:
        self.regs = regs
        self.raise_event = raise_event

    def push(self, mem: MemoryPort, request: PageRequest) -> bool:
        """Queue one request; False when it could not be (PRS.PRO is then set)."""
        regs = self.regs
        prs = regs["PRS"]
        quiet = not prs & (PRS.PPR.mask | PRS.PRO.mask)
        if PRS.PRO.get(prs):
            return False
        pqa = regs["PQA"]
        size = queue_entries(PQA.PQS.get(pqa)) * PAGE_REQUEST_SIZE
        # Offsets beyond the queue (software's mistake) wrap, so the slot is inside it.
        tail = (regs["PQT"] & PQT.PQT.mask) % size
        head = (regs["PQH"] & PQH.PQH.mask) % size
        nxt = (tail + PAGE_REQUEST_SIZE) % size
        if nxt == head or not mem.write((PQA.PQA.get(pqa) << 12) + tail,
                                        PAGE_REQUEST.encode(request)):
            regs["PRS"] = prs | PRS.PRO.mask
            if quiet:
                self.raise_event()
            return False
        regs["PQT"] = nxt
        regs["PRS"] = prs | PRS.PPR.mask
        if quiet:
            self.raise_event()
        return True
