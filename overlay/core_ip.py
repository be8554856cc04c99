"""The dynq core as a Vivado IP: its VLNV, its bus interfaces (derived port by port from the MyHDL core's
top-level ports) and the user parameters that carry the architecture into the `.hwh`."""

from __future__ import annotations

from dataclasses import dataclass, field

from dynq.boards import Board
from dynq.contract import CONTRACT_VERSION
from dynq.errors import DynqError
from dynq.hdl.core import ports
from dynq.hdl.generate import TOP

VENDOR, LIBRARY, VERSION = "dynq", "user", "1.0"
VLNV = f"{VENDOR}:{LIBRARY}:{TOP}:{VERSION}"
"""The packaged core's VLNV: the `type` of its `ip_dict` entry in pynq."""

FINGERPRINT_PARAMETER = "DYNQ_FINGERPRINT"
"""User parameter of the IP: the architecture fingerprint (`0x%08X`), as the .hwh lists it."""
CONTRACT_PARAMETER = "DYNQ_CONTRACT"

REG_INTERFACE, STREAM_IN, STREAM_OUT = "s_axil", "s_axis", "m_axis"
CLOCK, RESET, IRQ = "clk", "aresetn", "irq"
REG_BLOCK = "reg0"
"""The address block of the register window (its segment in the block design is `s_axil/reg0`)."""

_AXIMM = ("xilinx.com:interface:aximm:1.0", "xilinx.com:interface:aximm_rtl:1.0")
_AXIS = ("xilinx.com:interface:axis:1.0", "xilinx.com:interface:axis_rtl:1.0")
_BUSES = {REG_INTERFACE: ("slave", _AXIMM), STREAM_IN: ("slave", _AXIS), STREAM_OUT: ("master", _AXIS)}
"""Bus interfaces by port-name prefix: `s_axil_awaddr` is AWADDR of `s_axil`."""


class CoreInterfaceError(DynqError, RuntimeError):
    """The core has a port no interface claims (a new port needs a line here)."""


@dataclass(frozen=True)
class Interface:
    name: str
    mode: str
    bus: str
    abstraction: str
    ports: dict[str, str]
    """Logical port (Vivado's name in the interface) -> the core's port."""
    parameters: dict[str, str] = field(default_factory=dict)

    def as_tcl(self) -> dict[str, object]:
        return {"mode": self.mode, "bus": self.bus, "abstraction": self.abstraction, "ports": self.ports,
                "parameters": self.parameters}


def interfaces(board: Board) -> dict[str, Interface]:
    """Every top-level port of the core in exactly one interface: the three AXI buses by prefix, and clock
    (associated with all three), active-low reset and level interrupt by name."""
    names = list(ports(board))
    buses = {prefix: Interface(prefix, mode, bus, abstraction, {})
             for prefix, (mode, (bus, abstraction)) in _BUSES.items()}
    signals = {
        CLOCK: Interface(CLOCK, "slave", "xilinx.com:signal:clock:1.0", "xilinx.com:signal:clock_rtl:1.0",
                         {"CLK": CLOCK}, {"ASSOCIATED_BUSIF": ":".join(_BUSES), "ASSOCIATED_RESET": RESET}),
        RESET: Interface(RESET, "slave", "xilinx.com:signal:reset:1.0", "xilinx.com:signal:reset_rtl:1.0",
                         {"RST": RESET}, {"POLARITY": "ACTIVE_LOW"}),
        IRQ: Interface(IRQ, "master", "xilinx.com:signal:interrupt:1.0", "xilinx.com:signal:interrupt_rtl:1.0",
                       {"INTERRUPT": IRQ}, {"SENSITIVITY": "LEVEL_HIGH"}),
    }
    for name in names:
        bus = next((prefix for prefix in buses if name.startswith(f"{prefix}_")), None)
        if bus is not None:
            buses[bus].ports[name.removeprefix(f"{bus}_").upper()] = name
        elif name not in signals:
            raise CoreInterfaceError(f"core port {name} belongs to no IP interface; map it in dynq.overlay.core_ip")
    missing = [s for s in signals if s not in names] + [b for b, i in buses.items() if not i.ports]
    if missing:
        raise CoreInterfaceError(f"the core has no port(s) for {', '.join(missing)}; update dynq.overlay.core_ip")
    return {**buses, **signals}


def user_parameters(board: Board) -> dict[str, str]:
    return {FINGERPRINT_PARAMETER: f"0x{board.arch.fingerprint:08X}", CONTRACT_PARAMETER: str(CONTRACT_VERSION)}


def reg_width(board: Board) -> int:
    """Bits of a register access: the AXI4-Lite data port's width."""
    return len(ports(board)[f"{REG_INTERFACE}_wdata"])
