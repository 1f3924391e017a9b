"""PRI queue entries (Arm IHI 0070 chapter 8): the 16-byte page request record.

Fields (chapter 8 figure; Linux ``PRIQ_0_*``/``PRIQ_1_*`` agree): dw0 StreamID[31:0],
SubstreamID[51:32], Priv[58], X[59], R[60], W[61], Last[62], SSV[63]; dw1 PRGIndex[8:0],
Page address[63:12].  When SSV = 0, X and Priv are 0 (chapter 8).

Automatic responses (§8.1, §8.2) use the PCIe Response Codes; the back-end channel carries
them in CMD_PRI_RESP's Resp encoding (protocols/protocol.md PAGE_RESPONSE): Success 2,
Response Failure 0.
"""

from __future__ import annotations

from .layout import Layout, dword, f, rsvd

PRIQ_ENTRY_SIZE = 16

PRIQ_ENTRY = Layout(
    "PRIQ entry",
    dword(f("SSV", 1), f("Last", 1), f("W", 1), f("R", 1), f("X", 1), f("Priv", 1), rsvd(6),
          f("SubstreamID", 20), f("StreamID", 32)),
    dword(f("Address", 52), rsvd(3), f("PRGIndex", 9)),
)

PRG_INDEX_MAX = (1 << 9) - 1
