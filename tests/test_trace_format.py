"""The trace format (protocols/trace.py): every request survives event form byte for byte,
files open by suffix and magic, headers are checked."""

from __future__ import annotations

import errno as E
import gzip
import json
import random
from pathlib import Path

import pytest

from protocols import messages as m
from protocols import trace as t
from protocols.messages import Request

CONFIG = {"devices": [{"model": "smmuv3", "id": 0, "name": "smmu0", "segment": 0,
                       "options": {"id": 0, "base": 0x9050000}}]}


def round_trip(message: bytes, reply: bytes, fds: tuple[str, ...] = (),
               late: bool = False) -> t.Event:
    line = t.format_entries([(t.REQ, message, fds, late, reply, None)])
    ev: t.Event = json.loads(line)
    assert ev == t.request_event(message, fds, late, reply, None)  # fast lines say the same
    header, payload = t.request_bytes(ev)
    assert header + payload == message
    assert t.reply_bytes(ev) == reply
    fast = t.fast_exchange(ev)
    assert fast is None or fast == (message, reply)  # replay's shortcut, when it applies
    assert tuple(ev.get("fds", ())) == fds and ev.get("late", False) == late
    return ev


def req(code: int, payload: bytes = b"", flags: int = m.VERSION) -> bytes:
    return m.HEADER.pack(code, flags, len(payload)) + payload


WELL_FORMED = [
    (req(Request.GET_FEATURES), m.reply(Request.GET_FEATURES, 0, m.FEATURES.pack(0x3_0000_0006)),
     "get_features"),
    (req(Request.SET_FEATURES, m.FEATURES.pack(6)), m.reply(Request.SET_FEATURES, 0),
     "set_features"),
    (req(Request.GET_CONFIG), m.reply(Request.GET_CONFIG, 0, b'{"protocol": 1}'), "get_config"),
    (req(Request.SET_MEM_TABLE, m.MEM_TABLE_HEAD.pack(1, 0) + m.REGION.pack(1 << 30, 4096, 0)),
     m.reply(Request.SET_MEM_TABLE, 0), "set_mem_table"),
    (req(Request.ADD_MEM_REG, m.REGION.pack(1 << 31, 8192, 4096)),
     m.reply(Request.ADD_MEM_REG, -E.EINVAL), "add_mem_reg"),
    (req(Request.REM_MEM_REG, m.REGION.pack(1 << 31, 8192, 0)),
     m.reply(Request.REM_MEM_REG, -E.ENOENT), "rem_mem_reg"),
    (req(Request.RESET, m.RESET.pack(m.ALL_DEVICES, 0)), m.reply(Request.RESET, 0), "reset"),
    (req(Request.MMIO_READ, m.MMIO_READ.pack(0, 8, 0x80)),
     m.reply(Request.MMIO_READ, 0, m.MMIO_VALUE.pack(0xFFFF_0000_1234_5678)), "mmio_read"),
    (req(Request.MMIO_READ, m.MMIO_READ.pack(9, 4, 0)), m.reply(Request.MMIO_READ, -E.ENODEV),
     "mmio_read"),
    (req(Request.MMIO_WRITE, m.MMIO_WRITE.pack(1, 4, 0x18, 0x8000_0000)),
     m.reply(Request.MMIO_WRITE, 0), "mmio_write"),
    (req(Request.DMA, m.DMA.pack(3, m.NO_PASID, 0x1000, 4, 1, 0) + b"abcd"),
     m.reply(Request.DMA, 0), "dma"),
    (req(Request.DMA, m.DMA.pack(3, 5, 0x1000, 4, 0, 1)), m.reply(Request.DMA, 0, b"wxyz"), "dma"),
    (req(Request.DMA, m.DMA.pack(3, 5, 0x1000, 4, 0, 1)),
     m.reply(Request.DMA, -E.EFAULT, m.FAULT_RECORD.pack(1, 0x10, 0x1000, 1, 0)), "dma"),
    (req(Request.TRANSLATE, m.TRANSLATE.pack(7, m.NO_PASID, 0xFFFF_F000, 2, 0, 0)),
     m.reply(Request.TRANSLATE, 0, m.TRANSLATE_RESULT.pack(0x4000_0000, 1 << 21, 3, 0)),
     "translate"),
    (req(Request.TRANSLATE, m.TRANSLATE.pack(7, 1, 0x1000, 0, 0, 0)),
     m.reply(Request.TRANSLATE, -E.EFAULT, m.FAULT_RECORD.pack(5, 0, 0x1000, 0, 0)),
     "translate"),
    (req(Request.PV_IOMMU_OP, m.PV_IOMMU_HEAD.pack(2, 0) + bytes(8)),
     m.reply(Request.PV_IOMMU_OP, -E.EINVAL, bytes(8)), "pv_iommu_op"),
    (req(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(0, 3)), m.reply(Request.SET_IRQ_FD, 0),
     "set_irq_fd"),
    (req(Request.SET_BACKEND_CHANNEL), m.reply(Request.SET_BACKEND_CHANNEL, 0),
     "set_backend_channel"),
    (req(Request.TRANSLATE_BATCH, m.BATCH_HEAD.pack(0, 0)),
     m.reply(Request.TRANSLATE_BATCH, 0), "translate_batch"),
    (req(Request.DMA_BATCH, m.BATCH_HEAD.pack(1, 0) + m.DMA.pack(1, 0, 0, 1, 0, 0)),
     m.reply(Request.DMA_BATCH, 0, m.BATCH_ENTRY_STATUS.pack(0, 1) + b"\x00"), "dma_batch"),
    (req(Request.PAGE_REQUEST, m.PAGE_REQUEST.pack(0, 0, 0x18, 1, 0x13, 0x7000, 4, 0)),
     m.reply(Request.PAGE_REQUEST, 0), "page_request"),
]


