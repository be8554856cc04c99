"""The overlay package (`dynq.bit`, `dynq.hwh`, `overlay.json`) and its check.

`overlay.json` is written by dynq when it generates the build (as `overlay.json.in`) and completed by
Vivado's build script with the Vivado version, so a build run on another machine, without dynq, still
produces a full package. The check reads the `.hwh` with pynq's own parser, the one `pynq.Overlay` uses on
the board, and compares what the runtime will find there (instance names, addresses, the DMA's
configuration, the core's architecture fingerprint) with the contract and the board file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dynq import boards
from dynq.boards import Board
from dynq.contract import CONTRACT_VERSION, Segment
from dynq.contract import address_map as amap
from dynq.errors import DynqError
from dynq.overlay import core_ip, ps

PACKAGE_DIR = "package"
"""Where a build puts the package, inside its output directory."""
BITSTREAM, HWH, MANIFEST = "dynq.bit", "dynq.hwh", "overlay.json"
TEMPLATE = "overlay.json.in"
VIVADO_PLACEHOLDER = "@VIVADO_VERSION@"
FORMAT = 1


class OverlayCheckError(DynqError, RuntimeError):
    """An overlay package is incomplete, unreadable, or does not match the contract, the board or a build."""


def manifest(board: Board, verilog_sha256: str) -> dict[str, Any]:
    """`overlay.json` as dynq writes it; the build script replaces VIVADO_PLACEHOLDER with its version."""
    m = amap.for_board(board)
    return {
        "format": FORMAT, "board": board.name, "part": board.part, "board_part": board.overlay.board_part,
        "contract": CONTRACT_VERSION, "fingerprint": board.arch.fingerprint, "arch": board.arch.as_dict(),
        "address_map": {"ps": m.ps, "master": m.master,
                        **{s: _segment(getattr(m, s)) for s in ("core", "dma", "ddr")}},
        "dma_config": dict(amap.DMA_CONFIG), "core_vlnv": core_ip.VLNV, "verilog_sha256": verilog_sha256,
        "files": {"bitstream": BITSTREAM, "hwh": HWH},
        "tools": {"vivado": VIVADO_PLACEHOLDER, "dynq": metadata.version("dynq"),
                  "myhdl": metadata.version("myhdl")},
    }


def _segment(s: Segment) -> dict[str, Any]:
    return {"name": s.name, "base": s.base, "size": s.size}


def template(board: Board, verilog_sha256: str) -> str:
    return json.dumps(manifest(board, verilog_sha256), indent=1) + "\n"


def locate(path: Path) -> Path:
    """The package directory: `path` itself, or `path/package` for a build's output directory."""
    if not (path / MANIFEST).is_file() and (path / PACKAGE_DIR / MANIFEST).is_file():
        return path / PACKAGE_DIR
    return path


@dataclass
class Report:
    """What a package holds, once checked."""

    path: Path
    board: str
    fingerprint: int
    vivado: str
    pl_clock_mhz: float | None
    address_map: amap.AddressMap
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        m = self.address_map
        clock = "not in the .hwh" if self.pl_clock_mhz is None else f"{self.pl_clock_mhz:g} MHz"
        return [f"overlay package {self.path}: {self.board}, fingerprint {self.fingerprint:08x}, Vivado "
                f"{self.vivado}, PL clock {clock}",
                *(f"  {s.name}: 0x{s.base:08x} + 0x{s.size:x}" for s in (m.core, m.dma)),
                f"  DDR through {m.ddr.name}: 0x{m.ddr.base:08x} + 0x{m.ddr.size:x}",
                *(f"  note: {n}" for n in self.notes)]


