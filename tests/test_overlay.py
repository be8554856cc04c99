"""The overlay build: `dynq overlay build` for every board without Vivado, its Tcl run under tclsh against a
recording stub of the Vivado commands, a failing and a succeeding stand-in `vivado`, `dynq overlay check`, and
the resource table of docs/resources.md.

No Vivado runs here. What the stub shows is that the scripts run to their end and ask Vivado for the design
below (cells, CONFIG, connections, clocks, addresses); whether Vivado accepts every command and property is
only known from a run with Vivado.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dynq
from dynq import boards
from dynq.contract import address_map
from dynq.contract.registers import ADDRESS_SPACE
from dynq.hdl.core import ports
from dynq.hdl.generate import cached_verilog
from dynq.zoo import bundled_model, bundled_samples
from tests.vivado_record import Design

TESTS = Path(__file__).resolve().parent
STUB = TESTS / "vivado_stub.tcl"
RECORD = TESTS / "vivado_record.py"
ROOT = TESTS.parent
BOARDS = boards.names()
Completed = subprocess.CompletedProcess

PS = {
    # independent of dynq.overlay.ps: what the Xilinx PS IPs call things
    "ps7": {"ip": "xilinx.com:ip:processing_system7", "enable": ("PCW_USE_M_AXI_GP0", "PCW_USE_S_AXI_HP0"),
            "freq": "PCW_FPGA0_PERIPHERAL_FREQMHZ", "clock": "FCLK_CLK0", "reset": "FCLK_RESET0_N",
            "port_clocks": ("M_AXI_GP0_ACLK", "S_AXI_HP0_ACLK"), "irq": "IRQ_F2P",
            "ddr": "S_AXI_HP0/HP0_DDR_LOWOCM"},
    "zynq_ultra_ps_e": {"ip": "xilinx.com:ip:zynq_ultra_ps_e", "enable": ("PSU__USE__M_AXI_GP0", "PSU__USE__S_AXI_GP2"),
                        "freq": "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ", "clock": "pl_clk0", "reset": "pl_resetn0",
                        "port_clocks": ("maxihpm0_fpd_aclk", "saxihp0_fpd_aclk"), "irq": "pl_ps_irq0",
                        "ddr": "SAXIGP2/HP0_DDR_LOW"},
}
DMA_CLOCKS = ("s_axi_lite_aclk", "m_axi_mm2s_aclk", "m_axi_s2mm_aclk")


def no_vivado_path() -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "vivado").exists())


def dynq_cli(*args: str | Path, path: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path or no_vivado_path()}
    return subprocess.run([sys.executable, "-m", "dynq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`dynq overlay build --board NAME` for every board, without Vivado. The Verilog conversion, about a
    minute per architecture on a cold cache, is most of the time: it is done first, two at once."""
    root = tmp_path_factory.mktemp("overlays")
    with ThreadPoolExecutor(2) as pool:  # each conversion is a process of its own: two at a time on two cores
        list(pool.map(cached_verilog, BOARDS))
    out, seconds = {}, {}
    for name in BOARDS:
        started = time.monotonic()
        proc = dynq_cli("overlay", "build", "--board", name, "-o", root / name)
        seconds[name] = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        out[name] = root / name
        (root / f"{name}.stdout").write_text(proc.stdout)
    print("dynq overlay build without Vivado, seconds per board:", {k: round(v, 1) for k, v in seconds.items()})
    return out


