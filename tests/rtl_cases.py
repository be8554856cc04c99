"""Random single-layer programs for the RTL tests: the RTL and the emulator must agree on them bit for bit
and cycle for cycle. Each case is an in-memory build (program, weight image, arena contents, registers)
that both backends run from the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynq.boards import Board
from dynq.contract import Op, PrecisionRegs, encode
from dynq.contract.registers import MAX_LAYERS
from dynq.runtime.artifacts import Build

OPS_IN_RTL = (Op.MOVE, Op.ADD)
"""The operations the RTL core runs in this build; the corpus draws from these."""
ARENA_BYTES = 8192
"""Arena of a random case: small, so a case loads and stores quickly."""


@dataclass
class Case:
    """One random program: its build, the arena's initial bytes, and the precision registers."""

    name: str
    build: Build
    arena: bytes
    registers: list[PrecisionRegs] = field(default_factory=lambda: [PrecisionRegs()] * MAX_LAYERS)


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
    op = rng.choice(OPS_IN_RTL)
    cin, ih, iw = rng.randint(1, 8), rng.randint(1, 12), rng.randint(1, 20)
    elems = cin * ih * iw
    operands = 2 if op == Op.ADD else 1
    offsets = _regions(rng, [elems] * (operands + 1), ARENA_BYTES)
    out_signed = rng.random() < 0.5
    lo, hi = (-128, 127) if out_signed else (0, 255)
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


def random_cases(board: Board, count: int, seed: int) -> list[Case]:
    """`count` random single-layer programs, the same for the same seed."""
    rng = random.Random(seed)
    return [eltwise_case(board, rng, i) for i in range(count)]
