"""Which arena bytes cross between host and core around a device segment.

The core's arena holds every tensor of an image, but a segment only needs the bytes it reads before it
writes them (its live-in), and the host only needs back the bytes that a later step or the model's outputs
read. Moving just those, instead of the whole arena in and out for every image, is what makes a board's DMA
traffic per image a few hundred bytes rather than the arena's size; the RTL testbench and the simulated
boards save the same stream beats.

Spans are half-open byte ranges `(lo, hi)`; span lists are sorted and disjoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import prod
from typing import Any

from dynq.contract import Instr, Op
from dynq.contract.isa import arena_reads, arena_write

Span = tuple[int, int]


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint spans covering `spans` (touching ones become one)."""
    out: list[Span] = []
    for lo, hi in sorted(s for s in spans if s[1] > s[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def subtract(spans: list[Span], cut: list[Span]) -> list[Span]:
    """The bytes of `spans` outside `cut`."""
    out: list[Span] = []
    for lo, hi in spans:
        for c_lo, c_hi in cut:
            if c_hi <= lo or c_lo >= hi:
                continue
            if c_lo > lo:
                out.append((lo, c_lo))
            lo = max(lo, c_hi)
        if lo < hi:
            out.append((lo, hi))
    return out


def intersect(a: list[Span], b: list[Span]) -> list[Span]:
    """The bytes in both."""
    return merge((max(lo, c_lo), min(hi, c_hi)) for lo, hi in a for c_lo, c_hi in b)


def widen(spans: list[Span], align: int, limit: int) -> list[Span]:
    """Each span grown outwards to multiples of `align`, clipped to [0, limit), merged."""
    return merge((max(0, lo - lo % align), min(limit, -(-hi // align) * align)) for lo, hi in spans)


def hull(spans: list[Span]) -> Span | None:
    """The one span from the first byte of `spans` to the last (None for none)."""
    return (spans[0][0], spans[-1][1]) if spans else None


def segment_io(program: Sequence[Instr], first: int, count: int) -> tuple[list[Span], list[Span]]:
    """(live-in: the bytes the segment reads before writing them, written: the bytes it writes), over the
    instructions [first, first + count) up to END."""
    live_in: list[Span] = []
    written: list[Span] = []
    for ins in program[first:first + count]:
        if ins.op == Op.END:
            break
        live_in = merge(live_in + subtract(merge(arena_reads(ins)), written))
        out = arena_write(ins)
        if out is not None:
            written = merge([*written, out])
    return live_in, written


def needed_after(manifest: dict[str, Any], program: Sequence[Instr]) -> list[list[Span]]:
    """For each step of the build's schedule, the arena bytes that a later step or the model's outputs read
    (so a segment's results outside them need not come back to the host)."""
    tensors = manifest["tensors"]

    def tensor_span(name: str) -> list[Span]:
        t = tensors.get(name)
        return [] if t is None else [(int(t["offset"]), int(t["offset"]) + prod(t["shape"]))]

    need = merge(s for out in manifest["outputs"] if out["device"] for s in tensor_span(out["name"]))
    after: list[list[Span]] = []
    for step in reversed(manifest["schedule"]):
        after.append(need)
        if step["kind"] == "device":
            reads, written = segment_io(program, step["first"], step["count"])
            need = subtract(need, written)
        else:
            reads = [s for name in step["inputs"] for s in tensor_span(name)]
        need = merge(need + reads)
    return after[::-1]
