"""What Vivado calls things on each processing-system IP: the IP, its board-preset rule, the CONFIG properties
that enable the address map's ports, clock and interrupt, and the pins and address segments behind them.

The address map (`dynq.contract.address_map`) names the ports (`M_AXI_GP0`, `S_AXI_HP0_FPD`, ...) and the
board file picks the PL clock; this module only translates those choices into the PS IP's own vocabulary,
which differs between the Zynq-7000 PS7 and the Zynq UltraScale+ PS (e.g. the MPSoC enables its HP0 port
with `PSU__USE__S_AXI_GP2` and lists its address segments under `SAXIGP2`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dynq.boards import Board
from dynq.contract import address_map as amap
from dynq.errors import DynqError


class PsError(DynqError, ValueError):
    """The address map asks for a PS port this module cannot configure."""


@dataclass(frozen=True)
class PsPort:
    """One AXI port of the PS: the CONFIG property that enables it and the pin that clocks it."""

    enable: str
    clock_pin: str


@dataclass(frozen=True)
class PsFamily:
    ip: str
    """VLNV without version: the build takes the newest the Vivado catalog has."""
    rule_config: dict[str, str]
    ports: dict[str, PsPort]
    """By the address map's port names."""
    unused_ports: tuple[str, ...]
    """CONFIG properties of ports the board preset may enable and the overlay leaves unconnected (an enabled,
    unclocked port fails validation)."""
    ddr_segments: dict[str, str]
    """By HP port: the PS's DDR address segment behind it (`<interface>/<segment>`)."""
    clock_pin: str
    reset_pin: str
    irq_pin: str
    clock_enable: str
    clock_freq: str
    """CONFIG property: requested PL clock in MHz ({n} is the clock)."""
    clock_actual: str
    """The `.hwh` parameter holding the PL clock Vivado could make, in MHz."""
    irq_config: dict[str, str]
    data_space: str = "Data"
    """The PS's master address space."""

    @property
    def name(self) -> str:
        """The IP's name: its instance's MODTYPE in a `.hwh` (what pynq's parser looks for)."""
        return self.ip.rsplit(":", 1)[1]

    @property
    def rule(self) -> str:
        """The board-automation rule that applies the board preset."""
        return f"xilinx.com:bd_rule:{self.name}"

    @property
    def instance(self) -> str:
        return f"{self.name}_0"

    def config(self, address_map: amap.AddressMap, pl_clock: int, clock_mhz: float) -> dict[str, str]:
        """CONFIG.* of the PS after the board preset: the map's master and HP port on, the other masters off,
        the PL clock at `clock_mhz`, the fabric interrupt on."""
        values = {prop: "0" for prop in self.unused_ports}
        for port in (address_map.master, address_map.ddr.name):
            values[self.port(port).enable] = "1"
        values[self.clock_enable.format(n=pl_clock)] = "1"
        values[self.clock_freq.format(n=pl_clock)] = f"{clock_mhz:g}"
        values.update(self.irq_config)
        return {f"CONFIG.{k}": v for k, v in values.items()}

    def port(self, name: str) -> PsPort:
        if name not in self.ports:
            raise PsError(f"the address map uses the PS port {name}, which dynq.overlay.ps cannot configure on "
                          f"{self.ip} (known: {', '.join(self.ports)}); add it to FAMILIES")
        return self.ports[name]

    def ddr_segment(self, port: str) -> str:
        self.port(port)
        return self.ddr_segments[port]


FAMILIES: dict[str, PsFamily] = {
    "ps7": PsFamily(
        ip="xilinx.com:ip:processing_system7",
        rule_config={"make_external": "FIXED_IO, DDR", "apply_board_preset": "1", "Master": "Disable",
                     "Slave": "Disable"},
        ports={"M_AXI_GP0": PsPort("PCW_USE_M_AXI_GP0", "M_AXI_GP0_ACLK"),
               "S_AXI_HP0": PsPort("PCW_USE_S_AXI_HP0", "S_AXI_HP0_ACLK")},
        unused_ports=("PCW_USE_M_AXI_GP1",),
        ddr_segments={"S_AXI_HP0": "S_AXI_HP0/HP0_DDR_LOWOCM"},
        clock_pin="FCLK_CLK{n}", reset_pin="FCLK_RESET0_N", irq_pin="IRQ_F2P",
        clock_enable="PCW_EN_CLK{n}_PORT", clock_freq="PCW_FPGA{n}_PERIPHERAL_FREQMHZ",
        clock_actual="PCW_ACT_FPGA{n}_PERIPHERAL_FREQMHZ",
        irq_config={"PCW_USE_FABRIC_INTERRUPT": "1", "PCW_IRQ_F2P_INTR": "1"}),
    "zynq_ultra_ps_e": PsFamily(
        ip="xilinx.com:ip:zynq_ultra_ps_e",
        rule_config={"apply_board_preset": "1"},
        ports={"M_AXI_HPM0_FPD": PsPort("PSU__USE__M_AXI_GP0", "maxihpm0_fpd_aclk"),
               "S_AXI_HP0_FPD": PsPort("PSU__USE__S_AXI_GP2", "saxihp0_fpd_aclk")},
        unused_ports=("PSU__USE__M_AXI_GP1", "PSU__USE__M_AXI_GP2"),
        ddr_segments={"S_AXI_HP0_FPD": "SAXIGP2/HP0_DDR_LOW"},
        clock_pin="pl_clk{n}", reset_pin="pl_resetn0", irq_pin="pl_ps_irq0",
        clock_enable="PSU__FPGA_PL{n}_ENABLE", clock_freq="PSU__CRL_APB__PL{n}_REF_CTRL__FREQMHZ",
        clock_actual="PSU__CRL_APB__PL{n}_REF_CTRL__ACT_FREQMHZ",
        irq_config={"PSU__USE__IRQ0": "1"}),
}
"""By the board file's `ps` (which is also the address map's key)."""


def family(board: Board) -> PsFamily:
    try:
        return FAMILIES[board.ps]
    except KeyError:
        raise PsError(f"board {board.name}: no Vivado setup for the processing system {board.ps!r}; known: "
                      f"{', '.join(FAMILIES)}") from None