@pytest.mark.parametrize(("message", "reply", "kind"), WELL_FORMED,
                         ids=[f"{k}-{i}" for i, (_, _, k) in enumerate(WELL_FORMED)])
def test_every_request_round_trips_in_its_own_form(message: bytes, reply: bytes,
                                                   kind: str) -> None:
    ev = round_trip(message, reply)
    assert ev["k"] == kind
    if not kind.endswith("_batch"):  # batch replies stay raw by design
        assert "reply" not in ev  # every other reply above fits the kind's members


MALFORMED = [
    req(Request.MMIO_READ, bytes(15)),  # short
    req(Request.MMIO_WRITE, bytes(24), flags=m.VERSION | m.FLAG_REPLY),  # REPLY set
    req(Request.RESET, m.RESET.pack(0, 1)),  # reserved
    req(Request.TRANSLATE, m.TRANSLATE.pack(0, 0, 0, 0, 0, 9)),  # reserved
    req(Request.DMA, m.DMA.pack(0, 0, 0, 8, 1, 0) + b"abc"),  # data shorter than length
    req(200, b"\x01\x02"),  # an unknown code
    req(Request.SET_MEM_TABLE, m.MEM_TABLE_HEAD.pack(2, 0)),  # regions missing
    m.HEADER.pack(Request.MMIO_READ, m.VERSION, m.MAX_PAYLOAD + 1),  # E2BIG: never read
]


@pytest.mark.parametrize("message", MALFORMED)
def test_malformed_messages_are_kept_raw(message: bytes) -> None:
    ev = round_trip(message, m.reply(m.HEADER.unpack(message)[0], -E.EINVAL))
    assert ev["k"] == "msg"
    assert ev["status"] == -E.EINVAL


def test_odd_replies_are_kept_raw() -> None:
    mmio = req(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0))
    ev = round_trip(mmio, m.reply(Request.MMIO_READ, 0, b"\x01\x02"))
    assert ev["reply"] == "0102"
    fault_with_reserved = m.FAULT_RECORD.pack(1, 2, 3, 1, 7)
    dma = req(Request.DMA, m.DMA.pack(3, 5, 0x1000, 4, 0, 1))
    assert "reply" in round_trip(dma, m.reply(Request.DMA, -E.EFAULT, fault_with_reserved))


def test_fds_are_listed_by_kind() -> None:
    msg = req(Request.SET_IRQ_FD, m.SET_IRQ_FD.pack(0, 0))
    ev = round_trip(msg, m.reply(Request.SET_IRQ_FD, -E.EINVAL), ("other", "eventfd"), True)
    assert ev["fds"] == ["other", "eventfd"] and ev["late"] is True


