"""Random single-layer programs for the RTL tests: the RTL and the emulator must agree on them bit for bit
and cycle for cycle. Each case is an in-memory build (program, weight image, arena contents, registers)
that both backends run from the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dynq.boards import Board
from dynq.contract import Mode, Op, PrecisionRegs, encode, layout, timing
from dynq.contract import numerics as nx
from dynq.contract.array import REGION_MAX, SDP_G_VALUES, log2, window_limits
from dynq.contract.registers import MASK_GRID, MAX_LAYERS
from dynq.runtime.artifacts import Build
from dynq.runtime.importance import ImportanceMask

OPS_IN_RTL = (Op.MOVE, Op.ADD, Op.CONV, Op.POOL)
"""The operations the random corpus draws from (CONV: the cases `hdl.core.unsupported` accepts)."""
REGION_SIDES = tuple(1 << i for i in range(log2(REGION_MAX) + 1))
ARENA_BYTES = 8192
"""Arena of a random case: small, so a case loads and stores quickly."""


@dataclass
class Case:
    """One random program: its build, the arena's initial bytes, and the precision registers."""

    name: str
    build: Build
    arena: bytes
    registers: list[PrecisionRegs] = field(default_factory=lambda: [PrecisionRegs()] * MAX_LAYERS)
    mask: torch.Tensor | None = None  # the DAQ region mask


def case_build(board: Board, name: str, program: bytes, weights: bytes, arena_bytes: int) -> Build:
    """A build held in memory, shaped like one `open_build` returns (no files involved)."""
    arch = board.arch
    manifest = {"board": board.name, "arch": arch.as_dict(), "fingerprint": arch.fingerprint,
                "arena_bytes": arena_bytes, "layers": [], "schedule": []}
    return Build(Path(f"<{name}>"), manifest, program, weights, {})


def _regions(rng: random.Random, sizes: list[int], total: int) -> list[int]:
    """Non-overlapping byte offsets (any alignment) for regions of the given sizes within `total` bytes."""
    while True:
        offsets = [rng.randrange(0, total - s + 1) for s in sizes]
        spans = sorted(zip(offsets, sizes, strict=True))
        if all(a + s <= b for (a, s), (b, _) in zip(spans, spans[1:], strict=False)):
            return offsets


def eltwise_case(board: Board, rng: random.Random, index: int) -> Case:
    """A MOVE or ADD over a random shape, offsets, signedness, multipliers, shift and clamp range."""
    op = rng.choice((Op.MOVE, Op.ADD))
    cin, ih, iw = rng.randint(1, 8), rng.randint(1, 12), rng.randint(1, 20)
    elems = cin * ih * iw
    operands = 2 if op == Op.ADD else 1
    offsets = _regions(rng, [elems] * (operands + 1), ARENA_BYTES)
    out_signed = rng.random() < 0.5
    lo, hi = nx.value_range(out_signed)
    clip_lo = rng.randint(lo, lo + 20) if rng.random() < 0.3 else lo
    clip_hi = rng.randint(hi - 20, hi) if rng.random() < 0.3 else hi
    shift = rng.choice([0, 1, 7, 12, 15, 20, 31, 47, 60])
    fields = dict(layer=rng.randrange(MAX_LAYERS), s0_signed=int(rng.random() < 0.5),
                  s1_signed=int(rng.random() < 0.5), out_signed=int(out_signed), src0=offsets[0], dst=offsets[-1],
                  cin=cin, ih=ih, iw=iw, oh=ih, ow=iw, cout=cin, clip_lo=clip_lo, clip_hi=clip_hi,
                  mult0=rng.randint(-(1 << 15), (1 << 15) - 1), shift0=shift)
    if op == Op.ADD:
        fields.update(src1=offsets[1], mult1=rng.randint(-(1 << 15), (1 << 15) - 1))
    program = encode(op, **fields) + encode(Op.END)
    arena = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, ARENA_BYTES, dtype=np.uint8).tobytes()
    name = f"{index}-{op.name.lower()}-{cin}x{ih}x{iw}"
    return Case(name, case_build(board, name, program, b"", ARENA_BYTES), arena)


