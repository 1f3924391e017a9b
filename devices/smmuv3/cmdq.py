"""The command queue consumer and what each command does (Arm IHI 0070 §4, §7.1).

Consumption (§4.1.2, §7.1): only with CR0.CMDQEN = 1 and CMDQ_ERR inactive; commands from
CONS up to PROD, each completing before CONS moves past it (so a CMD_SYNC has completed
everything before it when it is reached, and its MSI is written before CONS passes it —
which is what Linux's MSIPOLL relies on).  A command that cannot be read is CERROR_ABT, a
malformed one CERROR_ILL (``commands.decode``): CONS stays on it, CMDQ_CONS.ERR says why and
GERROR.CMDQ_ERR is activated; consumption resumes when software acknowledges through
GERRORN (the device calls ``run`` again).  Work per call is bounded by the queue: at most
2^(LOG2SIZE+1) - 1 entries, the most an inconsistent PROD/CONS pair can describe.

CERROR_ATC_INV_SYNC (§4.7.3, §7.1): a CMD_ATC_INV whose invalidation the Env could not
deliver (no back-end channel took it) will never complete, so the next CMD_SYNC fails: CONS
stays on the CMD_SYNC, no completion signal is sent, GERROR.CMDQ_ERR is activated.  The
timed-out invalidations are then no longer outstanding, so the CMD_SYNC that Linux resubmits
in place (``arm_smmu_cmdq_skip_err`` leaves it there and acknowledges GERRORN) completes.

Command effects:
* CMD_CFGI_*: drop cached configuration (``config.ConfigCache``) and the host contexts built
  from it.  StreamIDs beyond IDR1.SIDSIZE are out of range: no effect (§4.1.7).
* CMD_TLBI_*: host invalidations, scoped by VMID (ignored without stage 2, §4.4.2), ASID,
  address range (IDR3.RIL: ``devices.ranges.arm_tlbi_range``; TTL is only a hint, and
  over-invalidation is allowed) — see ``_tlbi``.
* CMD_ATC_INV, CMD_PRI_RESP: messages to the device; IGNORED while SMMUEN = 0 (§4.5).
* CMD_PREFETCH_CONFIG: fetch the STE into the configuration cache (errors not recorded,
  §7.2); CMD_PREFETCH_ADDR: nothing (a hint).
* CMD_SYNC: SIG_IRQ writes MSIData to MSIAddress when it is non-zero and asserts the wired
  "cmdq-sync" line either way (§4.7.3: "regardless of the value of MSIAddress"); SIG_SEV is
  SIG_NONE without IDR0.SEV.  An aborted MSI write activates GERROR.MSI_CMDQ_ABT_ERR; the
  CMD_SYNC is complete all the same (§4.7.3: prior MSIs are "visible ... or aborted and
  reported") and CONS moves past it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from devices.model import HostPort
from devices.ranges import arm_tlbi_range

from . import commands as c
from . import regs as r
from .commands import Command, Op
from .config import HostContext
from .queues import Queue

if TYPE_CHECKING:
    from .device import SMMUv3

NO_PASID = 0xFFFF_FFFF
_ALL = 1 << 64
ATC_ALL_SIZE = (1 << 64) - 1
"""ATC_INVALIDATE size meaning "everything" (2^64 does not fit the message's u64)."""


class CommandProcessor:
    """Consumes one SMMU's command queue."""

    def __init__(self, dev: SMMUv3) -> None:
        self.dev = dev
        self.handlers: dict[Op, Callable[[Command], None]] = {
            Op.PREFETCH_CONFIG: self._prefetch_config,
            Op.PREFETCH_ADDR: lambda cmd: None,
            Op.CFGI_STE: self._cfgi_ste,
            Op.CFGI_STE_RANGE: self._cfgi_ste_range,
            Op.CFGI_CD: self._cfgi_cd,
            Op.CFGI_CD_ALL: self._cfgi_cd_all,
            Op.TLBI_NH_ALL: self._tlbi,
            Op.TLBI_NH_ASID: self._tlbi,
            Op.TLBI_NH_VA: self._tlbi,
            Op.TLBI_NH_VAA: self._tlbi,
            Op.TLBI_S12_VMALL: self._tlbi,
            Op.TLBI_S2_IPA: self._tlbi,
            Op.TLBI_NSNH_ALL: self._tlbi,
            Op.ATC_INV: self._atc_inv,
            Op.PRI_RESP: self._pri_resp,
            Op.SYNC: self._sync,
        }
        self.executed = 0
        """Commands consumed since reset (introspection and tests)."""
        self.atc_inv_timed_out = False
        """A CMD_ATC_INV since the last CMD_SYNC could not be delivered (§4.7.3)."""

    # -- consumption -----------------------------------------------------------------------

    def run(self) -> None:
        dev = self.dev
        regs = dev.regs
        if not regs.get("CR0ACK", "CMDQEN") or dev.gerror_active & r.GERROR.CMDQ_ERR.mask:
            return
        base = regs["CMDQ_BASE"]
        q = Queue.from_base(r.CMDQ_BASE.ADDR.get(base) << 5, r.CMDQ_BASE.LOG2SIZE.get(base),
                            c.CMD_SIZE)
        prod = q.ptr(regs["CMDQ_PROD"])
        cons = q.ptr(regs["CMDQ_CONS"])
        mem = dev.env.memory
        features = dev.command_features
        for _ in range(q.used(prod, cons)):
            raw = mem.read(q.address(cons), c.CMD_SIZE)
            if raw is None:
                self._error(cons, r.CMDQ_CONS_ERR_CERROR_ABT)
                return
            cmd = c.decode(raw, features)
            if isinstance(cmd, str):
                dev.log_guest_error("CERROR_ILL at CMDQ index %d: %s", cons, cmd)
                self._error(cons, r.CMDQ_CONS_ERR_CERROR_ILL)
                return
            if cmd.op == Op.SYNC and self.atc_inv_timed_out:
                self.atc_inv_timed_out = False  # those invalidations will never complete
                dev.log_guest_error("CERROR_ATC_INV_SYNC at CMDQ index %d", cons)
                self._error(cons, r.CMDQ_CONS_ERR_CERROR_ATC_INV_SYNC)
                return
            self.handlers[cmd.op](cmd)
            self.executed += 1
            cons = q.next(cons)
            self._set_cons(cons)

    def _set_cons(self, cons: int, err: int | None = None) -> None:
        regs = self.dev.regs
        value = regs["CMDQ_CONS"]
        if err is not None:
            value = (value & ~r.CMDQ_CONS.ERR.mask) | r.CMDQ_CONS.ERR.prep(err)
        regs["CMDQ_CONS"] = (value & ~r.CMDQ_CONS.RD.mask) | r.CMDQ_CONS.RD.prep(cons)

    def _error(self, cons: int, err: int) -> None:
        self._set_cons(cons, err)
        self.dev.raise_gerror(r.GERROR.CMDQ_ERR)

    # -- configuration invalidation (§4.3) -------------------------------------------------

    def _sid_in_range(self, sid: int) -> bool:
        return not sid >> self.dev.caps.sidsize

    def _drop_streams(self, first: int, last: int) -> None:
        dev = self.dev
        dev.cache.drop_streams(first, last)
        dev.pool.free_streams(lambda sid: first <= sid <= last)

    def _cfgi_ste(self, cmd: Command) -> None:
        sid = cmd["StreamID"]
        if self._sid_in_range(sid):
            self._drop_streams(sid, sid)

    def _cfgi_ste_range(self, cmd: Command) -> None:
        span = 1 << (cmd["Range"] + 1)
        first = cmd["StreamID"] & ~(span - 1)
        self._drop_streams(first, first + span - 1)

    def _cfgi_cd(self, cmd: Command) -> None:
        sid = cmd["StreamID"]
        if self._sid_in_range(sid):
            self.dev.cache.drop_cd(sid, cmd["SubstreamID"])

    def _cfgi_cd_all(self, cmd: Command) -> None:
        sid = cmd["StreamID"]
        if self._sid_in_range(sid):
            self.dev.cache.drop_cd(sid, None)

    def _prefetch_config(self, cmd: Command) -> None:
        sid = cmd["StreamID"]
        dev = self.dev
        if dev.smmu_enabled and self._sid_in_range(sid) and dev.cache.stream(sid) is None:
            dev.translator.load_stream(sid, dev.stream_table())

    # -- TLB invalidation (§4.4) -----------------------------------------------------------

    def _tlbi(self, cmd: Command) -> None:
        dev = self.dev
        host: HostPort = dev.env.host
        op = cmd.op
        vmid = cmd["VMID"] if cmd.has("VMID") else None
        match_vmid = dev.caps.s2p and vmid is not None
        start, size = 0, _ALL
        if cmd.has("Address"):
            start, size = arm_tlbi_range(cmd["Address"] << 12, tg=cmd["TG"],
                                         scale=cmd["SCALE"], num=cmd["NUM"], ttl=cmd["TTL"])

        def chosen(hc: HostContext) -> bool:
            return not match_vmid or hc.vmid == vmid

        for hc in dev.pool:
            if op == Op.TLBI_NSNH_ALL or (op == Op.TLBI_S12_VMALL and chosen(hc)):
                _drop_all(host, hc)
            elif op == Op.TLBI_S2_IPA:
                if hc.s2 and chosen(hc):
                    # A shadow context's blocks are keyed by IOVA: any IPA may be behind any.
                    if hc.shadow:
                        _drop_all(host, hc)
                    else:
                        host.invalidate_s2(hc.ctx, start, size)
            elif hc.s1 and chosen(hc):
                if hc.shadow:
                    _tlbi_nh_shadow(host, hc, cmd, start, size)
                else:
                    _tlbi_nh_nested(host, hc, cmd, start, size)

    # -- ATS and PRI (§4.5) ----------------------------------------------------------------

    def _atc_inv(self, cmd: Command) -> None:
        dev = self.dev
        if not dev.smmu_enabled:
            return
        size_code = cmd["Size"]
        if size_code >= c.ATC_INV_SIZE_ALL:
            address, size = 0, ATC_ALL_SIZE
        else:
            size = 4096 << size_code
            address = (cmd["Address"] << 12) & ~(size - 1)
        ssv = cmd["SSV"] and dev.caps.ssidsize
        pasid = cmd["SubstreamID"] if ssv else NO_PASID
        if not dev.env.atc_invalidate(cmd["StreamID"], pasid, address, size):
            self.atc_inv_timed_out = True

    def _pri_resp(self, cmd: Command) -> None:
        dev = self.dev
        if not dev.smmu_enabled:
            return
        ssv = cmd["SSV"] and dev.caps.ssidsize
        dev.send_pri_response(cmd["StreamID"], cmd["SubstreamID"] if ssv else None,
                              cmd["PRGIndex"], cmd["Resp"])

    # -- synchronization (§4.7.3) ----------------------------------------------------------

    def _sync(self, cmd: Command) -> None:
        dev = self.dev
        if cmd["CS"] != c.CS_SIG_IRQ:
            return  # SIG_NONE; SIG_SEV sends nothing without IDR0.SEV
        address = cmd["MSIAddress"] << 2
        if address and dev.caps.msi and not dev.env.msi(r.IRQ_CMD_SYNC, address,
                                                        cmd["MSIData"]):
            dev.raise_gerror(r.GERROR.MSI_CMDQ_ABT_ERR)
        dev.env.irq(r.IRQ_CMD_SYNC)


def _drop_all(host: HostPort, hc: HostContext) -> None:
    host.invalidate_s2(hc.ctx)
    host.invalidate(hc.ctx)
    if hc.log is not None:
        hc.log.clear()


def _tlbi_nh_nested(host: HostPort, hc: HostContext, cmd: Command, start: int,
                    size: int) -> None:
    """Stage-1 invalidation of a context with bound tables: the host's IOTLB knows ASIDs
    and global entries (TLBI_NH_ASID spares globals, TLBI_NH_VA hits them for any ASID)."""
    op = cmd.op
    if op == Op.TLBI_NH_ASID:
        host.invalidate(hc.ctx, asid=cmd["ASID"], keep_global=True)
    elif op == Op.TLBI_NH_VA:
        host.invalidate(hc.ctx, asid=cmd["ASID"], iova=start, size=size, global_any_asid=True)
    elif op == Op.TLBI_NH_VAA:
        host.invalidate(hc.ctx, iova=start, size=size)
    else:  # TLBI_NH_ALL
        host.invalidate(hc.ctx)


def _tlbi_nh_shadow(host: HostPort, hc: HostContext, cmd: Command, start: int,
                    size: int) -> None:
    """The same scopes for a shadow context: one CD (one ASID) per context, its filled
    blocks' globalness in its ``ShadowLog``."""
    log = hc.log
    if log is None or hc.cd is None:
        _drop_all(host, hc)
        return
    op = cmd.op
    mine = cmd.has("ASID") and cmd["ASID"] == hc.cd[1].asid
    if op == Op.TLBI_NH_ALL or (op == Op.TLBI_NH_ASID and mine and log.overflow):
        _drop_all(host, hc)
    elif op == Op.TLBI_NH_ASID:
        if mine:
            for base, bsize in log.take(is_global=False):
                host.invalidate_s2(hc.ctx, base, bsize)
    elif op == Op.TLBI_NH_VAA or mine or log.overflow:
        host.invalidate_s2(hc.ctx, start, size)
        log.take(is_global=True, start=start, size=size)
        log.take(is_global=False, start=start, size=size)
    else:  # TLBI_NH_VA of another ASID: only global entries in the range
        for base, bsize in log.take(is_global=True, start=start, size=size):
            host.invalidate_s2(hc.ctx, base, bsize)
