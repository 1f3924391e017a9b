"""``vmm guest-config``: device trees (DTS reader/writer, DTB) and the ACPI DMAR, checked
with the real tools: dtc/fdtget (Debian ``device-tree-compiler``) and iasl (``acpica-tools``).
Tests that need a tool skip, saying which package provides it, only when it is missing."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protocols import acpi
from protocols import devicetree as dt
from vmm import guestconfig
from vmm.config import ConfigError

PACKAGES = {"dtc": "device-tree-compiler", "fdtget": "device-tree-compiler",
            "iasl": "acpica-tools"}

SEED_PARTIAL = """/dts-v1/;

/ {
    /* #*cells are here to keep DTC happy */
    #address-cells = <2>;
    #size-cells = <2>;

    aliases {
        net = &mac0;
    };

    passthrough {
        compatible = "simple-bus";
        ranges;
        #address-cells = <2>;
        #size-cells = <2>;
        mac0: ethernet@10000000 {
            compatible = "calxeda,hb-xgmac";
            reg = <0 0x10000000 0 0x1000>;
            interrupts = <0 80 4  0 81 4  0 82 4>;
            iommus = <0xfdea 0x01>;
        };
        test@10001000 {
            compatible = "viommu-test";
            reg = <0 0x10001000 0 0x1000>;
            interrupts = <0x00 0xff 0x04>;
        };
        pcie@30000000 {
            compatible = "pci-host-ecam-generic";
            device_type = "pci";
            #address-cells = <3>;
            #size-cells = <2>;
            reg = <0 0x30000000 0 0x1000000>;
        };
    };
};
"""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {PACKAGES[name]})")
    return path


def run(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def fdtget(blob: Path, node: str, prop: str, kind: str = "x") -> str:
    return run(tool("fdtget"), "-t", kind, str(blob), node, prop).stdout.strip()


def gc_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    guestconfig.configure(parser)
    return parser.parse_args(list(argv))


def generate(tmp: Path, *argv: str, partial: str | None = SEED_PARTIAL) -> tuple[Path, Path]:
    """Run guest-config; (DTS, DTB) paths."""
    extra: list[str] = []
    if partial is not None:
        (tmp / "in.dts").write_text(partial)
        extra = ["--dts-in", str(tmp / "in.dts")]
    dts, dtb = tmp / "out.dts", tmp / "out.dtb"
    code = guestconfig.main(gc_args(*argv, *extra, "--dts-out", str(dts), "--dtb-out", str(dtb)))
    assert code == 0
    return dts, dtb


SEED_MAP = ("--physical-iommu", "0x4f000000",
            "--devid-map", "0x10@0x01,0x4f000000",
            "--devid-map", "0x20,0x4f000000,dev=/passthrough/test@10001000",
            "--devid-map", "0x21,0x4f000000,dev=/passthrough/test@10001000",
            "--devid-map", "0x100-0x1ff,0x4f000000,dev=/passthrough/pcie@30000000,rid=0")


# -- the DTS reader and writer ------------------------------------------------------------------

def test_read_the_seed_partial_tree() -> None:
    tree = dt.parse_dts(SEED_PARTIAL)
    path, mac = tree.find("mac0") or ("", dt.Node(""))
    assert path == "/passthrough/ethernet@10000000"
    assert mac.cells("iommus") == [0xFDEA, 1]
    assert mac.cells("interrupts") == [0, 80, 4, 0, 81, 4, 0, 82, 4]
    assert tree.find("/passthrough/test") is not None  # unit address may be left out
    aliases = tree.find("/aliases")
    assert aliases is not None and aliases[1].props[0].values == [dt.Ref("mac0")]


def test_values_and_expressions() -> None:
    tree = dt.parse_dts("""/dts-v1/;
    /memreserve/ 0x1000 0x2000;
    / { a = <(1 << 4) (0x10 + 2 * 3) (-1) 'a' ((5 > 3) && !0) (~0 & 0xff)>;
        b = "x\\ty\\"z", "two"; c = [00 1122 ff]; d = /bits/ 16 <0xffff 2>;
        e = /bits/ 64 <0x100000000>; n-1+2 = <1>; l: f; g = <0xffffffff>;
        /delete-property/ g; };""")
    root = tree.root
    assert root.cells("a") == [16, 22, 0xFFFF_FFFF, 0x61, 1, 0xFF]
    assert [v.text for v in root.prop("b").values] == ["x\ty\"z", "two"]  # type: ignore[union-attr]
    assert root.prop("c").values == [dt.Bytes(bytes.fromhex("001122ff"))]  # type: ignore[union-attr]
    assert root.prop("d").values == [dt.Cells([0xFFFF, 2], 16)]  # type: ignore[union-attr]
    assert root.prop("n-1+2") is not None and root.prop("g") is None
    assert tree.memreserve == [(0x1000, 0x2000)]
    again = dt.parse_dts(dt.to_dts(tree))
    assert dt.to_dtb(again) == dt.to_dtb(tree)


@pytest.mark.parametrize("text, match", [
    ("/ { };", "start with /dts-v1/"),
    ("/dts-v1/;\n#include <x.h>\n/ { };", "cpp"),
    ("/dts-v1/;\n/plugin/;\n/ { };", "overlays"),
    ("/dts-v1/;\n/ { a = <1 2>; ", "end"),
    ("/dts-v1/;\n/ { a = [123]; };", "whole bytes"),
    ("/dts-v1/;\n/ { a = <0x100000000>; };", "does not fit"),
    ("/dts-v1/;\n/ { a = <(1 / 0)>; };", "division by zero"),
    ("/dts-v1/;\n&nothing { };", "names no node"),
    ("/dts-v1/;\n/ { a = <1> };", "expected ';'"),
    ("/dts-v1/;", "no root node"),
    ("/dts-v1/;\n/ { l: a { }; l: b { }; };", "defined twice"),
])
def test_dts_errors(text: str, match: str) -> None:
    with pytest.raises(dt.DtsError, match=match):
        tree = dt.parse_dts(text)
        tree.labels()


def test_unresolved_reference() -> None:
    tree = dt.parse_dts("/dts-v1/;\n/ { a = <&nowhere>; };")
    with pytest.raises(dt.DtsError, match="non-existent"):
        dt.to_dtb(tree)


def test_dtb_is_byte_identical_to_dtc(tmp_path: Path) -> None:
    dtc = tool("dtc")
    source = SEED_PARTIAL.replace("iommus = <0xfdea 0x01>;",
                                  "other = <&mac0 2>, <(3 * 4)>; path = &mac0;")
    (tmp_path / "in.dts").write_text(source)
    run(dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(tmp_path / "dtc.dtb"),
        str(tmp_path / "in.dts"))
    ours = dt.to_dtb(dt.parse_dts(source))
    assert ours == (tmp_path / "dtc.dtb").read_bytes()


# -- vSMMUv3 nodes and the rewritten partial tree ----------------------------------------------

def test_per_guest_rewrites_the_seed_partial_tree(tmp_path: Path) -> None:
    dts, dtb = generate(tmp_path, *SEED_MAP, "--parent", "/passthrough")
    dtc = tool("dtc")
    run(dtc, "-q", "-I", "dts", "-O", "dtb", "-o", str(tmp_path / "dtc.dtb"), str(dts))
    assert (tmp_path / "dtc.dtb").read_bytes() == dtb.read_bytes()  # our DTS = our DTB
    node = "/passthrough/iommu@9050000"
    assert fdtget(dtb, node, "compatible", "s") == "arm,smmu-v3"
    assert fdtget(dtb, node, "#iommu-cells") == "1"
    assert fdtget(dtb, node, "phandle") == "fdea"
    assert fdtget(dtb, node, "reg") == "0 9050000 0 20000"
    assert fdtget(dtb, node, "interrupt-names", "s") == "eventq gerror priq cmdq-sync"
    assert fdtget(dtb, node, "interrupts") == "0 60 1 0 63 1 0 61 1 0 62 1"
    # The magic phandle now points at the vIOMMU; dev= nodes got their vSIDs.
    assert fdtget(dtb, "/passthrough/ethernet@10000000", "iommus") == "fdea 1"
    assert fdtget(dtb, "/passthrough/test@10001000", "iommus") == "fdea 0 fdea 2"
    assert fdtget(dtb, "/passthrough/pcie@30000000", "iommu-map") == "0 fdea 3 100"
    assert "viommu0: iommu@9050000" in dts.read_text()


def test_per_piommu_keeps_physical_bases_phandles_and_ids(tmp_path: Path) -> None:
    _, dtb = generate(
        tmp_path, "--iommu-topology", "per-piommu",
        "--physical-iommu", "0x4f000000,phandle=0xfdeb", "--physical-iommu", "0x50000000",
        "--devid-map", "0x10,0x4f000000,dev=mac0", "--devid-map", "0x10,0x50000000,dev=/passthrough/test",
        "--combined-irq", "--spi", "40")
    assert fdtget(dtb, "/iommu@4f000000", "phandle") == "fdeb"
    handle = fdtget(dtb, "/iommu@50000000", "phandle")
    assert handle == "fdea"  # the lowest of the vIOMMU phandles not taken
    assert fdtget(dtb, "/passthrough/ethernet@10000000", "iommus") == "fdeb 10"
    assert fdtget(dtb, "/passthrough/test@10001000", "iommus") == f"{handle} 10"
    assert fdtget(dtb, "/iommu@50000000", "interrupts") == "0 29 1"  # SPI 41, combined
    assert fdtget(dtb, "/iommu@50000000", "interrupt-names", "s") == "combined"


def test_vmmu_nodes_alone(tmp_path: Path) -> None:
    dts, dtb = generate(tmp_path, "--device", "smmuv3,base=0x2b400000", "--interrupt-parent", "0",
                        partial=None)
    tree = dt.parse_dts(dts.read_text())
    found = tree.find("/iommu@2b400000")
    assert found is not None and found[1].prop("interrupt-parent") is None
    assert found[1].labels == ["smmu0"]
    assert fdtget(dtb, "/iommu@2b400000", "#iommu-cells") == "1"


@pytest.mark.parametrize("extra, match", [
    (("--devid-map", "0x30,0x4f000000,dev=/nowhere"), "no such node"),
    (("--devid-map", "0x30@0x7,0x4f000000"), None),  # unused vSIDs are fine
])
def test_named_node_errors(tmp_path: Path, extra: tuple[str, ...], match: str | None,
                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.dts").write_text(SEED_PARTIAL)
    code = guestconfig.main(gc_args(*SEED_MAP, *extra, "--dts-in", str(tmp_path / "in.dts"),
                                    "--dts-out", str(tmp_path / "o.dts")))
    if match is None:
        assert code == 0
    else:
        assert code == 1 and match in capsys.readouterr().err


def test_magic_phandle_needs_a_mapped_vsid() -> None:
    from vmm.devidmap import build_config, gather

    config = build_config(gather(gc_args("--physical-iommu", "0x4f000000",
                                         "--devid-map", "0x10@0x05,0x4f000000")))
    with pytest.raises(guestconfig.GuestConfigError, match="vSID 0x1 is not in"):
        guestconfig.device_tree(config, guestconfig.DtOptions(), SEED_PARTIAL)


def test_magic_phandle_ambiguous_per_piommu() -> None:
    from vmm.devidmap import build_config, gather

    config = build_config(gather(gc_args(
        "--iommu-topology", "per-piommu", "--physical-iommu", "0x4f000000",
        "--physical-iommu", "0x50000000", "--devid-map", "0x1,0x4f000000",
        "--devid-map", "0x1,0x50000000")))
    with pytest.raises(guestconfig.GuestConfigError, match="several vIOMMUs"):
        guestconfig.device_tree(config, guestconfig.DtOptions(), SEED_PARTIAL)


def test_phandle_collision() -> None:
    from vmm.devidmap import build_config, gather

    config = build_config(gather(gc_args("--physical-iommu", "0x4f000000",
                                         "--devid-map", "0x10@0x01,0x4f000000")))
    partial = SEED_PARTIAL.replace("test@10001000 {", "test@10001000 { phandle = <0xfdea>;")
    with pytest.raises(guestconfig.GuestConfigError, match="already"):
        guestconfig.device_tree(config, guestconfig.DtOptions(), partial)


def test_print_map(capsys: pytest.CaptureFixture[str]) -> None:
    assert guestconfig.main(gc_args(*SEED_MAP[:6], "--print-map")) == 0
    out = capsys.readouterr().out
    assert 'iommu_devid_map = ["0x10@0x1,0x4f000000", ' \
           '"0x20@0x0,0x4f000000,dev=/passthrough/test@10001000"]' in out


def test_config_file_devicetree_table(tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text("""
iommu_devid_map = ["0x10@0x1,0x4f000000"]
[[physical_iommu]]
base = 0x4f000000
[devicetree]
spi = 0x20
combined_irq = true
[viommu]
base = 0x2b400000
""")
    dts, _ = generate(tmp_path, "--config", str(tmp_path / "g.toml"), partial=None)
    tree = dt.parse_dts(dts.read_text())
    found = tree.find("/iommu@2b400000")
    assert found is not None and found[1].cells("interrupts") == [0, 0x20, 1]


def test_command_is_plugged_into_vmm(tmp_path: Path) -> None:
    done = run(sys.executable, "-m", "vmm", "guest-config", *SEED_MAP[:4])
    assert "compatible = \"arm,smmu-v3\";" in done.stdout
    bad = run(sys.executable, "-m", "vmm", "guest-config", "--devid-map", "0x1,0x5", ok=False)
    assert bad.returncode == 1 and "physical IOMMUs" in bad.stderr


# -- the DMAR --------------------------------------------------------------------------------

def dmar_of(*argv: str) -> bytes:
    from vmm.devidmap import build_config, gather

    table = guestconfig.dmar(build_config(gather(gc_args(*argv))))
    assert table is not None
    return table


def disassemble(tmp: Path, table: bytes) -> str:
    iasl = tool("iasl")
    (tmp / "dmar.dat").write_bytes(table)
    run(iasl, "-d", str(tmp / "dmar.dat"))
    text = (tmp / "dmar.dsl").read_text()
    assert "Incorrect checksum" not in text and "Error" not in text
    return text


def test_dmar_units_and_scopes(tmp_path: Path) -> None:
    table = dmar_of("--device", "vtd,rids=0x10-0x12,intremap=on,device-iotlb=on,aw-bits=39",
                    "--device", "vtd,base=0xfed91000,aw-bits=39")
    parsed = acpi.parse_dmar(table)
    assert parsed.host_address_width == 38 and parsed.flags == acpi.DMAR_INTR_REMAP
    first, second, atsr = parsed.structures
    assert (first.register_base_address, first.flags, first.segment) == (0xFED9_0000, 0, 0)
    assert [(s.type, s.start_bus_number, [(p.device, p.function) for p in s.path])
            for s in first.scopes] == [(1, 0, [(2, 0)]), (1, 0, [(2, 1)]), (1, 0, [(2, 2)]),
                                       (3, 0xFF, [(0, 0)])]
    assert (second.register_base_address, second.flags, second.segment) == (0xFED9_1000, 1, 1)
    assert (atsr.type, atsr.flags, atsr.segment) == (2, acpi.ATSR_ALL_PORTS, 0)
    text = disassemble(tmp_path, table)
    assert "Host Address Width : 26" in text
    assert "Register Base Address : 00000000FED91000" in text
    assert text.count("[PCI Endpoint Device]") == 3 and "[IOAPIC Device]" in text
    assert "[Root Port ATS Capability]" in text


def test_dmar_recompiles_to_the_same_table(tmp_path: Path) -> None:
    table = dmar_of("--device", "vtd,rids=0x100-0x10f")
    disassemble(tmp_path, table)
    run(tool("iasl"), "-p", str(tmp_path / "again"), str(tmp_path / "dmar.dsl"))
    again = (tmp_path / "again.aml").read_bytes()
    # iasl writes its own compiler id and revision, hence its own checksum.
    assert again[:9] == table[:9] and again[10:28] == table[10:28] and again[36:] == table[36:]
    assert sum(again) & 0xFF == 0


def test_dmar_of_a_mapped_vvtd_lists_virtual_rids() -> None:
    table = dmar_of("--physical-iommu", "0xfed00000,kind=vtd", "--viommu", "vtd",
                    "--devid-map", "0x18@0x20,0xfed00000", "--devid-map", "0x30,0xfed00000")
    (unit,) = acpi.parse_dmar(table).structures
    assert [(s.start_bus_number, s.path[0].device, s.path[0].function) for s in unit.scopes] \
        == [(0, 0, 0), (0, 4, 0)]  # vRIDs 0x00 (allocated) and 0x20


def test_dmar_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = guestconfig.main(gc_args("--device", "smmuv3", "--dmar-out", str(tmp_path / "x")))
    assert code == 1 and "no vVT-d" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="do not fit one DRHD"):
        dmar_of("--device", "vtd,rids=0-0x2000")


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b[:40], "shorter"), (lambda b: b"XMAR" + b[4:], "signature"),
    (lambda b: b[:4] + (999).to_bytes(4, "little") + b[8:], "length"),
    (lambda b: b[:9] + bytes([b[9] ^ 1]) + b[10:], "checksum"),
])
def test_dmar_decode_errors(mutate: object, match: str) -> None:
    table = dmar_of("--device", "vtd")
    with pytest.raises(acpi.AcpiDecodeError, match=match):
        acpi.parse_dmar(mutate(table))  # type: ignore[operator]
