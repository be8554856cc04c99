"""The overlay's address map: where the PS reaches the core's registers and the AXI DMA, and which memory
the DMA reaches, per processing-system family.

The Vivado block-design generator assigns these addresses and configures the DMA with `DMA_CONFIG`; the
host driver takes the same numbers from here when no `.hwh` is at hand (board-free, or to cross-check an
overlay's `ip_dict`). Nothing else writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dynq.contract.registers import ADDRESS_SPACE, XFER_ALIGN
from dynq.errors import DynqError

if TYPE_CHECKING:
    from dynq.boards import Board


class AddressMapError(DynqError, ValueError):
    """No address map for a board's processing system, or an overlay lacks one of the map's IP blocks."""


@dataclass(frozen=True)
class Segment:
    """One address range: an IP's register window, or the memory the DMA reaches."""

    name: str
    """The block-design instance name (the key of `pynq.Overlay(...).ip_dict`); for memory, the PS port."""
    base: int
    size: int

    def __contains__(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


@dataclass(frozen=True)
class AddressMap:
    ps: str
    """The board file's `ps`: the Vivado processing-system IP."""
    cpu: str
    """The PS's application processor as Linux names it (`uname -m`): what a PYNQ.remote client learns of a
    board it reaches over the network, and so how it picks the map."""
    master: str
    """The PS's general-purpose AXI master port that carries the register accesses."""
    core: Segment
    dma: Segment
    ddr: Segment
    """The DDR window the DMA's memory-mapped masters are assigned (through a high-performance slave port);
    `name` is that PS port."""


CORE_INSTANCE = "dynq_core"
DMA_INSTANCE = "axi_dma"
DMA_RANGE = 0x1_0000
"""Vivado's register window of the AXI DMA IP."""
DMA_LENGTH_BITS = 26
"""`c_sg_length_width`: the widest LENGTH register the IP offers (transfers up to 64 MiB - 1)."""

DMA_CONFIG: dict[str, str] = {
    "c_include_sg": "0",
    "c_micro_dma": "0",
    "c_sg_length_width": str(DMA_LENGTH_BITS),
    "c_include_mm2s": "1",
    "c_include_s2mm": "1",
    "c_include_mm2s_dre": "0",
    "c_include_s2mm_dre": "0",
    "c_m_axi_mm2s_data_width": str(8 * XFER_ALIGN),
    "c_m_axi_s2mm_data_width": str(8 * XFER_ALIGN),
    "c_m_axis_mm2s_tdata_width": str(8 * XFER_ALIGN),
    "c_s_axis_s2mm_tdata_width": str(8 * XFER_ALIGN),
}
"""The AXI DMA's configuration (Vivado `CONFIG.<key>`, as a `.hwh` lists it and pynq's DMA driver reads it):
simple mode, both channels, streams as wide as the core's 32-bit beats, no realignment engine (buffers from
`pynq.allocate` are page aligned)."""

MAPS: dict[str, AddressMap] = {
    "ps7": AddressMap(
        ps="ps7", cpu="armv7l", master="M_AXI_GP0",
        core=Segment(CORE_INSTANCE, 0x43C0_0000, ADDRESS_SPACE),
        dma=Segment(DMA_INSTANCE, 0x4040_0000, DMA_RANGE),
        ddr=Segment("S_AXI_HP0", 0x0000_0000, 0x4000_0000)),
    "zynq_ultra_ps_e": AddressMap(
        ps="zynq_ultra_ps_e", cpu="aarch64", master="M_AXI_HPM0_FPD",
        core=Segment(CORE_INSTANCE, 0xA000_0000, ADDRESS_SPACE),
        dma=Segment(DMA_INSTANCE, 0xA001_0000, DMA_RANGE),
        ddr=Segment("S_AXI_HP0_FPD", 0x0000_0000, 0x8000_0000)),
}
"""Per processing-system family. The register windows are where Vivado's address editor puts the first IP on
each master port. `ddr` here is the most DDR the HP port maps (Zynq-7000: up to 1 GiB from 0 through HP0;
Zynq UltraScale+: the low 2 GiB through HP0_FPD); a board's window is the part of it that its DDR fills
(`for_board`), so the board file's `[overlay] ddr_bytes` is the one source of a board's window."""


def for_board(board: Board) -> AddressMap:
    """The address map of `board`'s overlay: its PS family's map, the DDR window cut to the board's DDR."""
    try:
        family = MAPS[board.ps]
    except KeyError:
        raise AddressMapError(f"board {board.name}: no overlay address map for the processing system "
                              f"{board.ps!r}; known: {', '.join(MAPS)}") from None
    return replace(family, ddr=_window(family.ddr, board.overlay.ddr_bytes))


def for_cpu(cpu: str) -> AddressMap:
    """The address map of the overlay on a board whose processor is `cpu` (`uname -m`, as pynq's remote
    client reports it): the PS family's map, with the DDR window every board of that processor has."""
    from dynq import boards

    for family in MAPS.values():
        if family.cpu == cpu:
            sizes = [b.overlay.ddr_bytes for b in map(boards.load, boards.names()) if b.ps == family.ps]
            return replace(family, ddr=_window(family.ddr, min(sizes, default=family.ddr.size)))
    raise AddressMapError(f"no overlay address map for a board with a {cpu!r} processor; known: "
                          f"{', '.join(m.cpu for m in MAPS.values())}")


def _window(aperture: Segment, ddr_bytes: int) -> Segment:
    return replace(aperture, size=min(aperture.size, ddr_bytes))