def pool_case(board: Board, rng: random.Random, index: int) -> Case:
    """A max or average POOL: random channels, window, stride, padding, signedness, multiplier and clamp."""
    rows = board.arch.rows
    while True:
        cin, kh, kw = rng.randint(1, 20), rng.randint(1, 4), rng.randint(1, 5)
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        ih, iw = rng.randint(kh, 10), rng.randint(kw, 3 * rows)
        pt, pb = (rng.randint(0, kh - 1) if rng.random() < 0.4 else 0 for _ in range(2))
        pl, pr = (rng.randint(0, kw - 1) if rng.random() < 0.4 else 0 for _ in range(2))
        oh, ow = (ih + pt + pb - kh) // sh + 1, (iw + pl + pr - kw) // sw + 1
        sizes = [cin * ih * iw, cin * oh * ow]
        if not window_limits(sw, kw, (1, 1), ow, rows) and sum(sizes) < ARENA_BYTES:
            break
    average = rng.random() < 0.5
    s0_signed, out_signed = rng.random() < 0.5, rng.random() < 0.5
    lo, hi = nx.value_range(out_signed)
    offsets = _regions(rng, sizes, ARENA_BYTES)
    fields = dict(layer=rng.randrange(MAX_LAYERS), s0_signed=int(s0_signed), out_signed=int(out_signed),
                  aux=int(average), src0=offsets[0], dst=offsets[1], cin=cin, cout=cin, ih=ih, iw=iw, oh=oh, ow=ow,
                  kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, pb=pb, pr=pr, groups=cin, clip_lo=lo, clip_hi=hi)
    if average:
        shift = 8 + round(np.log2(kh * kw)) + rng.randint(-1, 1)
        fields.update(mult0=rng.randint(-(1 << 8), 1 << 15), shift0=shift)
    program = encode(Op.POOL, **fields) + encode(Op.END)
    arena = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, ARENA_BYTES, dtype=np.uint8).tobytes()
    name = f"{index}-{'avg' if average else 'max'}pool-{cin}x{ih}x{iw}-k{kh}x{kw}-s{sh}{sw}"
    return Case(name, case_build(board, name, program, b"", ARENA_BYTES), arena)


def conv_case(board: Board, rng: random.Random, index: int) -> Case:
    """A CONV on the unpacked mapping in int8 (with or without zero-part skipping): random shape, stride,
    padding, groups, channel counts around the block and column sizes, weights and requantization."""
    arch = board.arch
    while True:
        groups = rng.choice([1, 1, 1, 2, 3])
        cin_g, cout_g = rng.randint(1, 20), rng.randint(1, 2 * arch.cols + 3)
        kh, kw, sh, sw = rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 2), rng.randint(1, 3)
        ih, iw = rng.randint(kh, 9), rng.randint(kw, 3 * arch.rows)
        pt, pb, pl, pr = (rng.randint(0, 2) if rng.random() < 0.5 else 0 for _ in range(4))
        oh, ow = (ih + pt + pb - kh) // sh + 1, (iw + pl + pr - kw) // sw + 1
        g = timing.ConvGeometry(cin_g, 1, groups, cout_g, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr)
        sizes = [groups * cin_g * ih * iw, groups * cout_g * oh * ow]
        if (oh >= 1 and ow >= 1 and timing.packing(g, arch.cols) == 1 and not timing.reduction_split(g)
                and not window_limits(sw, kw, (1, 1), ow, arch.rows) and sum(sizes) < ARENA_BYTES):
            break
    pool = min(oh, ow) >= 2 and rng.random() < 0.3
    name = f"{index}-conv-g{groups}-{cin_g}x{ih}x{iw}-{cout_g}-k{kh}x{kw}-s{sh}{sw}" + ("-pool" if pool else "")
    return _conv_case(board, rng, name, g, ih, iw, pool)


def gemm_case(board: Board, rng: random.Random, index: int) -> Case:
    """A single-pixel CONV (Gemm, the reduction-split mapping): channel counts around the lane, block and
    column sizes, sometimes grouped."""
    arch = board.arch
    groups = rng.choice([1, 1, 1, 2, 3])
    cin_g, cout_g = rng.randint(1, 3 * arch.rows + 5), rng.randint(1, 2 * arch.cols + 3)
    g = timing.ConvGeometry(cin_g, 1, groups, cout_g, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0)
    return _conv_case(board, rng, f"{index}-gemm-g{groups}-{cin_g}-{cout_g}", g, 1, 1)


