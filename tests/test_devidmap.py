"""The iommu_devid_map grammar, vSID allocation, collisions, topologies, configuration
files and command lines, and the session's routing of physical IDs to vSIDs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from devices.model import DmaRequest, DmaTarget, Perm
from vmm.config import ConfigError, DaemonConfig
from vmm.devidmap import (
    DevidMapError,
    MapEntry,
    PhysicalIommu,
    Topology,
    add_config_options,
    build_config,
    dma_protection,
    gather,
    load_daemon_config,
    parse_dma_master,
    resolve,
    restore,
)
from vmm.guest import GuestSession

P0, P1 = 0x4F00_0000, 0x4000_0000
PIOMMUS = [PhysicalIommu(0, P0), PhysicalIommu(1, P1)]


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", action="append")
    add_config_options(parser)
    return parser.parse_args(list(argv))


# -- grammar ----------------------------------------------------------------------------

def test_seed_grammar() -> None:
    e = MapEntry.parse("0x10@0x01,0x4f000000")
    assert (e.psid, e.count, e.vsid, e.base, e.device, e.rid) == (0x10, 1, 1, P0, None, None)
    e = MapEntry.parse(" 16 , 0x4f000000 ")
    assert (e.psid, e.vsid) == (16, None)


def test_extended_grammar() -> None:
    e = MapEntry.parse("0x100-0x1ff@0x0,0x4f000000,dev=/pcie@10000000,rid=0x100")
    assert (e.psid, e.count, e.vsid, e.device, e.rid) == (0x100, 0x100, 0, "/pcie@10000000", 0x100)
    assert MapEntry.parse("0x20,0x4f000000,dev=mac0").device == "mac0"


@pytest.mark.parametrize("text, match", [
    ("0x10", "expected"), ("0x10@,0x4f000000", "not a number"), ("zz,0x4f000000", "not a number"),
    ("0x10,base", "not a number"), ("0x20-0x10,0x4f000000", "empty"),
    ("0x10,0x4f000000,colour=red", "unknown option"), ("0x1_0000_0000,1", "out of range"),
    ("0-1@0xffffffff,1", "past"),
    ("0-0x10,1,rid=0xfff8", "past 0xffff"),
])
def test_grammar_errors(text: str, match: str) -> None:
    with pytest.raises(DevidMapError, match=match):
        MapEntry.parse(text)


# -- allocation and collisions ----------------------------------------------------------------

def test_explicit_and_automatic_vsids() -> None:
    dmap = resolve(PIOMMUS, ["0x10@0x1,0x4f000000", "0x10,0x40000000", "0x20-0x22,0x4f000000",
                             "0x30@0x0,0x40000000"], Topology.PER_GUEST)
    b = dmap.bindings
    assert b[(0, 0x10)] == (0, 1) and b[(1, 0x30)] == (0, 0)
    assert b[(1, 0x10)] == (0, 2)  # lowest free after the explicit ones
    assert [b[(0, p)] for p in (0x20, 0x21, 0x22)] == [(0, 3), (0, 4), (0, 5)]  # one block
    assert dmap.resolved() == ["0x10@0x1,0x4f000000", "0x10@0x2,0x40000000",
                               "0x20-0x22@0x3,0x4f000000", "0x30@0x0,0x40000000"]


def test_same_psid_behind_two_iommus() -> None:
    dmap = resolve(PIOMMUS, ["0x10@0x1,0x4f000000", "0x10@0x2,0x40000000"], Topology.PER_GUEST)
    assert dmap.bindings == {(0, 0x10): (0, 1), (1, 0x10): (0, 2)}


def test_device_with_several_stream_ids() -> None:
    dmap = resolve(PIOMMUS, ["0x10@0x01,0x4f000000,dev=dma0", "0x20@0x02,0x4f000000,dev=dma0",
                             "0x30,0x4f000000,dev=dma0"], Topology.PER_GUEST)
    assert [(v, s) for v, s, _ in dmap.node_ids()["dma0"]] == [(0, 1), (0, 2), (0, 0)]


def test_devices_sharing_a_stream_id_share_its_vsid() -> None:
    dmap = resolve(PIOMMUS, ["0x10,0x4f000000,dev=a", "0x10,0x4f000000,dev=b"],
                   Topology.PER_GUEST)
    nodes = dmap.node_ids()
    assert nodes["a"][0][:2] == nodes["b"][0][:2] == (0, 0)
    with pytest.raises(DevidMapError, match="one configuration"):
        resolve(PIOMMUS, ["0x10@0x1,0x4f000000", "0x10@0x2,0x4f000000"], Topology.PER_GUEST)


def test_collisions() -> None:
    with pytest.raises(DevidMapError, match="vSID 0x1 is already pSID 0x10 behind 0x4f000000"):
        resolve(PIOMMUS, ["0x10@0x1,0x4f000000", "0x11@0x1,0x4f000000"], Topology.PER_GUEST)
    with pytest.raises(DevidMapError, match="already pSID"):
        resolve(PIOMMUS, ["0x10-0x13@0x0,0x4f000000", "0x20@0x2,0x40000000"],
                Topology.PER_GUEST)


def test_unknown_physical_iommu() -> None:
    with pytest.raises(DevidMapError, match=r"no physical IOMMU at 0x5000000 .*0x4f000000"):
        resolve(PIOMMUS, ["0x10,0x5000000"], Topology.PER_GUEST)


def test_per_piommu_keeps_ids() -> None:
    dmap = resolve(PIOMMUS, ["0x10,0x4f000000", "0x10,0x40000000", "0x7@0x7,0x40000000"],
                   Topology.PER_PIOMMU)
    assert dmap.bindings == {(0, 0x10): (0, 0x10), (1, 0x10): (1, 0x10), (1, 7): (1, 7)}
    with pytest.raises(DevidMapError, match="keeps IDs"):
        resolve(PIOMMUS, ["0x10@0x1,0x4f000000"], Topology.PER_PIOMMU)


def test_bound_on_mapped_ids() -> None:
    with pytest.raises(DevidMapError, match="more than"):
        resolve(PIOMMUS, ["0-0x1fffff,0x4f000000"], Topology.PER_GUEST)


def test_routes_coalesce_runs() -> None:
    dmap = resolve(PIOMMUS, ["0x10-0x1f@0x100,0x4f000000", "0x20@0x0,0x4f000000"],
                   Topology.PER_GUEST)
    dmap.viommus.append(type("V", (), {"device_id": 7})())  # type: ignore[arg-type]
    assert dmap.routes() == [(0, 0x10, 0x1F, 7, 0x100), (0, 0x20, 0x20, 7, 0)]
    assert dmap.physical(7, 0x105) == (0, 0x15) and dmap.physical(7, 0x99) is None


# -- configurations: file and command line ----------------------------------------------------

TOML = """
device = ["pv-iommu,rids=0-0xff"]
topology = "per-guest"
iommu_devid_map = ["0x10@0x01,0x4f000000", "0x20,0x40000000,dev=/passthrough/dma@9000000"]
dma_masters = ["9:0x10-0x1f"]

