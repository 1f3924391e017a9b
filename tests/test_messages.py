"""The fast struct codecs agree with the construct declarations they are derived from."""

from __future__ import annotations

import construct as c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import messages as m

CODECS = {
    name: m.fast(layout) for name, layout in m.ALL_LAYOUTS.items()
}


def _field_max(layout: c.Struct, name: str) -> tuple[int, int]:
    sub = next(s for s in layout.subcons if s.name == name)
    inner = sub.subcon
    bits = inner.sizeof() * 8
    if inner.fmtstr[-1].islower():
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@pytest.mark.parametrize("name", sorted(CODECS))
@given(data=st.data())
def test_fast_codec_matches_construct(name: str, data: st.DataObject) -> None:
    layout = m.ALL_LAYOUTS[name]
    codec = CODECS[name]
    values = {f: data.draw(st.integers(*_field_max(layout, f))) for f in codec.names}
    built = layout.build(values)
    assert built == codec.pack(*values.values())
    assert codec.unpack(built) == tuple(values.values())
    parsed = layout.parse(built)
    assert {k: parsed[k] for k in codec.names} == values


def test_sizes_are_the_contract() -> None:
    # protocol.md request table, byte for byte.
    assert m.HEADER.size == 12
    assert m.REGION.size == 24
    assert m.MMIO_READ.size == 16 and m.MMIO_WRITE.size == 24
    assert m.DMA.size == 24 and m.TRANSLATE.size == 24
    assert m.TRANSLATE_RESULT.size == 24 and m.FAULT_RECORD.size == 24
    assert m.IRQ_MESSAGE.size == 24 and m.ATC_INVALIDATE.size == 32


def test_reply_framing() -> None:
    msg = m.reply(16, 0, b"\x01" * 8)
    code, flags, size = m.HEADER.unpack(msg)
    assert (code, flags, size) == (16, 0b101, 16)
    assert m.STATUS.unpack(msg, 12) == (0, 0)
