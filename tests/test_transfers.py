"""Which arena bytes cross between host and core: span arithmetic, a segment's live-in and writes, and what
each step of a schedule must hand back, on programs whose byte ranges are counted by hand."""

from __future__ import annotations

from dynq.contract import Op
from dynq.contract.isa import arena_reads, arena_write, decode, encode
from dynq.runtime.transfers import intersect, merge, needed_after, segment_io, subtract, widen


def ins(op: Op, **fields: int):
    return decode(encode(op, **fields))


# input 1x4x4 (16 B) at 0; conv 2x4x4 with fused pooling -> 2x2x2 (8 B) at 16; add of that with itself at 24;
# a second segment moves the add's 8 B to 32; the model's output is the move's result
CONV = ins(Op.CONV, layer=0, src0=0, dst=16, cin=1, cout=2, ih=4, iw=4, oh=4, ow=4, kh=3, kw=3, sh=1, sw=1,
           dh=1, dw=1, pt=1, pl=1, pb=1, pr=1, groups=1, aux=1)
ADD = ins(Op.ADD, layer=1, src0=16, src1=16, dst=24, cin=2, ih=2, iw=2, cout=2, oh=2, ow=2)
MOVE = ins(Op.MOVE, layer=2, src0=24, dst=32, cin=2, ih=2, iw=2, cout=2, oh=2, ow=2)
END = ins(Op.END)
PROGRAM = [CONV, ADD, END, MOVE, END]


def test_span_arithmetic_hand_values() -> None:
    assert merge([(8, 12), (0, 4), (4, 6), (20, 20)]) == [(0, 6), (8, 12)]
    assert subtract([(0, 10)], [(2, 4), (6, 7)]) == [(0, 2), (4, 6), (7, 10)]
    assert subtract([(0, 10)], [(0, 10)]) == []
    assert intersect([(0, 10), (20, 30)], [(5, 25)]) == [(5, 10), (20, 25)]
    assert widen([(5, 9), (30, 33)], 4, 32) == [(4, 12), (28, 32)]


def test_operand_ranges_of_each_opcode() -> None:
    assert arena_reads(CONV) == ((0, 16),) and arena_write(CONV) == (16, 24)  # fused pooling halves both axes
    assert arena_reads(ADD) == ((16, 24), (16, 24)) and arena_write(ADD) == (24, 32)
    assert arena_reads(MOVE) == ((24, 32),) and arena_write(MOVE) == (32, 40)
    assert arena_reads(END) == () and arena_write(END) is None


def test_segment_reads_what_it_did_not_write_first() -> None:
    assert segment_io(PROGRAM, 0, 3) == ([(0, 16)], [(16, 32)])
    assert segment_io(PROGRAM, 3, 2) == ([(24, 32)], [(32, 40)])


def test_each_step_hands_back_only_what_later_steps_and_outputs_read() -> None:
    manifest = {
        "tensors": {"x": {"offset": 0, "shape": [1, 4, 4]}, "y": {"offset": 32, "shape": [2, 2, 2]}},
        "outputs": [{"name": "y", "device": True}],
        "schedule": [{"kind": "device", "first": 0, "count": 3}, {"kind": "device", "first": 3, "count": 2}],
    }
    # the first segment's conv result (16..24) is used inside it only, its add result feeds the move; the
    # output (32..40) is the second segment's to write, so the first need not return those bytes
    assert needed_after(manifest, PROGRAM) == [[(24, 32)], [(32, 40)]]
