"""Energy estimate from per-operation costs, so modes can be compared on more than cycles.

The table uses 45 nm figures from M. Horowitz, "Computing's energy problem", ISSCC 2014 (8-bit
multiply 0.2 pJ, 32-bit add 0.1 pJ, 8 KB SRAM read 10 pJ per 64 bits), mapped onto the nibble-serial
PE: a 4x8-bit multiply is taken as half an 8x8 multiply (half the partial products). Absolute numbers
are illustrative; the ratios between modes on the same array are the point.
"""

from __future__ import annotations

ENERGY_PJ: dict[str, float] = {
    "pe_step": 0.1 + 0.1,  # 4x8 multiply (half an 8x8 multiply) + 32-bit accumulate
    "mac_8x8": 0.2 + 0.1,  # a bit-parallel PE's step (the comparison baseline): 8x8 multiply + accumulate
    "pe_idle": 0.02,  # clocking a waiting PE (10% of a step)
    "sram_byte": 10.0 / 8,  # on-chip buffer read per byte
    "control_cycle": 1.0,  # instruction, address generation and requantizer per busy cycle
}
"""pJ per event. `pe_step`: one PE multiplying one term part; `pe_idle`: one PE-cycle without work."""


def layer_energy_uj(counters: dict[str, int], rows: int, cols: int, step_pj: float = ENERGY_PJ["pe_step"]) -> float:
    """Estimated energy of one layer in microjoules; `step_pj` is a PE step's energy (the nibble-serial
    PE's unless a comparison array says otherwise)."""
    steps = counters.get("mac_steps", 0)
    compute = counters.get("compute_cycles", 0)
    idle = max(0, rows * cols * compute - steps)
    sram = counters.get("kept_parts", 0) / 2 + steps / max(rows, 1)
    pj = (steps * step_pj + idle * ENERGY_PJ["pe_idle"] + sram * ENERGY_PJ["sram_byte"]
          + counters.get("busy_cycles", 0) * ENERGY_PJ["control_cycle"])
    return pj * 1e-6
