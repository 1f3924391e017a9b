"""The fuzzer's oracles and machinery, each shown catching what it is for."""

from __future__ import annotations

import errno as E
import struct

import pytest

from protocols import messages as m
from protocols.messages import Request
from vmm.fuzz.minimize import ddmin
from vmm.fuzz.observe import ObservedMemory, ScratchMemory
from vmm.fuzz.oracles import (
    Failure,
    WorkExceeded,
    check_fault_record,
    check_reply,
    check_translation,
)
from vmm.fuzz.program import BytesSource, Step
from vmm.memory import anonymous_memory


def reply(code: int, status: int, data: bytes = b"", flags: int = m.REPLY_FLAGS) -> bytes:
    return m.REPLY_HEAD.pack(code, flags, 8 + len(data), status, 0) + data


def test_a_well_formed_reply_passes() -> None:
    assert check_reply(Request.MMIO_READ, reply(Request.MMIO_READ, 0, bytes(8))) == (0, bytes(8))


@pytest.mark.parametrize("bad, why", [
    (reply(Request.MMIO_READ, 0, flags=1), "flags"),
    (reply(Request.MMIO_WRITE, 0), "reply code"),
    (reply(Request.MMIO_READ, 3), "positive status"),
    (reply(Request.MMIO_READ, -E.EFAULT), "answered status"),
    (reply(Request.MMIO_READ, -E.EINVAL, b"x"), "carries"),
    (reply(Request.MMIO_READ, 0, bytes(8))[:-1], "size field"),
    (reply(Request.MMIO_READ, 0) + reply(Request.MMIO_READ, 0), "not exactly one"),
])
def test_malformed_replies_are_failures(bad: bytes, why: str) -> None:
    with pytest.raises(Failure, match=why):
        check_reply(Request.MMIO_READ, bad)


def test_fault_record_rules() -> None:
    good = m.FAULT_RECORD.pack(1, 0x10, 0x1000, 1, 0)
    assert check_fault_record(good, translate=False, iova=0x1000, length=8) == (1, 0x10, 1)
    with pytest.raises(Failure, match="stage"):
        check_fault_record(m.FAULT_RECORD.pack(7, 0, 0x1000, 2, 0), translate=False,
                           iova=0x1000, length=8)
    with pytest.raises(Failure, match="kind 8"):
        check_fault_record(m.FAULT_RECORD.pack(8, 0, 0x1000, 0, 0), translate=True,
                           iova=0x1000, length=1)
    with pytest.raises(Failure, match="outside the access"):
        check_fault_record(m.FAULT_RECORD.pack(1, 0, 0x3000, 1, 0), translate=False,
                           iova=0x1000, length=8)


def test_translation_rules() -> None:
    ok = m.TRANSLATE_RESULT.pack(0x20_1000, 0x1000, 3, 0)
    assert check_translation(ok, 0x1000, m.DmaFlag.WRITE) == (0x20_1000, 0x1000, 3)
    with pytest.raises(Failure, match="congruent"):
        check_translation(m.TRANSLATE_RESULT.pack(0x20_1800, 0x1000, 3, 0), 0x1000, 0)
    with pytest.raises(Failure, match="power of two"):
        check_translation(m.TRANSLATE_RESULT.pack(0x2000, 0x1800, 3, 0), 0x1000, 0)
    with pytest.raises(Failure, match="granted perms"):
        check_translation(m.TRANSLATE_RESULT.pack(0x2000, 0x1000, 1, 0), 0x1000,
                          m.DmaFlag.WRITE)


def test_observed_memory_counts_and_bounds_work() -> None:
    raw = anonymous_memory([(0, 0x2000)])
    mem = ObservedMemory(raw)
    assert mem.read(0x1000, 8) == bytes(8)
    assert mem.read(0x5000, 8) is None  # outside RAM: answered None, not an error
    assert not mem.write(0x1FFC, bytes(8))  # runs off the end: nothing written
    assert mem.accesses == 3 and mem.violation is None
    mem.limit = 4
    mem.read_u32(0)
    with pytest.raises(WorkExceeded):
        mem.read_u64(0)
    raw.clear()


def test_observed_memory_records_an_exception_as_a_violation() -> None:
    raw = anonymous_memory([(0, 0x1000)])
    mem = ObservedMemory(raw)
    assert mem.read("0x10", 4) is None  # type: ignore[arg-type] - what a buggy model might pass
    assert mem.violation is not None and "TypeError" in mem.violation
    raw.clear()


def test_scratch_memory_keeps_its_writes_to_itself() -> None:
    raw = anonymous_memory([(0, 0x3000)])
    raw.write(0xFF8, bytes(range(16)))
    view = ScratchMemory(raw)
    assert view.write_u64(0xFFC, 0x1122334455667788)  # across a page boundary
    assert view.read(0xFF8, 16) == bytes(range(4)) + bytes.fromhex("8877665544332211") \
        + bytes(range(12, 16))
    assert raw.read(0xFF8, 16) == bytes(range(16))  # the guest sees nothing of it
    assert not view.write(0x2FFC, bytes(8)) and view.read_u32(0x5000) is None
    raw.clear()


def test_ddmin_finds_the_two_steps_that_matter() -> None:
    steps = [Step("w", (i,)) for i in range(40)]

    def fails(candidate: list[Step]) -> bool:
        args = {s.args[0] for s in candidate}
        return 7 in args and 31 in args

    assert [s.args[0] for s in ddmin(steps, fails, deadline=float("inf"))] == [7, 31]


def test_bytes_source_is_total() -> None:
    src = BytesSource(b"\x05\xff")
    assert src.below(3) == 2 and src.bits(4) == 0xF
    assert src.exhausted and src.below(10) == 0 and src.bits(64) == 0


def test_step_json_round_trip() -> None:
    step = Step("qi", (2,), struct.pack("<QQ", 5, 1 << 63))
    assert Step.from_json(step.to_json()) == step
