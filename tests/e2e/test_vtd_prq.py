"""Page requests end to end (VT-d §7.4-§7.7): a device's PAGE_REQUEST lands in the page
request queue with the spec's descriptor layout, raises the page-request event, and the guest's
page group response descriptor reaches the device as a PAGE_RESPONSE; overflow, PRE = 0 and
legacy mode are answered by the hardware itself.
"""

from __future__ import annotations

import struct

from protocols import messages as m
from tests.e2e.vtd_helpers import MSI_ADDR, SID, VECTOR_PAGE_REQUEST, Guest, GuestFactory
from vmm.drivers import vtd as d

PRI = ("scalable-mode=on", "pasid-bits=20", "device-iotlb=on", "pri=on")
READ, WRITE, EXEC, PRIV, LAST = 1, 2, 4, 8, 16


async def _guest(vtd_guest: GuestFactory, *, pre: bool = True, pqs: int = 0) -> Guest:
    g = await vtd_guest(*PRI)
    drv = g.drv
    assert (await drv.bring_up()).ok
    assert await drv.read(d.ECAP, 8) & d.ECAP_PRS
    await drv.sm_context(SID, pre=pre, dte=True)
    queue = g.ram.alloc(4096 << pqs, 4096)
    await drv.write(d.PQH, 0, 8)
    await drv.write(d.PQT, 0, 8)
    await drv.write(d.PQA, queue | pqs, 8)
    await drv.write(d.PEDATA, 0x77)
    await drv.write(d.PEADDR, MSI_ADDR)
    await drv.write(d.PECTL, 0)
    return g


async def page_request(g: Guest, address: int, flags: int, group: int,
                       pasid: int | None = None, sid: int = SID) -> int:
    payload = m.PAGE_REQUEST.pack(0, 0, sid, m.NO_PASID if pasid is None else pasid, flags,
                                  address, group, 0)
    reply = await g.client.call(m.Request.PAGE_REQUEST, payload)
    return reply.status


async def responses(g: Guest) -> list[tuple[int, int, int, int]]:
    return [(e.fields["requester"], e.fields["pasid"], e.fields["group"], e.fields["code"])
            for e in await g.events() if e.code == m.BackendMessage.PAGE_RESPONSE]


async def test_page_request_is_queued_with_the_spec_layout(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    assert await page_request(g, 0x1234_5000, WRITE | PRIV | LAST, 0x1AB, pasid=9) == 0
    queue = (await g.drv.read(d.PQA, 8)) & ~0xFFF
    qw0, qw1, qw2, qw3 = struct.unpack("<4Q", g.ram.read(queue, 32))
    assert qw0 & 0xFF == 1  # type: page request
    assert (qw0 >> 8 & 1, qw0 >> 16 & 0xFFFF, qw0 >> 32 & 0xFFFFF) == (1, SID, 9)
    assert (qw0 >> 52 & 1, qw0 >> 53 & 1) == (0, 1)  # EXE, PM
    assert (qw1 & 1, qw1 >> 1 & 1, qw1 >> 2 & 1) == (0, 1, 1)  # RDR, WRR, LPIG
    assert (qw1 >> 3 & 0x1FF, qw1 & ~0xFFF) == (0x1AB, 0x1234_5000)
    assert (qw2, qw3) == (0, 0)
    assert await g.drv.read(d.PQT, 8) == 0x20
    assert await g.drv.read(d.PRS) == 1  # PPR
    irqs = await g.irqs(VECTOR_PAGE_REQUEST)
    assert [(i["msi_address"], i["msi_data"]) for i in irqs] == [(MSI_ADDR, 0x77)]


async def test_page_group_response_reaches_the_device(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    await page_request(g, 0x5000, READ, 3, pasid=4)
    await page_request(g, 0x6000, READ | LAST, 3, pasid=4)
    await g.drv.write(d.PQH, 0x40, 8)  # software consumed both
    await g.drv.write(d.PRS, 1)
    assert await g.drv.qi_sync(d.page_group_response(SID, 3, 0, pasid=4),
                               d.page_group_response(SID, 8, 0xF))
    assert await responses(g) == [(SID, 4, 3, 0), (SID, m.NO_PASID, 8, 0xF)]
    model_responses = [(r.requester, r.pasid, r.group_index, r.code)
                       for r in _model(g).page_responses]
    assert model_responses == [(SID, 4, 3, 0), (SID, None, 8, 0xF)]


def _model(g: Guest) -> object:
    import gc

    from devices.vtd.device import VTd
    from vmm.guest import ModelEnv

    # Only models living in a daemon session: unit tests leave VTd objects on other Envs.
    return [o for o in gc.get_objects() if isinstance(o, VTd) and isinstance(o.env, ModelEnv)
            and o.env.memory.contains(g.ram.gpa, 4096)][-1]


async def test_full_queue_sets_pro_and_hardware_answers_success(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    entries = 4096 // 32
    for i in range(entries - 1):
        assert await page_request(g, 0x1000 * i, READ, i & 0x1FF) == 0
    assert await g.drv.read(d.PRS) == 1
    await page_request(g, 0x9000, READ, 5)  # not the last of its group: no answer
    await page_request(g, 0xA000, READ | LAST, 6)
    assert await g.drv.read(d.PRS) == 3  # PRO | PPR
    assert await responses(g) == [(SID, m.NO_PASID, 6, 0)]
    assert await g.drv.read(d.PQT, 8) == (entries - 1) * 32
    # Software drains the queue and clears PRO: requests are queued again.
    await g.drv.write(d.PQH, (entries - 1) * 32, 8)
    await g.drv.write(d.PRS, 3)
    await page_request(g, 0xB000, READ | LAST, 7)
    assert await g.drv.read(d.PQT, 8) == 0  # wrapped


async def test_page_request_with_pre_clear_faults_0x47(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest, pre=False)
    await page_request(g, 0x5000, READ | LAST, 2, pasid=3)
    assert await responses(g) == [(SID, 3, 2, 1)]  # Invalid Request
    lo, hi = await g.frcd()
    assert lo == 0x5000
    assert (hi >> 32 & 0xFF, hi >> 28 & 1, hi >> 62 & 1) == (0x47, 1, 0)  # T2 = 1: page request
    assert await g.drv.read(d.PQT, 8) == 0


async def test_page_request_in_legacy_mode_faults_0x32(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest(*PRI)
    assert (await g.drv.bring_up(scalable=False)).ok
    await page_request(g, 0x5000, READ | LAST, 1)
    assert await responses(g) == [(SID, m.NO_PASID, 1, 1)]
    assert (await g.frcd())[1] >> 32 & 0xFF == 0x32


async def test_page_request_drain_in_wait_descriptor(vtd_guest: GuestFactory) -> None:
    g = await _guest(vtd_guest)
    assert await g.drv.qi_sync(d.wait_desc(drain=True, fence=True))


async def test_page_requests_without_pri_are_refused(vtd_guest: GuestFactory) -> None:
    g = await vtd_guest("scalable-mode=on", "pasid-bits=20")
    await g.drv.bring_up()
    assert await page_request(g, 0x5000, READ | LAST, 1) == 0
    assert await responses(g) == [(SID, m.NO_PASID, 1, 1)]
    assert await g.drv.read(d.FSTS) == 0
