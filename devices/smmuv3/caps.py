"""What an SMMU instance implements, decoded once from its ID registers (IHI 0070 §6.3.1-6.3.6).

Structure validity (STE, CD, commands) depends on these: a field that selects an
unimplemented feature makes the structure ILLEGAL.  Decoding from the register values (not
from the device options) keeps one source of truth: the values the guest reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.pagetable.arm import PS_BITS

from . import regs as r


@dataclass(frozen=True, slots=True)
class Caps:
    s1p: bool
    s2p: bool
    oas: int
    """Output address size in bits (IDR5.OAS); also the IAS, as AArch32 tables are absent."""
    ssidsize: int
    sidsize: int
    cd2l: bool
    ats: bool
    ns1ats: bool
    pri: bool
    msi: bool
    sev: bool
    hyp: bool
    httu: int
    stall_model: int
    term_model: bool
    ttf_aarch32: bool
    ttendian: int
    asid16: bool
    vmid16: bool
    had: bool
    ril: bool
    dpt: bool
    gran4k: bool
    gran16k: bool
    gran64k: bool

    @property
    def ias(self) -> int:
        """IAS = OAS without AArch32 tables (§3.4)."""
        return max(40, self.oas) if self.ttf_aarch32 else self.oas

    def granule_ok(self, granule: int) -> bool:
        return {4096: self.gran4k, 16384: self.gran16k, 65536: self.gran64k}.get(granule, False)

    def eff_ps(self, code: int) -> int:
        """Effective CD.IPS / STE.S2PS in bits: capped to the OAS, reserved codes too
        (§5.2 S2PS, §5.4 IPS: "behaves as though this field equals the cap")."""
        return min(PS_BITS.get(code, 52), self.oas)

    @classmethod
    def from_idrs(cls, idr0: int, idr1: int, idr3: int, idr5: int) -> Caps:
        return cls(
            s1p=bool(r.IDR0.S1P.get(idr0)), s2p=bool(r.IDR0.S2P.get(idr0)),
            oas=PS_BITS.get(r.IDR5.OAS.get(idr5), 48),
            ssidsize=r.IDR1.SSIDSIZE.get(idr1), sidsize=r.IDR1.SIDSIZE.get(idr1),
            cd2l=bool(r.IDR0.CD2L.get(idr0)), ats=bool(r.IDR0.ATS.get(idr0)),
            ns1ats=bool(r.IDR0.NS1ATS.get(idr0)), pri=bool(r.IDR0.PRI.get(idr0)),
            msi=bool(r.IDR0.MSI.get(idr0)), sev=bool(r.IDR0.SEV.get(idr0)),
            hyp=bool(r.IDR0.HYP.get(idr0)), httu=r.IDR0.HTTU.get(idr0),
            stall_model=r.IDR0.STALL_MODEL.get(idr0), term_model=bool(r.IDR0.TERM_MODEL.get(idr0)),
            ttf_aarch32=bool(r.IDR0.TTF.get(idr0) & 1), ttendian=r.IDR0.TTENDIAN.get(idr0),
            asid16=bool(r.IDR0.ASID16.get(idr0)), vmid16=bool(r.IDR0.VMID16.get(idr0)),
            had=bool(r.IDR3.HAD.get(idr3)), ril=bool(r.IDR3.RIL.get(idr3)),
            dpt=bool(r.IDR3.DPT.get(idr3)),
            gran4k=bool(r.IDR5.GRAN4K.get(idr5)), gran16k=bool(r.IDR5.GRAN16K.get(idr5)),
            gran64k=bool(r.IDR5.GRAN64K.get(idr5)),
        )
