"""The design that `tests/vivado_stub.tcl` recorded, and a `.hwh` made from it.

`Design` rebuilds from the call list what the scripts asked Vivado for: projects, the packaged core's
interfaces, block-design cells with their CONFIG, automation, interface and net connections, and address
assignments. `hwh` writes the minimum of a Vivado hardware handoff that pynq's parser reads (modules with
MODTYPE, VLNV and PARAMETERS, the PS's and the DMA's MEMORYMAP, ports by net, the PS clock parameters),
from the recorded design alone, so a wrong address or parameter in the scripts shows in the `.hwh`.

Run as a script (`python vivado_record.py RECORD.json OUT.hwh`) it is the stub's $DYNQ_STUB_HWH writer.
Standard library only: the stub runs it with whatever Python the test gives.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

PS_CLOCKS = {
    # MODTYPE: (requested MHz, actual MHz, divisor, enable) parameter patterns; pynq reads the last two
    "processing_system7": (r"PCW_FPGA(\d)_PERIPHERAL_FREQMHZ", "PCW_ACT_FPGA{n}_PERIPHERAL_FREQMHZ",
                           "PCW_FCLK{n}_PERIPHERAL_DIVISOR{d}", "PCW_FPGA_FCLK{n}_ENABLE"),
    "zynq_ultra_ps_e": (r"PSU__CRL_APB__PL(\d)_REF_CTRL__FREQMHZ", "PSU__CRL_APB__PL{n}_REF_CTRL__ACT_FREQMHZ",
                        "PSU__CRL_APB__PL{n}_REF_CTRL__DIVISOR{d}", "PSU__FPGA_PL{n}_ENABLE"),
}


@dataclass
class Design:
    calls: list[list[str]]
    props: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    projects: list[tuple[str, str, str]] = field(default_factory=list)
    cells: dict[str, str] = field(default_factory=dict)
    automation: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    intf_nets: list[tuple[str, str]] = field(default_factory=list)
    nets: list[list[str]] = field(default_factory=list)
    addresses: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(address space, slave segment, offset, range)"""
    interfaces: list[str] = field(default_factory=list)
    """The core's bus interfaces as the packaging left them."""
    port_maps: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    bus_parameters: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    package: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Design:
        d = cls(json.loads(Path(path).read_text()))
        for cmd, *args in d.calls:
            if cmd == "set_property":
                handle, key, value = args
                d.props[handle][key] = value
            elif cmd == "create_project":
                d.projects.append((args[0], args[1], args[2]))
            elif cmd == "create_bd_cell":
                d.cells[args[0]] = args[1]
            elif cmd == "apply_bd_automation":
                d.automation[args[1]] = (args[0], dict(zip(args[2::2], args[3::2], strict=True)))
            elif cmd == "connect_bd_intf_net":
                d.intf_nets.append((args[0], args[1]))
            elif cmd == "connect_bd_net":
                d.nets.append(list(args))
            elif cmd == "assign_bd_address":
                d.addresses.append((args[0], args[1], int(args[2], 0), int(args[3], 0)))
            elif cmd == "ipx::package_project":
                d.package = {"root": args[0], "vendor": args[1], "library": args[2]}
            elif cmd == "ipx::add_bus_interface":
                d.interfaces.append(args[0])
            elif cmd == "ipx::remove_bus_interface" and args[0] in d.interfaces:
                d.interfaces.remove(args[0])
        for handle, values in d.props.items():
            kind, _, rest = handle.partition(":")
            if handle.startswith("ipx:portmap:"):
                busif, logical = rest.removeprefix("portmap:").split(":")
                d.port_maps[busif][logical] = values["physical_name"]
            elif handle.startswith("ipx:busparam:"):
                busif, name = rest.removeprefix("busparam:").split(":")
                d.bus_parameters[busif][name] = values["value"]
        return d

    # -- queries -------------------------------------------------------------------------------------------
    def config(self, cell: str) -> dict[str, str]:
        return {k.removeprefix("CONFIG."): v for k, v in self.props[f"bd:cell:{cell}"].items()
                if k.startswith("CONFIG.")}

    @property
    def core_vlnv(self) -> str:
        core = self.props["ipx:core"]
        return f"{self.package['vendor']}:{self.package['library']}:{core['name']}:{core['version']}"

    @property
    def user_parameters(self) -> dict[str, str]:
        return {h.rsplit(":", 1)[1]: v["value"] for h, v in self.props.items() if h.startswith("ipx:userparam:")}

    def cell_of_type(self, ip: str) -> str:
        """The one cell whose VLNV is `ip` (vendor:library:name) in any version."""
        found = [c for c, vlnv in self.cells.items() if vlnv.rsplit(":", 1)[0] == ip]
        assert len(found) == 1, f"cells of {ip}: {found}"
        return found[0]

    def reaches(self, pin: str) -> set[str]:
        """Interface pins connected to `pin`, directly or through one SmartConnect (in at one side, out at
        every port of the other)."""
        out = set()
        for other in self._direct(pin):
            cell, name = other.split("/", 1)
            if self.cells[cell].rsplit(":", 1)[0] != "xilinx.com:ip:smartconnect":
                out.add(other)
                continue
            far = "M" if name.startswith("S") else "S"
            for port in {p for net in self.intf_nets for p in net if p.startswith(f"{cell}/{far}")}:
                out |= self._direct(port)
        return out

    def _direct(self, pin: str) -> set[str]:
        return {b for a, b in self.intf_nets if a == pin} | {a for a, b in self.intf_nets if b == pin}

    def net_of(self, pin: str) -> set[str]:
        found = [set(n) for n in self.nets if pin in n]
        assert len(found) == 1, f"{pin} is on {len(found)} nets"
        return found[0]