def check(path: Path, build: Path | None = None) -> Report:
    """Checks the package at `path` (or `path/package`): its files, `overlay.json` and the `.hwh` against the
    contract's address map, DMA configuration and the board's fingerprint; with `build`, that the compiled
    build is for this overlay and fits its memories. Raises OverlayCheckError listing every mismatch."""
    pkg = locate(Path(path))
    missing = [n for n in (BITSTREAM, HWH, MANIFEST) if not (pkg / n).is_file()]
    if missing:
        raise OverlayCheckError(f"{pkg}: not a complete dynq overlay package (missing {', '.join(missing)}); "
                                "build it with `dynq overlay build` (or the build.tcl it writes)")
    meta = _read_manifest(pkg / MANIFEST)
    board = boards.load(str(meta["board"]))
    expected = amap.for_board(board)
    problems = _check_manifest(meta, board, expected)
    parser = _parse_hwh(pkg / HWH, board)
    problems += _check_hwh(parser, board, expected)
    if build is not None:
        problems += _check_build(Path(build), board)
    if problems:
        raise OverlayCheckError(f"{pkg}: " + "; ".join(problems))
    clock = _pl_clock(parser, board)
    report = Report(pkg, board.name, board.arch.fingerprint, str(meta["tools"]["vivado"]), clock, expected)
    if clock is not None and abs(clock - board.arch.clock_mhz) > 0.01 * board.arch.clock_mhz:
        report.notes.append(f"the PS makes {clock:g} MHz of the {board.arch.clock_mhz:g} MHz the board file asks "
                            "for: cycle counts hold, times and energy estimates scale by the ratio")
    return report


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
        meta["board"], meta["fingerprint"], meta["address_map"], meta["tools"]["vivado"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise OverlayCheckError(f"{path}: unreadable overlay manifest ({type(exc).__name__}: {exc}); rebuild "
                                "the overlay") from exc
    return meta


def _check_manifest(meta: dict[str, Any], board: Board, expected: amap.AddressMap) -> list[str]:
    problems = []
    if meta["tools"]["vivado"] == VIVADO_PLACEHOLDER:
        problems.append(f"{MANIFEST} is the template dynq writes, not what a Vivado build completed: build the "
                        "package with build.tcl (`dynq overlay build` runs it)")
    if meta.get("contract") != CONTRACT_VERSION:
        problems.append(f"{MANIFEST} was written for contract {meta.get('contract')}, this dynq has "
                        f"{CONTRACT_VERSION}: rebuild the overlay with `dynq overlay build --board {board.name}`")
    if meta["fingerprint"] != board.arch.fingerprint:
        problems.append(f"{MANIFEST} gives fingerprint {_hex(meta['fingerprint'])}, {board.name}'s architecture "
                        f"is {board.arch.fingerprint:08x}: the overlay was made from another board file or dynq; "
                        f"rebuild it with `dynq overlay build --board {board.name}`")
    want = {"ps": expected.ps, "master": expected.master,
            **{s: _segment(getattr(expected, s)) for s in ("core", "dma", "ddr")}}
    for key, value in want.items():
        if meta["address_map"].get(key) != value:
            problems.append(f"{MANIFEST}: address map {key} is {meta['address_map'].get(key)}, the contract's is "
                            f"{value}: rebuild the overlay with `dynq overlay build --board {board.name}`")
    return problems


def _parse_hwh(path: Path, board: Board) -> Any:
    """pynq's parser for the board's PS family (on x86 pynq's `HWH` is a base class that knows no PS, so
    the family's class is picked here as pynq picks it on the board by CPU)."""
    from pynq.pl_server import hwh_parser

    parser_class = {"ps7": hwh_parser._HWHZynq, "zynq_ultra_ps_e": hwh_parser._HWHUltrascale}[board.ps]
    try:
        parser = parser_class(hwh_name=str(path))
    except Exception as exc:  # ElementTree, AttributeError on a missing element, ...: one line for the user
        raise OverlayCheckError(f"{path}: pynq's .hwh parser cannot read it ({type(exc).__name__}: {exc}); copy "
                                "the .hwh of the same Vivado build again") from exc
    if not parser.ps_name:
        raise OverlayCheckError(f"{path}: no {ps.family(board).name} processing system in it: the overlay is not "
                                f"for {board.name} ({board.ps}); build it with `dynq overlay build --board "
                                f"{board.name}`")
    return parser


def _check_hwh(parser: Any, board: Board, expected: amap.AddressMap) -> list[str]:
    ips = parser.ip_dict
    rebuild = f"rebuild the overlay with `dynq overlay build --board {board.name}`"
    problems = []
    for segment in (expected.core, expected.dma):
        ip = ips.get(segment.name)
        if ip is None:
            problems.append(f"{HWH} has no IP named {segment.name} (it has: {', '.join(sorted(ips))}); the runtime "
                            f"looks it up by that name: {rebuild}")
        elif (ip["phys_addr"], ip["addr_range"]) != (segment.base, segment.size):
            problems.append(f"{HWH} puts {segment.name} at 0x{ip['phys_addr']:08x} (range 0x{ip['addr_range']:x}), "
                            f"the contract's address map at 0x{segment.base:08x} (range 0x{segment.size:x}): "
                            f"{rebuild}")
    core = ips.get(expected.core.name)
    if core is not None:
        params = core["parameters"]
        value = params.get(core_ip.FINGERPRINT_PARAMETER)
        if value is None or _int(value) != board.arch.fingerprint:
            problems.append(f"{HWH}: the core's {core_ip.FINGERPRINT_PARAMETER} is {value}, {board.name}'s "
                            f"architecture is 0x{board.arch.fingerprint:08X}: the bitstream holds a core for "
                            f"another architecture; {rebuild}")
        if core.get("type") != core_ip.VLNV:
            problems.append(f"{HWH}: {expected.core.name} is a {core.get('type')}, not {core_ip.VLNV}: {rebuild}")
    dma = ips.get(expected.dma.name)
    if dma is not None:
        wrong = {k: dma["parameters"].get(k) for k, v in amap.DMA_CONFIG.items() if dma["parameters"].get(k) != v}
        if wrong:
            problems.append(f"{HWH}: the DMA's configuration differs from the contract's "
                            f"({', '.join(f'{k}={v} instead of {amap.DMA_CONFIG[k]}' for k, v in wrong.items())}): "
                            f"{rebuild}")
    problems += _check_ddr(parser, board, expected, rebuild)
    return problems


def _check_ddr(parser: Any, board: Board, expected: amap.AddressMap, rebuild: str) -> list[str]:
    """The DMA's masters see the DDR window through the HP port. pynq keeps only the PS's slaves in `ip_dict`,
    so this reads the DMA's own MEMORYMAP from the tree pynq parsed. The PS's slave interface is named by its
    port (`S_AXI_HP0_FPD`) or by its memory map (`SAXIGP2`, as in the address segment's path)."""
    want = (expected.ddr.base, expected.ddr.base + expected.ddr.size - 1)
    port_names = {expected.ddr.name, ps.family(board).ddr_segment(expected.ddr.name).split("/")[0]}
    seen: dict[str, tuple[int, int]] = {}
    for module in parser.root.iter("MODULE"):
        if module.get("INSTANCE") != expected.dma.name:
            continue
        for r in module.iter("MEMRANGE"):
            if r.get("SLAVEBUSINTERFACE") in port_names and r.get("MEMTYPE") == "MEMORY":
                seen[r.get("MASTERBUSINTERFACE", "?")] = (int(r.get("BASEVALUE"), 16), int(r.get("HIGHVALUE"), 16))
    problems = []
    for master in ("M_AXI_MM2S", "M_AXI_S2MM"):
        if master not in seen:
            problems.append(f"{HWH}: the DMA's {master} reaches no DDR through {expected.ddr.name}: {rebuild}")
        elif seen[master] != want:
            lo, hi = seen[master]
            problems.append(f"{HWH}: the DMA's {master} sees DDR at 0x{lo:x}-0x{hi:x}, the contract's window is "
                            f"0x{want[0]:x}-0x{want[1]:x}: {rebuild}")
    return problems


def _check_build(path: Path, board: Board) -> list[str]:
    """The build is for this overlay's architecture and its program, weights and arena fit the memories."""
    from dynq.runtime.artifacts import open_build

    build = open_build(path)
    if build.fingerprint != board.arch.fingerprint:
        return [f"the build {path} was compiled for {build.board} (architecture {build.fingerprint:08x}), this "
                f"overlay is {board.name}'s ({board.arch.fingerprint:08x}): compile it with --board {board.name} "
                f"or build the {build.board} overlay"]
    arch = board.arch
    needs = {"program": (len(build.program), arch.imem_bytes, "instruction memory"),
             "weights": (len(build.weights), arch.wmem_bytes, "weight memory"),
             "arena": (int(build.manifest["arena_bytes"]), arch.amem_bytes, "activation arena")}
    return [f"the build {path}: its {what} takes {used:,} bytes, the overlay's {memory} holds {cap:,}; use a "
            f"smaller model or a board with more on-chip memory"
            for what, (used, cap, memory) in needs.items() if used > cap]


def _pl_clock(parser: Any, board: Board) -> float | None:
    """The PL clock Vivado could make, from the PS's parameters in the .hwh."""
    name = ps.family(board).clock_actual.format(n=board.overlay.pl_clock)
    value = parser.ip_dict.get(parser.ps_name, {}).get("parameters", {}).get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str) -> int | None:
    try:
        return int(str(value), 0)
    except ValueError:
        return None


def _hex(value: object) -> str:
    return f"{value:08x}" if isinstance(value, int) else repr(value)