def test_random_messages_round_trip() -> None:
    rng = random.Random(7)
    codes = [int(c) for c in Request] + [0, 99, 255]
    for _ in range(4000):
        code = rng.choice(codes)
        size = rng.choice([0, 8, 16, 24, 32, rng.randrange(0, 80)])
        payload = bytes(rng.randrange(256) if rng.random() < 0.3 else 0 for _ in range(size))
        flags = rng.choice([m.VERSION, m.VERSION, 0, 5])
        status = rng.choice([0, 0, -E.EINVAL, -E.EFAULT, -E.ENODEV])
        data = bytes(rng.randrange(256) for _ in range(rng.choice([0, 8, 24, 5])))
        round_trip(m.HEADER.pack(code, flags, size) + payload, m.reply(code, status, data))
    for _ in range(2000):  # well-formed MMIO and DMA: the hot paths
        status = rng.choice([0, 0, 0, -E.EINVAL])
        value = rng.randrange(1 << 64)
        kind = rng.randrange(3)
        if kind == 0:
            message = m.request(Request.MMIO_READ, m.MMIO_READ.pack(rng.randrange(3), 4, 8))
            reply = m.reply(Request.MMIO_READ, status, m.MMIO_VALUE.pack(value)
                            if not status else b"")
        elif kind == 1:
            message = m.request(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 8, 16, value))
            reply = m.reply(Request.MMIO_WRITE, status)
        else:
            n = rng.randrange(1, 40)
            flags = rng.choice([0, 1, 3])
            data = bytes(rng.randrange(256) for _ in range(n))
            message = m.request(Request.DMA, m.DMA.pack(1, rng.choice([5, m.NO_PASID]), value,
                                                        n, flags, 0) + (data if flags & 1 else b""))
            reply = m.reply(Request.DMA, status, b"" if status or flags & 1 else data)
        round_trip(message, reply)
        regs = {"0": {"CR0": value}} if rng.random() < 0.5 else None
        line = t.format_entries([(t.REQ, message, (), False, reply, regs)])
        assert json.loads(line) == t.request_event(message, (), False, reply, regs)


def test_effects_format_as_documented() -> None:
    text = t.format_entries([
        (t.READ, 0x1000, 3, b"abc"), (t.READ32, 0x2000, 0x11223344), (t.READ64, 8, None),
        (t.WRITE, 0x10, b"\x01", False), (t.WRITE32, 0x20, 0xFEE, True),
        (t.WRITE64, 0x28, 1, True), (t.IRQ, 0, 3, 0, 0, False),
        (t.IRQ, 1, 0, 0xFEE00000, 0x41, True), (t.IRQ, 1, 0, 0xFEE00000, 0x42, False),
        (t.ATC, 0, 0x18, m.NO_PASID, 0x1000, 0x2000, True),
        (t.ATC, 0, 0x18, 3, 0, 0x1000, False), (t.PRESP, 1, 0x18, 5, 2, 0),
        (t.TABLE, "set", 0), (t.TABLE, "rem", -E.ENOENT), (t.EOF,), (t.END, 14)])
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines == [
        {"k": "read", "gpa": "0x1000", "n": 3, "data": "616263"},
        {"k": "read", "gpa": "0x2000", "n": 4, "data": "44332211"},
        {"k": "read", "gpa": "0x8", "n": 8, "data": None},
        {"k": "write", "gpa": "0x10", "data": "01", "ok": False},
        {"k": "write", "gpa": "0x20", "data": "ee0f0000"},
        {"k": "write", "gpa": "0x28", "data": "0100000000000000"},
        {"k": "irq", "dev": 0, "vec": 3},
        {"k": "irq", "dev": 1, "vec": 0, "addr": "0xfee00000", "data": "0x41"},
        {"k": "irq", "dev": 1, "vec": 0, "addr": "0xfee00000", "data": "0x42", "ok": False},
        {"k": "atc_inv", "seg": 0, "req": 0x18, "pasid": None, "addr": "0x1000",
         "size": "0x2000"},
        {"k": "atc_inv", "seg": 0, "req": 0x18, "pasid": 3, "addr": "0x0", "size": "0x1000",
         "ok": False},
        {"k": "page_resp", "seg": 1, "req": 0x18, "pasid": 5, "group": 2, "code": 0},
        {"k": "table", "op": "set"}, {"k": "table", "op": "rem", "errno": -E.ENOENT},
        {"k": "eof"}, {"k": "end", "events": 14}]
    assert {ev["k"] for ev in lines} <= t.EFFECT_KINDS | t.STREAM_KINDS