def run_stub(build_dir: Path, tmp_path: Path, hwh: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """tclsh on a copy of the build directory's build.tcl with the stub; returns the process and the record."""
    work = tmp_path / "work"
    shutil.copytree(build_dir, work)
    record = tmp_path / "record.json"
    env = {**os.environ, **({"DYNQ_STUB_HWH": f"{sys.executable} {RECORD}"} if hwh else {})}
    proc = subprocess.run(["tclsh", str(STUB), "build.tcl", str(record)], cwd=work, capture_output=True,
                          text=True, timeout=60, env=env)
    return proc, record


@pytest.mark.parametrize("name", BOARDS)
def test_build_without_vivado_writes_the_scripts_and_says_what_to_run(built: dict, name: str) -> None:
    out = built[name]
    files = {p.name for p in out.iterdir()}
    assert files == {"dynq_core.v", "params.tcl", "common.tcl", "package_ip.tcl", "block_design.tcl", "build.tcl",
                     "overlay.json.in"}
    stdout = (out.parent / f"{name}.stdout").read_text()
    assert f"cd {out} && vivado -mode batch -source build.tcl" in stdout
    assert "no `vivado` on PATH" in stdout
    assert "module dynq_core" in (out / "dynq_core.v").read_text()
    template = json.loads((out / "overlay.json.in").read_text())
    assert template["tools"]["vivado"] == "@VIVADO_VERSION@" and template["board"] == name


@pytest.mark.parametrize("name", BOARDS)
def test_tcl_asks_vivado_for_the_overlay(built: dict, name: str, tmp_path: Path) -> None:
    board = boards.load(name)
    expected = address_map.for_board(board)
    ps_ip = PS[board.ps]
    proc, record = run_stub(built[name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = Design.load(record)

    # projects: the IP packaging one and the overlay's, both on the board's part, the overlay with its preset
    assert [p[2] for p in d.projects] == [board.part, board.part]
    assert d.props[f"project:{d.projects[1][0]}"]["board_part"] == board.overlay.board_part

    # the packaged core: every port of the MyHDL core in exactly one declared interface
    assert sorted(d.interfaces) == ["aresetn", "clk", "irq", "m_axis", "s_axil", "s_axis"]
    mapped = [phys for busif in d.interfaces for phys in d.port_maps[busif].values()]
    assert sorted(mapped) == sorted(ports(board))
    busif = {n: d.props[f"ipx:busif:{n}"] for n in d.interfaces}
    assert busif["s_axil"]["bus_type_vlnv"] == "xilinx.com:interface:aximm:1.0"
    assert (busif["s_axis"]["interface_mode"], busif["m_axis"]["interface_mode"]) == ("slave", "master")
    assert busif["s_axis"]["bus_type_vlnv"] == busif["m_axis"]["bus_type_vlnv"] == "xilinx.com:interface:axis:1.0"
    assert set(d.bus_parameters["clk"]["ASSOCIATED_BUSIF"].split(":")) == {"s_axil", "s_axis", "m_axis"}
    assert d.bus_parameters["aresetn"]["POLARITY"] == "ACTIVE_LOW"
    assert d.props["ipx:busif:s_axil"]["slave_memory_map_ref"] == "s_axil"
    assert int(d.props["ipx:block:s_axil:reg0"]["range"], 0) == ADDRESS_SPACE
    assert int(d.user_parameters["DYNQ_FINGERPRINT"], 16) == board.arch.fingerprint

    # cells
    ps_cell = d.cell_of_type(ps_ip["ip"])
    dma = d.cell_of_type("xilinx.com:ip:axi_dma")
    assert dma == expected.dma.name
    assert d.cells[expected.core.name] == d.core_vlnv
    rule, rule_config = d.automation[ps_cell]
    assert rule == "xilinx.com:bd_rule:" + ps_ip["ip"].rsplit(":", 1)[1] and rule_config["apply_board_preset"] == "1"
    ps_config = d.config(ps_cell)
    assert all(ps_config[p] == "1" for p in ps_ip["enable"])
    assert float(ps_config[ps_ip["freq"]]) == board.arch.clock_mhz
    assert d.config(dma) == address_map.DMA_CONFIG

    # interfaces: PS master -> core registers and DMA registers; DMA <-> core streams; DMA masters -> HP port
    core = expected.core.name
    assert d.reaches(f"{ps_cell}/{expected.master}") == {f"{core}/s_axil", f"{dma}/S_AXI_LITE"}
    assert d.reaches(f"{dma}/M_AXIS_MM2S") == {f"{core}/s_axis"}
    assert d.reaches(f"{core}/m_axis") == {f"{dma}/S_AXIS_S2MM"}
    for master in ("M_AXI_MM2S", "M_AXI_S2MM"):
        assert d.reaches(f"{dma}/{master}") == {f"{ps_cell}/{expected.ddr.name}"}

    # one clock: the PL clock on every clock pin; resets from the PS through proc_sys_reset; the interrupt
    clock = d.net_of(f"{ps_cell}/{ps_ip['clock']}")
    smartconnects = [c for c, v in d.cells.items() if v.startswith("xilinx.com:ip:smartconnect:")]
    assert {f"{core}/clk", *(f"{dma}/{c}" for c in DMA_CLOCKS), *(f"{ps_cell}/{c}" for c in ps_ip["port_clocks"]),
            *(f"{s}/aclk" for s in smartconnects)} <= clock
    reset = d.cell_of_type("xilinx.com:ip:proc_sys_reset")
    assert d.net_of(f"{ps_cell}/{ps_ip['reset']}") == {f"{ps_cell}/{ps_ip['reset']}", f"{reset}/ext_reset_in"}
    assert f"{reset}/slowest_sync_clk" in clock
    assert {f"{core}/aresetn", f"{dma}/axi_resetn"} <= d.net_of(f"{reset}/peripheral_aresetn")
    assert {f"{s}/aresetn" for s in smartconnects} <= d.net_of(f"{reset}/interconnect_aresetn")
    assert d.net_of(f"{core}/irq") == {f"{core}/irq", f"{ps_cell}/{ps_ip['irq']}"}

    # the address map, equal to the runtime's
    ddr = f"{ps_cell}/{ps_ip['ddr']}"
    assert sorted(d.addresses) == sorted([
        (f"{ps_cell}/Data", f"{core}/s_axil/reg0", expected.core.base, expected.core.size),
        (f"{ps_cell}/Data", f"{dma}/S_AXI_LITE/Reg", expected.dma.base, expected.dma.size),
        (f"{dma}/Data_MM2S", ddr, expected.ddr.base, expected.ddr.size),
        (f"{dma}/Data_S2MM", ddr, expected.ddr.base, expected.ddr.size)])

    # the flow to a bitstream, and the package it leaves
    calls = [c[0] for c in d.calls]
    for a, b in (("validate_bd_design", "save_bd_design"), ("save_bd_design", "generate_target"),
                 ("generate_target", "launch_runs")):
        assert calls.index(a) < calls.index(b)
    assert ["launch_runs", "impl_1", "write_bitstream"] in d.calls
    package = tmp_path / "work" / "package"
    assert sorted(p.name for p in package.iterdir()) == ["dynq.bit", "dynq.hwh", "overlay.json"]
    meta = json.loads((package / "overlay.json").read_text())
    assert meta["tools"]["vivado"] == "2022.1" and meta["fingerprint"] == board.arch.fingerprint
    assert meta["address_map"]["core"] == {"name": core, "base": expected.core.base, "size": expected.core.size}


def test_stub_fails_on_a_pin_the_core_does_not_declare(built: dict, tmp_path: Path) -> None:
    """The stub is strict enough to catch a block design that names a port the packaging did not declare."""
    src = tmp_path / "src"
    shutil.copytree(built["pynq-z2"], src)
    params = src / "params.tcl"
    params.write_text(params.read_text().replace("set core(stream_in) s_axis", "set core(stream_in) s_axis_in"))
    proc, _ = run_stub(src, tmp_path)
    assert proc.returncode == 1 and "the core declares no interface s_axis_in" in proc.stderr


def test_failed_run_stops_the_build_without_a_package(built: dict, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(built["pynq-z2"], work)
    env = {**os.environ, "DYNQ_STUB_FAIL_RUN": "impl_1"}
    proc = subprocess.run(["tclsh", str(STUB), "build.tcl", str(tmp_path / "r.json")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "implementation or write_bitstream failed" in proc.stderr
    assert "impl_1/runme.log" in proc.stderr
    assert not (work / "package").exists()


# ---- resources --------------------------------------------------------------------------------------------
def test_resource_table_lists_every_board_and_every_board_fits() -> None:
    """docs/resources.md (Yosys estimates, `dynq hdl synth --all --markdown docs/resources.md`) has a row per
    board with the board file's part and array, and no resource above its capacity (LUT and LUT-RAM share
    the LUTs). A stale table (an array changed since) or an overflowing one fails."""
    rows = {}
    for line in (ROOT / "docs" / "resources.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] in BOARDS:
            rows[cells[0]] = cells
    assert sorted(rows) == BOARDS
    for name, (_, part, array, lut, lutram, ff, dsp, bram) in rows.items():
        board = boards.load(name)
        assert (part, array) == (board.part, f"{board.arch.rows}x{board.arch.cols}"), name
        shares = {k: float(re.search(r"\(([\d.]+)%\)", v).group(1))
                  for k, v in {"lut": lut, "lutram": lutram, "ff": ff, "dsp": dsp, "bram36": bram}.items()}
        assert max(shares.values()) <= 100 and shares["lut"] + shares["lutram"] <= 100, (name, shares)
        used = int(lut.split()[0].replace(",", ""))
        assert abs(100 * used / board.capacity["lut"] - shares["lut"]) < 0.06, (name, "LUT share vs capacity")


# ---- Vivado stand-ins ------------------------------------------------------------------------------------
def fake_vivado(bin_dir: Path, body: str) -> str:
    """A `vivado` executable in `bin_dir`; returns a PATH that finds it first."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "vivado"
    exe.write_text(body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return f"{bin_dir}{os.pathsep}{no_vivado_path()}"


FAILING = """#!/bin/sh
echo "****** Vivado v2022.1 (64-bit)"
echo "dynq: step package_ip"
echo "Starting synth_design"
mkdir -p package.tmp && echo half > package.tmp/dynq.bit
echo "ERROR: [Synth 8-439] module 'dynq_core_x' not found"
echo "ERROR: [Common 17-69] Command failed: Synthesis failed - please see the console or run log file"
exit 1
"""

SUCCEEDING = f"""#!{sys.executable}
import os, subprocess, sys
args = sys.argv[1:]
assert args[:2] == ["-mode", "batch"] and args[args.index("-source") + 1] == "build.tcl", args
env = {{**os.environ, "DYNQ_STUB_HWH": "{sys.executable} {RECORD}"}}
sys.exit(subprocess.call(["tclsh", "{STUB}", "build.tcl", "record.json"], env=env))
"""


def test_failing_vivado_shows_its_log_and_leaves_no_package(built: dict, tmp_path: Path) -> None:
    path = fake_vivado(tmp_path / "bin", FAILING)
    out = tmp_path / "ovl"
    proc = dynq_cli("overlay", "build", "--board", "pynq-z2", "-o", out, path=path)
    assert proc.returncode == 1
    assert "dynq: error: Vivado failed (exit code 1)" in proc.stderr
    assert "ERROR: [Synth 8-439] module 'dynq_core_x' not found" in proc.stderr
    assert "No overlay package was written" in proc.stderr
    assert f"cd {out}.failed && vivado -mode batch -source build.tcl" in proc.stderr
    assert not out.exists()
    failed = Path(f"{out}.failed")
    assert "Synthesis failed" in (failed / "vivado.log").read_text()
    assert not [p for p in failed.rglob("*") if p.name in ("dynq.bit", "dynq.hwh", "overlay.json")]
    assert not (failed / "package").exists() and not (failed / "package.tmp").exists()


def test_failing_vivado_keeps_the_earlier_build(built: dict, tmp_path: Path) -> None:
    out = tmp_path / "ovl"
    assert dynq_cli("overlay", "build", "--board", "pynq-z2", "-o", out, "--no-run").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = dynq_cli("overlay", "build", "--board", "pynq-z2", "-o", out, path=fake_vivado(tmp_path / "bin", FAILING))
    assert proc.returncode == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_vivado_that_hangs_is_stopped_at_the_timeout(built: dict, tmp_path: Path) -> None:
    path = fake_vivado(tmp_path / "bin", "#!/bin/sh\necho 'Starting synth_design'\nexec sleep 60\n")
    started = time.monotonic()
    proc = dynq_cli("overlay", "build", "--board", "pynq-z2", "-o", tmp_path / "ovl", "--timeout", "2", path=path)
    assert proc.returncode == 1 and time.monotonic() - started < 40
    assert "Vivado did not finish within 2 s and was stopped" in proc.stderr
    assert "Starting synth_design" in proc.stderr


def test_refuses_to_overwrite_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    proc = dynq_cli("overlay", "build", "--board", "pynq-z2", "-o", tmp_path)
    assert proc.returncode == 1 and "is not a dynq overlay build directory" in proc.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def packages(built: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Completed]]:
    """Overlay packages from a `vivado` that runs the build script on the stub and writes the .hwh from the
    recorded design: one PS7 board, one Zynq UltraScale+ board."""
    root = tmp_path_factory.mktemp("packages")
    path = fake_vivado(root / "bin", SUCCEEDING)
    out = {}
    for name in ("pynq-z2", "zcu104"):
        proc = dynq_cli("overlay", "build", "--board", name, "-o", root / name, path=path)
        assert proc.returncode == 0, proc.stderr
        out[name] = (root / name, proc)
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LeNet-5 compiled for a PS7 and an UltraScale+ board."""
    samples, _ = bundled_samples()
    root = tmp_path_factory.mktemp("compiled")
    for name in ("pynq-z2", "zcu104"):
        dynq.compile(bundled_model("lenet5"), name, root / name, calib=samples[:16].astype(np.float32) / 255)
    return {name: root / name for name in ("pynq-z2", "zcu104")}


@pytest.mark.parametrize("name", ["pynq-z2", "zcu104"])
def test_vivado_build_makes_a_package_that_checks(packages: dict, compiled: dict, name: str) -> None:
    out, proc = packages[name]
    assert sorted(p.name for p in (out / "package").iterdir()) == ["dynq.bit", "dynq.hwh", "overlay.json"]
    assert "Vivado 2022.1" in proc.stdout and f"Vivado log: {out / 'vivado.log'}" in proc.stdout
    for step in ("package_ip", "block_design", "synth_design", "place_design", "route_design", "write_bitstream"):
        assert f"dynq: vivado: {step} (" in proc.stderr, step
    assert "Starting synth_design" in (out / "vivado.log").read_text()
    assert not list(out.parent.glob(f".{name}.*"))  # no temporary directory left
    check = dynq_cli("overlay", "check", out, "--build", compiled[name])
    assert check.returncode == 0, check.stderr
    m = address_map.for_board(boards.load(name))
    assert f"{m.core.name}: 0x{m.core.base:08x} + 0x{m.core.size:x}" in check.stdout
    assert f"fingerprint {boards.load(name).arch.fingerprint:08x}" in check.stdout
    assert "fits this overlay" in check.stdout


def tampered(packages: dict, tmp_path: Path, name: str = "pynq-z2") -> Path:
    target = tmp_path / "package"
    shutil.copytree(packages[name][0] / "package", target)
    return target


def test_check_refuses_another_fingerprint_in_the_hwh(packages: dict, tmp_path: Path) -> None:
    pkg = tampered(packages, tmp_path)
    fp = boards.load("pynq-z2").arch.fingerprint
    hwh = pkg / "dynq.hwh"
    hwh.write_text(hwh.read_text().replace(f'VALUE="0x{fp:08X}"', 'VALUE="0x12345678"'))
    proc = dynq_cli("overlay", "check", pkg)
    assert proc.returncode == 1
    assert "DYNQ_FINGERPRINT is 0x12345678" in proc.stderr and f"architecture is 0x{fp:08X}" in proc.stderr
    assert "dynq overlay build --board pynq-z2" in proc.stderr


def test_check_refuses_another_fingerprint_in_the_manifest(packages: dict, tmp_path: Path) -> None:
    pkg = tampered(packages, tmp_path)
    meta = json.loads((pkg / "overlay.json").read_text())
    meta["fingerprint"] = 0x0BADF00D
    (pkg / "overlay.json").write_text(json.dumps(meta))
    proc = dynq_cli("overlay", "check", pkg)
    assert proc.returncode == 1 and "overlay.json gives fingerprint 0badf00d" in proc.stderr
    assert f"is {boards.load('pynq-z2').arch.fingerprint:08x}" in proc.stderr


@pytest.mark.parametrize("block", ["core", "dma"])
def test_check_refuses_a_moved_ip(packages: dict, tmp_path: Path, block: str) -> None:
    pkg = tampered(packages, tmp_path)
    segment = getattr(address_map.for_board(boards.load("pynq-z2")), block)
    moved = segment.base + 0x1_0000
    hwh = pkg / "dynq.hwh"
    text = hwh.read_text()
    assert f'BASEVALUE="0x{segment.base:08X}"' in text
    hwh.write_text(text.replace(f'BASEVALUE="0x{segment.base:08X}"', f'BASEVALUE="0x{moved:08X}"')
                   .replace(f'HIGHVALUE="0x{segment.base + segment.size - 1:08X}"',
                            f'HIGHVALUE="0x{moved + segment.size - 1:08X}"'))
    proc = dynq_cli("overlay", "check", pkg)
    assert proc.returncode == 1
    assert f"puts {segment.name} at 0x{moved:08x}" in proc.stderr
    assert f"the contract's address map at 0x{segment.base:08x}" in proc.stderr
    assert "dynq overlay build --board pynq-z2" in proc.stderr


def test_check_refuses_a_build_for_another_board(packages: dict, compiled: dict) -> None:
    proc = dynq_cli("overlay", "check", packages["pynq-z2"][0], "--build", compiled["zcu104"])
    assert proc.returncode == 1
    assert "was compiled for zcu104" in proc.stderr and "this overlay is pynq-z2's" in proc.stderr
    assert "compile it with --board pynq-z2" in proc.stderr


def test_check_refuses_an_incomplete_package(packages: dict, tmp_path: Path) -> None:
    pkg = tampered(packages, tmp_path)
    (pkg / "dynq.hwh").unlink()
    proc = dynq_cli("overlay", "check", pkg)
    assert proc.returncode == 1 and "missing dynq.hwh" in proc.stderr


def test_build_doc_tables_match_the_contract_and_the_board_files() -> None:
    """docs/overlay-build.md quotes the address map and the board presets: they must be the ones in use."""
    text = (ROOT / "docs" / "overlay-build.md").read_text()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]
    presets = {r[0]: (r[1], r[2].strip("`")) for r in rows if len(r) == 3 and r[0] in BOARDS}
    assert presets == {n: (boards.load(n).part, boards.load(n).overlay.board_part) for n in BOARDS}
    listed = {}
    for r in rows:
        if len(r) == 4 and all(n.strip() in BOARDS for n in r[0].split(",")):
            listed.update({n.strip(): r[1:] for n in r[0].split(",")})
    assert sorted(listed) == BOARDS
    for name, (core, dma, ddr) in listed.items():
        m = address_map.for_board(boards.load(name))
        for cell, segment in ((core, m.core), (dma, m.dma)):
            base, size = cell.split(" + ")
            assert int(base.replace("_", ""), 16) == segment.base, (name, cell)
            assert int(size.split()[0]) * 1024 == segment.size, (name, cell)
        base, rest = ddr.split(" + ")
        amount, unit = rest.split()[:2]
        assert int(base, 16) == m.ddr.base and int(amount) << {"MiB": 20, "GiB": 30}[unit] == m.ddr.size
        assert f"`{m.ddr.name}`" in ddr, (name, ddr)


@pytest.mark.parametrize("command", [["overlay"], ["overlay", "build"], ["overlay", "check"]])
def test_help(command: list[str]) -> None:
    proc = dynq_cli(*command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_check_refuses_a_manifest_no_vivado_build_completed(packages: dict, tmp_path: Path) -> None:
    pkg = tampered(packages, tmp_path)
    meta = json.loads((pkg / "overlay.json").read_text())
    (pkg / "overlay.json").write_text(json.dumps({**meta, "tools": {**meta["tools"], "vivado": "@VIVADO_VERSION@"}}))
    proc = dynq_cli("overlay", "check", pkg)
    assert proc.returncode == 1 and "is the template dynq writes" in proc.stderr


def test_vivado_success_with_a_package_that_fails_the_check_is_a_failure(built: dict, tmp_path: Path) -> None:
    """The .hwh the stand-in leaves is the stub's JSON record: pynq cannot parse it, so no package."""
    path = fake_vivado(tmp_path / "bin", SUCCEEDING.replace('"DYNQ_STUB_HWH"', '"UNUSED"'))
    out = tmp_path / "ovl"
    proc = dynq_cli("overlay", "build", "--board", "pynq-z2", "-o", out, path=path)
    assert proc.returncode == 1 and "pynq's .hwh parser cannot read it" in proc.stderr
    assert "No overlay package was written" in proc.stderr
    assert not out.exists() and not (Path(f"{out}.failed") / "package").exists()


def test_tcl_words_read_back_as_written(tmp_path: Path) -> None:
    from dynq.overlay.tcl import TclError, word

    values = {"plain": "xilinx.com:ip:axi_dma", "spaced": "FIXED_IO, DDR", "nested": {"a": "b c", "d": 1}}
    script = tmp_path / "w.tcl"
    script.write_text("".join(f"set {k} {word(v)}\nputs [list {k} ${k}]\n" for k, v in values.items())
                      + "puts [dict get $nested a]\n")
    out = subprocess.run(["tclsh", str(script)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["plain xilinx.com:ip:axi_dma", "spaced {FIXED_IO, DDR}", "nested {a {b c} d 1}", "b c"]
    with pytest.raises(TclError):
        word("unbalanced {")


@pytest.mark.parametrize("line, step", [("Starting synth_design", "synth_design"),
                                        ("Command: route_design -directive Explore", "route_design"),
                                        ("dynq: step package_ip", "package_ip"),
                                        ("INFO: [Common 17-206] Exiting Vivado", None),
                                        ("Starting Placer Task", None)])
def test_progress_steps_from_the_log(line: str, step: str | None) -> None:
    from dynq.overlay.vivado import step_of

    assert step_of(line) == step
