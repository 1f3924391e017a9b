"""Page-table formats and the one walker over them (DESIGN.md, "Walkers").

A configured regime has ``walk(mem, ia, access) -> Translation | Fault``:

* ``ArmS1Config`` (with one ``ArmS1Table`` per TTB half) and ``ArmS2Config``: Arm VMSAv8-64;
* ``X86FirstStage``: VT-d first stage (x86-64 4/5-level paging);
* ``VtdSecondStage``: VT-d second stage;
* ``Nested(s1, s2)``: any stage 1 through any stage 2.

``access`` is ``ACCESS_R | ACCESS_W | ACCESS_X`` bits plus ``ACCESS_PRIV``; 0 asks for a
lookup without permission check or hardware A/D updates.  ``builders`` writes tables into
guest memory as a driver would; ``reference`` is the brute-force model tests compare with.
"""

from .arm import ArmS1Config, ArmS1Table, ArmS2Config, BadConfig
from .nested import Nested
from .vtdss import VtdSecondStage
from .walker import (
    ACCESS_PRIV,
    ACCESS_R,
    ACCESS_W,
    ACCESS_X,
    Attr,
    Fault,
    Reason,
    Stage1Walker,
    Translation,
    Walker,
)
from .x86 import X86FirstStage

__all__ = [
    "ACCESS_PRIV", "ACCESS_R", "ACCESS_W", "ACCESS_X", "ArmS1Config", "ArmS1Table",
    "ArmS2Config", "Attr", "BadConfig", "Fault", "Nested", "Reason", "Stage1Walker",
    "Translation", "VtdSecondStage", "Walker", "X86FirstStage",
]