def test_register_changes_ride_on_the_request() -> None:
    msg = req(Request.MMIO_WRITE, m.MMIO_WRITE.pack(0, 4, 0x20, 1))
    line = t.format_entries([(t.REQ, msg, (), False, m.reply(Request.MMIO_WRITE, 0),
                              {"0": {"CR0": 1, "CR0ACK": 1}})])
    assert json.loads(line)["regs"] == {"0": {"CR0": "0x1", "CR0ACK": "0x1"}}


def write_trace(path: Path, lines: list[t.Event], header: t.Event | None = None) -> None:
    f = t.open_for_writing(str(path))
    head = header or t.make_header(CONFIG, features=6, state={}, source="test",
                                   connection=1, created="now", vmm="0")
    f.write("".join(t.encode_line(d) for d in [head, *lines]).encode())
    f.close()


@pytest.mark.parametrize("name", ["plain.jsonl", "packed.jsonl.gz", "packed.jsonl.zst"])
def test_files_compress_by_suffix_and_open_by_magic(tmp_path: Path, name: str) -> None:
    if name.endswith(".zst"):
        pytest.importorskip("zstandard")
    path = tmp_path / name
    write_trace(path, [{"k": "get_features"}, {"k": "eof"}])
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" if name.endswith(".gz") else True
    renamed = tmp_path / "renamed.data"  # the reader goes by content, not by name
    renamed.write_bytes(raw)
    with t.TraceReader(str(renamed)) as reader:
        assert reader.header["format"] == t.FORMAT
        assert [(n, ev["k"]) for n, ev in reader.events()] == [(2, "get_features"), (3, "eof")]
        assert reader.consumed == reader.total == len(raw)


def test_zstd_without_its_module_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_zstandard(name: str, *args: object, **kwargs: object) -> object:
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    with pytest.raises(t.TraceError, match="zstandard"):
        t.open_for_writing(str(tmp_path / "x.jsonl.zst"))
    (tmp_path / "y").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(12))
    with pytest.raises(t.TraceError, match="zstandard"):
        t.TraceReader(str(tmp_path / "y"))


def test_headers_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(t.TraceError, match="not a viommu trace"):
        t.TraceReader(str(path))
    path.write_text(json.dumps({"format": t.FORMAT, "version": t.VERSION + 1,
                                "config": CONFIG}) + "\n")
    with pytest.raises(t.TraceError, match="newer"):
        t.TraceReader(str(path))
    path.write_text("")
    with pytest.raises(t.TraceError, match="empty"):
        t.TraceReader(str(path))


def test_a_broken_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    write_trace(path, [{"k": "get_features"}])
    with gzip.open(path, "ab") as f:
        f.write(b"\n{not json\n")
    with t.TraceReader(str(path)) as reader, pytest.raises(t.TraceError) as err:
        list(reader.events())
    assert err.value.line == 4  # header, event, blank line, the broken one


def test_describe_shows_the_request_alone() -> None:
    ev = round_trip(req(Request.MMIO_READ, m.MMIO_READ.pack(0, 4, 0x24)),
                    m.reply(Request.MMIO_READ, 0, m.MMIO_VALUE.pack(1)))
    assert t.describe(ev) == "mmio_read dev=0 off=0x24 size=4"
    assert t.describe_reply(ev, m.reply(Request.MMIO_READ, -E.EINVAL)) == {"status": -E.EINVAL}


def test_a_trace_cut_short_reads_up_to_the_cut(tmp_path: Path) -> None:
    lines = [{"k": "get_features"}, {"k": "get_config"}, {"k": "eof"}]
    path = tmp_path / "t.jsonl"
    write_trace(path, lines)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # the last line, half written
    with t.TraceReader(str(path)) as reader:
        assert [ev["k"] for _, ev in reader.events()] == ["get_features", "get_config"]
        assert reader.truncated
    write_trace(path, [{"k": "mmio_read", "dev": 0, "size": 4, "off": hex(4 * i)}
                       for i in range(2000)])
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes())[:-40])  # the process was killed
    with t.TraceReader(str(packed)) as reader:
        assert 100 < len(list(reader.events())) < 2000 and reader.truncated
