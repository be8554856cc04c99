"""Board descriptions, as data: part, PS, PE-array shape, buffer sizes, clock, resource capacity and what
the Vivado build needs.

Compiler, emulator, HDL generator and overlay build all read the same `<name>.toml`; the `[arch]`
table is what a compiled model depends on, and its fingerprint ties a build to matching overlays. The
`[overlay]` table is what only the overlay build reads (board preset, PL clock, DDR size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import tomllib

from dynq.contract import CONTRACT_VERSION
from dynq.contract.array import BLOCK, REGION_MAX, is_pow2
from dynq.contract.artifacts import fingerprint
from dynq.errors import DynqError


class BoardError(DynqError, ValueError):
    """Unknown board name or a malformed board file."""


@dataclass(frozen=True)
class Arch:
    """The architecture parameters that compiled programs depend on."""

    rows: int
    cols: int
    imem_bytes: int
    wmem_bytes: int
    amem_bytes: int
    clock_mhz: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def fingerprint(self) -> int:
        return fingerprint(self.as_dict(), CONTRACT_VERSION)


PL_CLOCKS = 4
"""Both PS families drive the PL with four clocks (FCLK_CLK0..3 on the PS7, pl_clk0..3 on the MPSoC)."""


@dataclass(frozen=True)
class Overlay:
    """What the Vivado build of the board's overlay needs beyond part and PS (`dynq.overlay`)."""

    board_part: str
    """Vivado board preset (`vendor:board:part0:version`): the PS's DDR, MIO and clock setup come from it."""
    pl_clock: int
    """Which of the PS's PL clocks drives the core, the DMA and the interconnect (at `arch.clock_mhz`)."""
    ddr_bytes: int
    """The PS's DDR on this board; the DMA's memory window is the part of it the HP port maps."""


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    family: str
    ps: str
    arch: Arch
    capacity: dict[str, int]
    overlay: Overlay


def names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml"))


@cache
def load(name: str) -> Board:
    """Reads `boards/<name>.toml`; unknown names list the known ones."""
    path = resources.files(__package__) / f"{name}.toml"
    if not path.is_file():
        raise BoardError(f"unknown board {name!r}; known boards: {', '.join(names())}")
    try:
        data = tomllib.loads(path.read_text())
        board = Board(data["name"], data["part"], data["family"], data["ps"], Arch(**data["arch"]),
                      dict(data["capacity"]), Overlay(**data["overlay"]))
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise BoardError(f"board file {name}.toml is malformed: {exc}") from exc
    overlay = board.overlay
    if overlay.board_part.count(":") != 3:
        raise BoardError(f"board file {name}.toml: [overlay] board_part {overlay.board_part!r} is not a Vivado "
                         "board part (vendor:board:part0:version)")
    if not 0 <= overlay.pl_clock < PL_CLOCKS:
        raise BoardError(f"board file {name}.toml: [overlay] pl_clock={overlay.pl_clock}; the PS has PL clocks "
                         f"0..{PL_CLOCKS - 1}")
    if overlay.ddr_bytes <= 0:
        raise BoardError(f"board file {name}.toml: [overlay] ddr_bytes={overlay.ddr_bytes} must be positive")
    rows = board.arch.rows
    least = max(2 * BLOCK, REGION_MAX)
    if not is_pow2(rows) or rows < least:
        raise BoardError(f"board file {name}.toml: rows={rows} must be a power of two of at least {least} "
                         "(a reduction-split chunk takes rows/BLOCK >= 2 weight words; a window covers a DRQ region)")
    return board
