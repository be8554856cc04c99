"""Verilog (and VHDL) from the MyHDL sources, for one board's architecture."""

from __future__ import annotations

import warnings
from pathlib import Path

from dynq.boards import load
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
        core.convert(hdl=hdl, path=str(out_dir), name=TOP, testbench=False)
    return out_dir / f"{TOP}.{'v' if hdl == 'Verilog' else 'vhd'}"
