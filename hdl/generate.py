"""Verilog (and VHDL) from the MyHDL sources, for one board's architecture."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

from dynq.boards import load
from dynq.errors import DynqError
from dynq.hdl.conv import PE_MODULE, pe, pe_ports
from dynq.hdl.core import dynq_core, ports

TOP = "dynq_core"
HERE = Path(__file__).resolve().parent
_NOT_CORE = frozenset({"sim.py", "bench_sim.py", "synth.py"})
"""Modules of `dynq.hdl` that drive or measure the converted core rather than make it."""
_HEADER_LINE = re.compile(r"^// (File|Date):.*\n", re.MULTILINE)


class ConversionError(DynqError, RuntimeError):
    """MyHDL could not convert the core."""


def generate(board_name: str, out_dir: Path, hdl: str = "Verilog") -> Path:
    """Converts the core for `board_name` into `out_dir/dynq_core.v` (or `.vhd`); returns the file.

    The PE is converted once as its own module (`conv.PE_MODULE`): in Verilog it follows the core in the
    same file, in VHDL it is `dynq_pe.vhd` beside it."""
    board = load(board_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "v" if hdl == "Verilog" else "vhd"
    options = {"testbench": False} if hdl == "Verilog" else {}
    with warnings.catch_warnings():
        # WSTRB is unused by design (whole-word registers); any other converter warning stays visible
        warnings.filterwarnings("ignore", message=".*Port is not used: s_axil_wstrb")
        dynq_core(board, **ports(board)).convert(hdl=hdl, path=str(out_dir), name=TOP, **options)
        pe(**pe_ports()).convert(hdl=hdl, path=str(out_dir), name=PE_MODULE, **options)
    core_file, pe_file = out_dir / f"{TOP}.{suffix}", out_dir / f"{PE_MODULE}.{suffix}"
    if hdl == "Verilog":
        core_file.write_text(core_file.read_text() + "\n" + normalized(pe_file.read_text()))
        pe_file.unlink()
    return core_file


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


def normalized(verilog_text: str) -> str:
    """The Verilog without MyHDL's `// File:` / `// Date:` header lines (path and time of conversion)."""
    return _HEADER_LINE.sub("", verilog_text)


def sources_key(board_name: str) -> str:
    """Hash of everything the converted Verilog depends on: the core's `dynq.hdl` modules, `dynq.contract`,
    `dynq.errors`, the board loader, the board's architecture table and the MyHDL version. The core reads
    only the architecture, so boards with the same one (pynq-z1, pynq-z2) share a conversion."""
    import dynq.contract
    import dynq.errors
    from dynq import boards

    arch = json.dumps(load(board_name).arch.as_dict(), sort_keys=True)
    files = [Path(dynq.errors.__file__).resolve(), Path(boards.__file__).resolve()]
    files += sorted(Path(dynq.contract.__file__).resolve().parent.glob("*.py"))
    files += sorted(p for p in HERE.glob("*.py") if p.name not in _NOT_CORE)
    h = hashlib.sha256(f"{arch}\0{metadata.version('myhdl')}\0".encode())
    for p in files:
        h.update(f"{p.parent.name}/{p.name}\0".encode())
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def cached_verilog(board_name: str, quiet: bool = True) -> str:
    """The core's Verilog for `board_name` (normalized), converted once per version of its sources.

    MyHDL's output depends on the process: signal order follows Python's string hashing, and instance names
    gain suffixes when a block was converted before in the same process. The conversion therefore runs in a
    fresh interpreter with PYTHONHASHSEED=0, so the same sources always give the same text (and the same
    simulator and synthesis cache keys)."""
    from dynq.contract.artifacts import atomic_path
    from dynq.zoo.data import cache_dir

    key = sources_key(board_name)
    path = cache_dir() / "hdl" / f"{key}.v"
    if path.is_file():
        return path.read_text()
    if not quiet:
        print(f"dynq: converting the MyHDL core to Verilog for {board_name} ...", file=sys.stderr, flush=True)
    code = "import sys; from pathlib import Path; from dynq.hdl.generate import generate; " \
           "generate(sys.argv[1], Path(sys.argv[2]))"
    with tempfile.TemporaryDirectory(prefix="dynq-hdl-") as tmp:
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, board_name, tmp], capture_output=True,
                              text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        out = Path(tmp) / f"{TOP}.v"
        if proc.returncode != 0 or not out.is_file():
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ConversionError(f"cannot convert the MyHDL core to Verilog for board {board_name}: {last}")
        text = normalized(out.read_text())
    if sources_key(board_name) == key:  # not edited during the conversion
        with atomic_path(path) as tmp_path:
            tmp_path.write_text(text)
    return text
