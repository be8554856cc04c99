"""An 8-bit bit-parallel PE array (Eyeriss-like: each PE multiplies a whole 8-bit activation by an 8-bit
weight per cycle), modelled for comparison only: it is not the overlay.

It has the overlay's PE count and dataflow (lanes = output pixels, columns = output channels, the same
line fill, drain and layer setup), so it differs from the nibble-serial int8 array in one thing only:
an activation costs one step instead of its two nibble parts. Its cycles do not depend on the data.
That is the baseline the DRQ paper's "Eyeriss" comparison stands for, at equal PE count rather than at
equal area (a bit-parallel PE has an 8x8 multiplier where the nibble-serial PE has a 4x8 one).
"""

from __future__ import annotations

from dynq.contract import Op, timing
from dynq.contract.isa import Instr
from dynq.runtime.energy import ENERGY_PJ, layer_energy_uj

STEP_PJ = ENERGY_PJ["mac_8x8"]
"""Energy of one bit-parallel step: a full 8x8 multiply and the accumulate."""


def conv_counters(ins: Instr, rows: int, cols: int, batch: int) -> dict[str, int]:
    """The counters of one CONV instruction on the bit-parallel array, over `batch` images."""
    geom = timing.conv_geometry(ins, 1)
    counters = timing.conv_counters(None, batch, 1, geom, rows, cols, 0)
    values = batch * ins.cin * ins.ih * ins.iw
    return {**counters, "kept_parts": 2 * values, "total_parts": 2 * values}


def layer_costs(instructions: list[Instr], rows: int, cols: int, batch: int) -> dict[int, tuple[int, float]]:
    """(busy cycles, energy in uJ) of every layer with CONV instructions on the bit-parallel array; the
    other layers (pooling, additions, moves) run as on the overlay."""
    costs: dict[int, tuple[int, float]] = {}
    for ins in instructions:
        if ins.op != Op.CONV:
            continue
        counters = conv_counters(ins, rows, cols, batch)
        cycles, energy = costs.get(ins.layer, (0, 0.0))
        costs[ins.layer] = (cycles + counters["busy_cycles"],
                            energy + layer_energy_uj(counters, rows, cols, step_pj=STEP_PJ))
    return costs
