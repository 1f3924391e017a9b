"""Nested translation: a stage-1 regime whose tables and output live in an IPA space that a
stage-2 regime translates.

Spec: Arm ARM D8 ("Stage 2 translation", the stage-2 translation of stage-1 table walks)
and SMMUv3 (IHI 0070) §3.3.2 (STE.Config = 0b111), where a stage-2 fault on a stage-1
table access is reported with S2 = 1 and PTW = 1 (§7.3 event records); Intel VT-d §3.8
"Nested Translation" (PGTT = 011), where every first-stage table access and the final
output go through the second stage.

Every stage-1 table address is translated by stage 2 before it is read (``walk_tables``
does that when handed a stage 2); then the stage-1 output, an IPA, goes through stage 2
with the request's access.  The result is the combination: the smaller of the two page
sizes, the AND of the permissions, the stage-1 level and leaf.
"""

from __future__ import annotations

from devices.model import MemoryPort

from .walker import ACCESS_PRIV, Fault, Stage1Walker, Translation, Walker


class Nested:
    """Stage 1 through stage 2.  Faults keep the stage that raised them; a stage-2 fault
    carries the IPA, and ``s1ptw`` when it hit a stage-1 table access."""

    __slots__ = ("s1", "s2", "stage")

    def __init__(self, s1: Stage1Walker, s2: Walker) -> None:
        self.s1 = s1
        self.s2 = s2
        self.stage = 1

    def walk(self, mem: MemoryPort, ia: int, access: int) -> Translation | Fault:
        t1 = self.s1.walk(mem, ia, access, self.s2)
        if isinstance(t1, Fault):
            return t1
        ipa = t1.oa
        t2 = self.s2.walk(mem, ipa, access)
        if isinstance(t2, Fault):
            return t2._replace(ipa=ipa)
        priv = t1.priv_perm & t2.priv_perm
        user = t1.user_perm & t2.user_perm
        return Translation(
            t2.oa, min(t1.size, t2.size), t1.level, priv if access & ACCESS_PRIV else user,
            priv, user, t1.attrs | t2.attrs, t1.pte, t1.pte_addr,
        )
