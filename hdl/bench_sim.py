"""Speed of the RTL simulator: simulated clock cycles per wall-clock second on long segments.

Two programs: MOVE instructions (identity rescale, int8 to int8) over a large part of the arena filling the
instruction memory, and repeated int8 CONVs (16 to 16 channels, 3x3, a 28x28 map: the whole PE array busy).
The testbench polls STATUS over AXI4-Lite while a segment runs, as the host driver would, so the numbers
include the testbench's own work. Each segment's cycles are checked against the cycle model.

    python -m dynq.hdl.bench_sim [board] [--moves N] [--elements N]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from dynq.contract import INSTR_BYTES, Memory, Op, PrecisionRegs, encode, layout, timing
from dynq.contract import registers as rg
from dynq.hdl.sim import RtlSim, build

CONV_SHAPE = dict(cin=16, cout=16, ih=28, iw=28, oh=28, ow=28, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, pt=1, pl=1,
                  pb=1, pr=1, groups=1)


def move_program(moves: int, elements: int, src: int, dst: int) -> bytes:
    """`moves` identical MOVEs of `elements` bytes from `src` to `dst`, then END."""
    cin, hw = 1, elements
    while hw > 0xFFFF and cin < 0xFFFF:
        cin, hw = cin * 2, hw // 2
    ih = 1
    while hw > 0xFFFF:
        ih, hw = ih * 2, hw // 2
    assert cin * ih * hw == elements, "elements must be a power of two times a 16-bit number"
    move = encode(Op.MOVE, layer=0, src0=src, dst=dst, cin=cin, ih=ih, iw=hw, mult0=1, shift0=0,
                  clip_lo=-128, clip_hi=127, s0_signed=1, out_signed=1)
    return move * moves + encode(Op.END)


def bench(board_name: str = "pynq-z2", moves: int | None = None, elements: int | None = None) -> dict[str, float]:
    """Builds (or reuses) the simulator, runs the segment once, and returns its figures."""
    t0 = time.monotonic()
    binary = build(board_name, quiet=False)
    build_s = time.monotonic() - t0
    with RtlSim(board_name, binary=binary) as sim:
        arch = sim.board.arch
        moves = moves if moves is not None else arch.imem_bytes // INSTR_BYTES - 1
        elements = elements if elements is not None else arch.amem_bytes // 2
        program = move_program(moves, elements, 0, arch.amem_bytes - elements)
        sim.load(Memory.INSTR, 0, program)
        expected = moves * (timing.eltwise_cycles(elements, arch.rows, 1) + 1) + timing.LAYER_SETUP_CYCLES
        t0 = time.monotonic()
        cycles = sim.run_segment(0, moves + 1, max_cycles=4 * expected)
        wall = time.monotonic() - t0
        busy = sim.read(rg.counter_offset(0, "busy_cycles"))
        conv = _conv_segment(sim, repeats=20)
    return {"build_s": build_s, "moves": moves, "elements": elements, "cycles": cycles,
            "model_cycles": expected, "move_busy_cycles": busy,
            "model_move_cycles": timing.eltwise_cycles(elements, arch.rows, 1),
            "wall_s": wall, "cycles_per_s": cycles / wall, **conv}


def _conv_segment(sim: RtlSim, repeats: int) -> dict[str, float]:
    """`repeats` int8 CONVs of CONV_SHAPE on random data; cycles per wall-clock second and per CONV."""
    arch = sim.board.arch
    s = CONV_SHAPE
    geom = timing.ConvGeometry(s["cin"], 1, 1, s["cout"], s["oh"], s["ow"], s["kh"], s["kw"], 1, 1, 1, 1, 1, 1)
    rng = np.random.default_rng(0)
    weights = layout.conv_weight_bytes(rng.integers(-127, 128, (s["cout"], s["cin"], 3, 3)), geom, arch.cols)
    param = len(weights)
    weights += layout.param_bytes(np.zeros(s["cout"]), np.full(s["cout"], 1 << 14), np.full(s["cout"], 20))
    conv = encode(Op.CONV, src0=0, dst=s["cin"] * s["ih"] * s["iw"], src1=0, param=param, clip_lo=0, clip_hi=255,
                  **s)
    sim.load(Memory.INSTR, 0, conv * repeats + encode(Op.END))
    sim.load(Memory.WEIGHTS, 0, weights)
    sim.load(Memory.ARENA, 0, rng.integers(0, 256, s["cin"] * s["ih"] * s["iw"], dtype=np.uint8).tobytes())
    for name, value in PrecisionRegs().to_words().items():
        sim.write(rg.precision_offset(0, name), value)
    model = timing.conv_counters(None, 1, 2, geom, arch.rows, arch.cols, 0)["busy_cycles"]
    t0 = time.monotonic()
    cycles = sim.run_segment(0, repeats + 1, max_cycles=4 * repeats * model)
    wall = time.monotonic() - t0
    return {"convs": repeats, "conv_cycles": cycles, "conv_busy_cycles": sim.read(rg.counter_offset(0, "busy_cycles")),
            "model_conv_cycles": model, "conv_wall_s": wall, "conv_cycles_per_s": cycles / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("board", nargs="?", default="pynq-z2")
    ap.add_argument("--moves", type=int, help="MOVE instructions (default: fill the instruction memory)")
    ap.add_argument("--elements", type=int, help="bytes per MOVE (default: half the arena)")
    args = ap.parse_args(argv)
    r = bench(args.board, args.moves, args.elements)
    print(f"{args.board}: {r['moves']} MOVEs of {r['elements']} bytes, {r['cycles']} cycles "
          f"(cycle model {r['model_cycles']}; per MOVE {r['move_busy_cycles']}, model {r['model_move_cycles']})")
    print(f"simulated in {r['wall_s']:.2f} s: {r['cycles_per_s'] / 1e6:.2f} M cycles/s "
          f"(build or cache lookup {r['build_s']:.1f} s)")
    print(f"{args.board}: {r['convs']} int8 CONVs (16 to 16 channels, 3x3, 28x28), {r['conv_cycles']} cycles (per CONV "
          f"{r['conv_busy_cycles']}, model {r['model_conv_cycles']}), simulated in {r['conv_wall_s']:.2f} s: "
          f"{r['conv_cycles_per_s'] / 1e6:.2f} M cycles/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
