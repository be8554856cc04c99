"""Verilog (and VHDL) from the MyHDL sources, for one board's architecture."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

from dynq.boards import load
from dynq.errors import DynqError
from dynq.hdl.core import dynq_core, ports

TOP = "dynq_core"


def generate(board_name: str, out_dir: Path, hdl: str = "Verilog") -> Path:
    """Converts the core for `board_name` into `out_dir/dynq_core.v` (or `.vhd`); returns the file."""
    board = load(board_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    core = dynq_core(board, **ports(board))
    with warnings.catch_warnings():
        # WSTRB is unused by design (whole-word registers); any other converter warning stays visible
        warnings.filterwarnings("ignore", message=".*Port is not used: s_axil_wstrb")
        options = {"testbench": False} if hdl == "Verilog" else {}
        core.convert(hdl=hdl, path=str(out_dir), name=TOP, **options)
    return out_dir / f"{TOP}.{'v' if hdl == 'Verilog' else 'vhd'}"


class LintError(DynqError, RuntimeError):
    """Verilator's -Wall lint found something the waivers in `hdl/lint.vlt` do not justify."""


def lint(verilog: Path) -> None:
    """`verilator --lint-only -Wall` with the justified waivers of `hdl/lint.vlt`; raises LintError."""
    from dynq.hdl.sim import LINT_WAIVERS, verilator_env, verilator_root

    cmd = [str(verilator_root() / "bin" / "verilator"), "--lint-only", "-Wall", str(LINT_WAIVERS), str(verilog)]
    proc = subprocess.run(cmd, env=verilator_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        findings = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("%")]
        raise LintError(f"{verilog}: verilator -Wall reports {len(findings)} finding(s): " + " | ".join(findings[:8]))