def hwh(design: Design) -> str:
    """A hardware handoff for the recorded block design, as pynq's parser reads it."""
    root = ET.Element("EDKSYSTEM", EDWVERSION="1.2", VIVADOVERSION="stub")
    part = design.projects[-1][2]
    ET.SubElement(root, "SYSTEMINFO", DEVICE=part, NAME="dynq_bd",
                  BOARD=design.props[f"project:{design.projects[-1][0]}"].get("board_part", ""))
    ET.SubElement(root, "EXTERNALPORTS")
    modules = ET.SubElement(root, "MODULES")
    signames = {pin: f"net_{i}" for i, net in enumerate(design.nets) for pin in net}
    for cell, vlnv in design.cells.items():
        modtype = vlnv.split(":")[2]
        module = ET.SubElement(modules, "MODULE", FULLNAME=f"/{cell}", INSTANCE=cell, MODTYPE=modtype, VLNV=vlnv)
        parameters = ET.SubElement(module, "PARAMETERS")
        values = dict(design.config(cell))
        if vlnv == design.core_vlnv:
            values.update(design.user_parameters)
        if modtype in PS_CLOCKS:
            values.update(_ps_clocks(modtype, values))
        for name, value in values.items():
            ET.SubElement(parameters, "PARAMETER", NAME=name, VALUE=value)
        memory = ET.SubElement(module, "MEMORYMAP")
        for space, segment, offset, size in design.addresses:
            if space.split("/")[0] == cell:
                _memrange(memory, design, space, segment, offset, size)
        ports = ET.SubElement(module, "PORTS")
        for pin, signame in signames.items():
            if pin.split("/")[0] == cell:
                ET.SubElement(ports, "PORT", NAME=pin.split("/", 1)[1], SIGNAME=signame,
                              DIR="O" if any(n[0] == pin for n in design.nets) else "I")
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _ps_clocks(modtype: str, config: dict[str, str]) -> dict[str, str]:
    """The PS's clock parameters pynq's parser requires, and the actual frequency: the requested one (a real
    Vivado may round it)."""
    requested, actual, divisor, enable = PS_CLOCKS[modtype]
    freqs = {int(m.group(1)): v for k, v in config.items() if (m := re.fullmatch(requested, k))}
    out = {}
    for n in range(4):
        out[enable.format(n=n)] = "1" if n in freqs else "0"
        for d in range(2):
            out[divisor.format(n=n, d=d)] = "1"
        if n in freqs:
            out[actual.format(n=n)] = f"{float(freqs[n]):.6f}"
    return out


def _memrange(memory: ET.Element, design: Design, space: str, segment: str, offset: int, size: int) -> None:
    master_cell, space_name = space.split("/", 1)
    slave_cell, slave_interface, block = segment.split("/")
    if space_name == "Data":  # the PS's master space: through its (one) connected master port
        pins = {p for net in design.intf_nets for p in net if p.startswith(f"{master_cell}/M_")}
        master = pins.pop().split("/")[1]
    else:  # the DMA's Data_MM2S / Data_S2MM
        master = "M_AXI_" + space_name.removeprefix("Data_")
    ps_memory = design.cells[slave_cell].split(":")[2] in PS_CLOCKS
    ET.SubElement(memory, "MEMRANGE", ADDRESSBLOCK=block, BASENAME="C_BASEADDR", BASEVALUE=f"0x{offset:08X}",
                  HIGHNAME="C_HIGHADDR", HIGHVALUE=f"0x{offset + size - 1:08X}", INSTANCE=slave_cell,
                  IS_DATA="TRUE", IS_INSTRUCTION="TRUE", MASTERBUSINTERFACE=master,
                  MEMTYPE="MEMORY" if ps_memory else "REGISTER", SLAVEBUSINTERFACE=slave_interface)


if __name__ == "__main__":
    record, out = map(Path, sys.argv[1:3])
    out.write_text(hwh(Design.load(record)))