def _conv_case(board: Board, rng: random.Random, name: str, g: timing.ConvGeometry, ih: int, iw: int,
               pool: bool = False) -> Case:
    """The weights, records, arena and registers of a random CONV of geometry `g` over an ih x iw input
    (with `pool`, a fused 2x2 max pooling)."""
    arch = board.arch
    groups, cin_g, cout_g = g.groups, g.cin_g, g.cout_g
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, g.oh, g.ow
    sizes = [groups * cin_g * ih * iw, groups * cout_g * (oh // 2 * (ow // 2) if pool else oh * ow)]
    data = np.random.default_rng(rng.getrandbits(32))
    w = data.integers(-127, 128, (groups * cout_g, cin_g, kh, kw)).astype(np.int8)
    cout = groups * cout_g
    shift = 20 + round(0.5 * np.log2(cin_g * kh * kw)) + rng.randint(-1, 1)  # outputs mostly inside the range
    weights = layout.conv_weight_bytes(w, g, arch.cols)
    params_at = len(weights)
    weights += layout.param_bytes(data.integers(-5000, 5000, cout), data.integers(1 << 13, 1 << 15, cout),
                                  np.full(cout, shift))
    offsets = _regions(rng, sizes, ARENA_BYTES)
    signed = rng.random() < 0.5
    fields = dict(layer=rng.randrange(MAX_LAYERS), s0_signed=int(signed), out_signed=int(signed), aux=int(pool),
                  src0=offsets[0], src1=0, dst=offsets[1], param=params_at, cin=groups * cin_g, cout=cout, ih=ih,
                  iw=iw, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, dh=1, dw=1, pt=pt, pl=pl, pb=pb, pr=pr,
                  groups=groups, clip_lo=-128 if signed else 0, clip_hi=127 if signed else 255)
    program = encode(Op.CONV, **fields) + encode(Op.END)
    arena = data.integers(0, 256, ARENA_BYTES, dtype=np.uint8)
    arena[offsets[0]:offsets[0] + sizes[0]] *= data.random(sizes[0]) < 0.7  # zeros for zero-part skipping
    registers = [_precision(rng, ih, iw, spatial=not timing.reduction_split(g))] * MAX_LAYERS
    mask = random_mask(rng) if registers[0].mode == Mode.DAQ else None
    return Case(name, case_build(board, name, program, weights, ARENA_BYTES), arena.tobytes(), registers, mask)


def random_mask(rng: random.Random) -> torch.Tensor:
    """A DAQ region mask with every level (cropped, 4-bit, 8-bit) in random cells."""
    return torch.tensor([[rng.randint(0, 2) for _ in range(MASK_GRID)] for _ in range(MASK_GRID)])


def _precision(rng: random.Random, ih: int, iw: int, spatial: bool) -> PrecisionRegs:
    """int8, DRQ or (on a spatial layer) SDP or DAQ, with or without zero-part skipping. DRQ with a random
    region, 4-bit rule and a threshold around the sums of |x| that the case's random bytes give, so that both
    kinds of region occur; SDP with a random g and any k from 0 to 2g; DAQ with a random 4-bit rule (the
    case draws its mask)."""
    zero_skip = rng.random() < 0.5
    draw = rng.random()
    if draw < 1 / 4:
        return PrecisionRegs(zero_skip=zero_skip)
    if draw < 2 / 4 and spatial:
        g = rng.choice(SDP_G_VALUES)
        return PrecisionRegs(mode=Mode.SDP, zero_skip=zero_skip, g=g, k=rng.randint(0, 2 * g))
    if draw < 3 / 4 and spatial:
        return PrecisionRegs(mode=Mode.DAQ, zero_skip=zero_skip, insens_hi=rng.random() < 0.5)
    rh, rw = rng.choice(REGION_SIDES), rng.choice(REGION_SIDES)
    threshold = int(min(rh, ih) * min(rw, iw) * rng.uniform(20, 100))
    return PrecisionRegs(mode=Mode.DRQ, zero_skip=zero_skip, insens_hi=rng.random() < 0.5, threshold=threshold,
                         rh=rh, rw=rw)


def random_cases(board: Board, count: int, seed: int) -> list[Case]:
    """`count` random single-layer programs, the same for the same seed."""
    rng = random.Random(seed)
    makers = (eltwise_case, conv_case, gemm_case, conv_case, pool_case)
    return [makers[i % len(makers)](board, rng, i) for i in range(count)]


PRECISION_REWRITES: dict[str, tuple[Mode, list[dict]]] = {
    "drq-threshold": (Mode.DRQ, [dict(threshold=0), dict(threshold=1 << 20)]),  # every region sensitive; none
    "sdp-k": (Mode.SDP, [dict(g=4, k=8), dict(g=4, k=2)]),  # every part kept; a quarter of them
    "daq-mask": (Mode.DAQ, [dict(mask=np.full((MASK_GRID, MASK_GRID), 2)),  # every pixel 8-bit; then columns
                            dict(mask=np.tile([0, 1, 2, 1], (MASK_GRID, MASK_GRID // 4)))]),  # cropped, 4, 8 bits
    "daq-importance": (Mode.DAQ, [dict(mask="entropy"),  # per image: half the cells 8-bit, a quarter cropped
                                  dict(mask=ImportanceMask("gradient", fractions=(0.25, 0.25)))]),  # half cropped
}
"""Two settings of one layer's precision registers per mode, rewritten between two runs of a loaded model:
far enough apart that the outputs must differ. `daq-importance` computes a mask per image from the input."""