[[physical_iommu]]
base = 0x4f000000
phandle = 0xfdeb

[[physical_iommu]]
base = 0x40000000

[viommu]
model = "smmuv3"
options = "stage=nested"
"""


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "guest.toml"
    path.write_text(TOML)
    config = load_daemon_config(args("--config", str(path), "--device", "vtd,rids=0-0xf"))
    models = [(d.model, d.id, d.segment) for d in config.devices]
    # Physical IOMMUs are segments 0 and 1; the other models follow them.
    assert models == [("pv-iommu", 0, 2), ("vtd", 1, 3), ("smmuv3", 2, 0)]
    assert config.devices[2].options["base"] == 0x09050000
    assert config.devices[2].options["stage"] == "nested"
    assert config.dma_masters == [(9, 0x10, 0x1F)]
    assert config.devid_map is not None and config.devid_map.bindings == {
        (0, 0x10): (0, 1), (1, 0x20): (0, 0)}


@pytest.mark.parametrize("text, match", [
    ("colour = 1", "unknown keys"), ("topology = 'sideways'", "per-guest or per-piommu"),
    ("[viommu]\nflavour = 1", r"\[viommu\] takes"), ("physical_iommu = 3", "must be tables"),
    ("[[physical_iommu]]\nbase = 1\nkind = 'amd'", "smmuv3 or vtd"), ("x = ", "Invalid value"),
    ("device = 3", "list of strings"),
])
def test_config_file_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_daemon_config(args("--config", str(path)))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_daemon_config(args("--config", str(tmp_path / "none.toml")))


def test_command_line_per_piommu() -> None:
    config = load_daemon_config(args(
        "--physical-iommu", "0x4f000000,phandle=0xfdeb", "--physical-iommu", "0x40000000,kind=vtd",
        "--devid-map", "0x10,0x4f000000", "--devid-map", "0x18,0x40000000",
        "--iommu-topology", "per-piommu", "--viommu", "smmuv3,stage=s2"))
    assert [(d.model, d.segment, d.options["base"]) for d in config.devices] == [
        ("smmuv3", 0, P0), ("vtd", 1, P1)]
    assert config.devices[0].options["stage"] == "s2"
    assert config.devid_map is not None
    assert [v.phandle for v in config.devid_map.viommus] == [0xFDEB, 0xFDEA]


def test_map_needs_physical_iommus() -> None:
    with pytest.raises(DevidMapError, match="physical IOMMUs"):
        load_daemon_config(args("--devid-map", "0x10,0x4f000000"))


def test_viommu_template_errors() -> None:
    base = ("--physical-iommu", "0x4f000000", "--devid-map", "0x10,0x4f000000")
    with pytest.raises(DevidMapError, match="smmuv3 or vtd"):
        load_daemon_config(args(*base, "--viommu", "pv-iommu"))
    with pytest.raises(DevidMapError, match="unknown option"):
        load_daemon_config(args(*base, "--viommu", "smmuv3,colour=red"))


def test_dma_master_grammar() -> None:
    assert parse_dma_master("1:0x10-0x1f") == (1, 0x10, 0x1F)
    assert parse_dma_master("0:7") == (0, 7, 7)
    for bad in ("7", "1:z", "1:9-3", "0x10000:1"):
        with pytest.raises(ConfigError):
            parse_dma_master(bad)


def test_restore_from_a_trace_header() -> None:
    config = load_daemon_config(args(
        "--physical-iommu", "0x4f000000", "--devid-map", "0x10-0x12,0x4f000000",
        "--dma-master", "3:5", "--device", "vtd"))
    doc = config.to_json()
    again = DaemonConfig(config.devices)
    restore(again, doc)
    assert again.dma_masters == [(3, 5, 5)]
    assert again.devid_map is not None and config.devid_map is not None
    assert again.devid_map.routes() == config.devid_map.routes()


# -- the session: routing and GET_CONFIG -------------------------------------------------------

def session(*argv: str) -> GuestSession:
    return GuestSession(build_config(gather(args(*argv))))


def recorded(model: Any) -> list[int]:
    seen: list[int] = []

    def translate(req: DmaRequest) -> DmaTarget:
        seen.append(req.requester)
        return DmaTarget(0x8000_0000, 4096, Perm.R | Perm.W | Perm.X)

    model.translate = translate
    return seen


def test_dma_names_physical_ids_and_the_model_sees_virtual_ones() -> None:
    s = session("--physical-iommu", "0x4f000000", "--physical-iommu", "0x40000000",
                "--devid-map", "0x10@0x1,0x4f000000", "--devid-map", "0x10@0x2,0x40000000",
                "--devid-map", "0x100-0x103@0x40,0x40000000")
    (viommu,) = [slot.model for slot in s.slots.values()]
    seen = recorded(viommu)
    assert s.dma_owner(0, 0x10) and s.dma_owner(1, 0x10) and s.dma_owner(1, 0x103)
    assert not s.dma_owner(0, 0x1) and not s.dma_owner(1, 0x104) and not s.dma_owner(2, 0x10)
    s.translate(0, 0x10, None, 0x1000, 0)
    s.translate(1, 0x10, None, 0x1000, 0)
    s.translate(1, 0x102, None, 0x1000, 0)
    assert seen == [1, 2, 0x42]
    assert s.physical_id(viommu.env.device, 0, 0x42) == (1, 0x102)  # type: ignore[attr-defined]


def test_get_config_lists_the_physical_ids() -> None:
    import json

    s = session("--physical-iommu", "0x4f000000", "--physical-iommu", "0x40000000",
                "--devid-map", "0x10@0x1,0x4f000000", "--devid-map", "0x20-0x21,0x40000000",
                "--device", "pv-iommu,rids=0-7")
    doc = json.loads(s.config_json())
    pviommu, viommu = doc["devices"]
    assert pviommu["segment"] == 2 and pviommu["requesters"] == [[0, 7]]
    assert viommu["model"] == "smmuv3" and viommu["segment"] == 0
    assert viommu["requesters"] == [[0x10, 0x10]]
    assert viommu["physical"] == [{"segment": 0, "first": 0x10, "last": 0x10, "vsid": 1},
                                  {"segment": 1, "first": 0x20, "last": 0x21, "vsid": 2}]
    assert doc["dma_protected"] is True


# -- DMA protection (seed 003) ------------------------------------------------------------------

def test_dma_protection_rule() -> None:
    protected = [(0, 0, 0xFF), (0, 0x100, 0x1FF), (1, 5, 5)]
    assert dma_protection(protected, []) is None
    assert dma_protection(protected, [(0, 0x80, 0x180)]) is None  # ranges merge
    assert dma_protection(protected, [(1, 5, 6)]) == [
        {"segment": 0, "first": 0, "last": 0x1FF}, {"segment": 1, "first": 5, "last": 5}]


def test_dma_protected_in_get_config() -> None:
    import json

    s = session("--device", "pv-iommu,rids=0-0xff", "--dma-master", "0:0x10-0x20")
    assert json.loads(s.config_json())["dma_protected"] is True  # behind the PV-IOMMU
    s = session("--device", "pv-iommu,rids=0-0xff", "--dma-master", "1:0x10")
    doc = json.loads(s.config_json())
    assert doc["dma_protected"] is False
    assert doc["protected_requesters"] == [{"segment": 0, "first": 0, "last": 0xFF}]


# -- vmm daemon's command line -------------------------------------------------------------------

def test_daemon_reads_the_config_file(tmp_path: Path) -> None:
    import json

    from protocols.messages import Request
    from tests.conftest import DaemonProcess
    from vmm.harness import BlockingClient

    path = tmp_path / "guest.toml"
    path.write_text(TOML)
    daemon = DaemonProcess(tmp_path, ["--config", str(path), "--dma-master", "2:0x100"])
    try:
        client = BlockingClient(daemon.path)
        reply = client.call(Request.GET_CONFIG)
        client.close()
    finally:
        daemon.stop()
    doc = json.loads(reply.data)
    assert [d["model"] for d in doc["devices"]] == ["pv-iommu", "smmuv3"]
    assert doc["pv_iommu"] is True and doc["dma_protected"] is False


def test_daemon_refuses_a_bad_map(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "vmm", "daemon", "--socket-path", str(tmp_path / "s"),
         "--physical-iommu", "0x4f000000", "--devid-map", "0x10@1,0x4f000000",
         "--devid-map", "0x11@1,0x4f000000"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "vmm daemon: '0x11@1,0x4f000000': vSID 0x1 is already pSID 0x10" in done.stderr
