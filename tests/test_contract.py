"""The contract pinned by hand-computed values: encodings, numerics, precision rules, cycle model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynq.contract import FIELDS, INSTR_BYTES, Mode, Op, PrecisionRegs, decode_program, encode, registers, timing
from dynq.contract import numerics as nx
from dynq.contract.isa import DecodeError, EncodeError, decode
from dynq.docgen import sync

ROOT = Path(__file__).resolve().parents[1]


def test_fields_pack_without_straddling_words() -> None:
    for f in FIELDS:
        assert 0 <= f.lsb and f.lsb + f.width <= 32
    spans = sorted((f.word * 32 + f.lsb, f.word * 32 + f.lsb + f.width) for f in FIELDS)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def test_encode_decode_round_trip_random_values() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = {f.name: int(rng.integers(f.lo, f.hi + 1)) for f in FIELDS if f.name != "opcode"}
        op = Op(rng.choice([int(o) for o in Op]))
        ins = decode(encode(op, **values))
        assert ins.op == op
        assert {k: ins.values[k] for k in values} == values


def test_encode_known_layout() -> None:
    words = np.frombuffer(encode(Op.CONV, layer=3, cin=5, cout=7, clip_lo=-1), dtype="<u4")
    assert words[0] == 1 | (3 << 4)  # opcode in [3:0], layer in [11:4]
    assert words[5] == 5 | (7 << 16)
    assert words[10] == 0xFFFF  # clip_lo = -1 in 16-bit two's complement, clip_hi = 0


def test_encode_rejects_out_of_range_and_unknown_fields() -> None:
    with pytest.raises(EncodeError, match="does not fit"):
        encode(Op.CONV, kh=256)
    with pytest.raises(EncodeError, match="unknown"):
        encode(Op.CONV, nonsense=1)


def test_decode_rejects_unknown_opcode_and_bad_length() -> None:
    bad = bytearray(encode(Op.NOP))
    bad[0] = 9
    with pytest.raises(DecodeError, match="unknown opcode 9"):
        decode(bytes(bad))
    with pytest.raises(DecodeError, match="multiple"):
        decode_program(b"\0" * (INSTR_BYTES + 1))


@pytest.mark.parametrize(("acc", "mult", "shift", "expected"), [
    (5, 1, 1, 3),  # 2.5 rounds half up
    (-5, 1, 1, -2),  # -2.5 rounds half up (towards +inf)
    (7, 3, 2, 5),  # 21/4 = 5.25
    (401, 16384, 15, 201),  # 200.5 rounds up
    (300, 1, 0, 255),  # clamp
])
def test_requantize_hand_values(acc: int, mult: int, shift: int, expected: int) -> None:
    got = nx.requantize(torch.tensor([acc]), torch.tensor([mult]), torch.tensor([shift]), -128, 255)
    assert int(got[0]) == expected


def test_requantize_fast_equals_integer_rule() -> None:
    rng = np.random.default_rng(1)
    acc = torch.from_numpy(rng.integers(-(2**31), 2**31, 200_000))
    mult = torch.from_numpy(rng.integers(0, 2**15, 200_000))
    shift = torch.from_numpy(rng.integers(20, 48, 200_000))
    exact = nx.requantize(acc, mult, shift, -(2**15), 2**15 - 1)
    fast = nx.requantize_fast(acc.to(torch.float64), nx.scale_of(mult, shift), -(2**15), 2**15 - 1)
    assert (exact.abs() < 2**15 - 1).float().mean() > 0.3  # most values are not clamped
    assert torch.equal(exact, fast.to(torch.int64))


def test_quantize_multiplier_precision() -> None:
    for real in [1e-6, 0.0123, 0.5, 0.99999, 1.0, 3.7, 1000.0]:
        mult, shift = nx.quantize_multiplier(real)
        assert 0 <= mult < 2**nx.MULT_BITS
        assert abs(mult / 2**shift - real) <= real * 2.0**-14
    assert nx.quantize_multiplier(0.0) == (0, 0)


def test_term_parts_hand_values() -> None:
    x = torch.tensor([0.0, 15, 16, 255, -1, -128, 127])
    hi, lo = nx.split_parts(x)
    assert hi.tolist() == [0, 0, 1, 15, -1, -8, 7]
    assert lo.tolist() == [0, 15, 0, 15, 15, 0, 15]


def test_insensitive_rules_hand_values() -> None:
    x = torch.tensor([3.0, 20, 255, -7, -100])
    assert nx.insensitive(x, signed=True, use_hi=False).tolist() == [3, 15, 15, -7, -15]
    # high-part rule: 16 * round(x / 16), within the part's range
    assert nx.insensitive(torch.tensor([3.0, 8, 20, 255]), signed=False, use_hi=True).tolist() == [0, 16, 16, 240]
    assert nx.insensitive(torch.tensor([-7.0, -9, -100, 120]), signed=True, use_hi=True).tolist() == [0, -16, -96, 112]


def test_sdp_keep_hand_example() -> None:
    # one group of g=2 channels at one pixel: x = [0x35, 0x0F] -> parts hi=[3, 0], lo=[5, 15]
    # importance: hi0=48, hi1=0, lo0=5, lo1=15 -> k=2 keeps hi0 and lo1 -> x' = [48, 15]
    x = torch.tensor([53.0, 15.0]).view(1, 2, 1, 1)
    xq, keep_hi, keep_lo = nx.sdp_keep(x, g=2, k=2)
    assert xq.view(-1).tolist() == [48, 15]
    assert keep_hi.view(-1).tolist() == [True, False] and keep_lo.view(-1).tolist() == [False, True]
    # ties: equal importance goes to the high part, then the lower channel: x = [16, 16] parts hi=[1, 1], lo=[0, 0]
    xq, _, _ = nx.sdp_keep(torch.tensor([16.0, 16.0]).view(1, 2, 1, 1), g=2, k=1)
    assert xq.view(-1).tolist() == [16, 0]
    # k = 2g keeps everything; a partial last group is padded
    x = torch.tensor([1.0, 200, 37]).view(1, 3, 1, 1)
    assert nx.sdp_keep(x, g=2, k=4)[0].view(-1).tolist() == [1, 200, 37]


def test_region_sums_and_mask_scaling() -> None:
    x = torch.arange(20, dtype=torch.float64).view(1, 1, 4, 5) - 10
    sums = nx.region_sums(x, 2, 2)
    expected = [[10 + 9 + 5 + 4, 8 + 7 + 3 + 2, 6 + 1], [0 + 1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9]]
    assert sums.view(2, 3).tolist() == expected
    mask = torch.arange(registers.MASK_GRID**2).view(registers.MASK_GRID, -1)
    cells = nx.mask_cells(mask, 4, 8)  # each pixel row covers 4 cell rows, each column 2 cell columns
    assert cells[1, 3].item() == 4 * registers.MASK_GRID + 6


def test_precision_registers_round_trip_and_validation() -> None:
    regs = PrecisionRegs(Mode.SDP, zero_skip=True, insens_hi=True, threshold=123456, rh=3, rw=7, g=4, k=5)
    words = regs.to_words()
    assert words["MODE"] == 2 | 8 | 16 and words["SDP"] == 4 | (5 << 8)
    assert PrecisionRegs.from_words(words) == regs
    with pytest.raises(ValueError, match="k <= 2g"):
        PrecisionRegs(Mode.SDP, g=2, k=5).validate()


def test_register_map_has_no_overlaps() -> None:
    offsets = [r.offset for r in registers.GLOBAL_REGISTERS]
    assert len(set(offsets)) == len(offsets) and max(offsets) < registers.PRECISION_BASE
    assert registers.precision_offset(registers.MAX_LAYERS - 1, "SDP") < registers.MASK_BASE
    assert registers.counter_offset(registers.MAX_LAYERS - 1, registers.COUNTERS[-1]) < registers.ADDRESS_SPACE


def _geom(**kw: int) -> timing.ConvGeometry:
    base = dict(n_units=1, groups=1, cout_g=1, oh=1, ow=1, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1, pt=0, pl=0, pb=0, pr=0)
    return timing.ConvGeometry(**{**base, **kw})


def test_cycle_model_lockstep_hand_example() -> None:
    # 3 output pixels on 2 lanes: tiles (2, 1 | 0): slowest 2 + 0, stall 1, steps 3
    steps = torch.tensor([2, 1, 0]).view(1, 1, 1, 3)
    c = timing.conv_counters(steps, 1, 1, _geom(ow=3), rows=2, cols=1, predictor_cycles=0)
    assert c["compute_cycles"] == 2 and c["stall_cycles"] == 1 and c["mac_steps"] == 3
    # passes (compute + pipe, drain): (2 + PIPE, 2) then (0 + PIPE, 1); the first drain overlaps the second pass
    assert c["busy_cycles"] == timing.LAYER_SETUP_CYCLES + (2 + timing.PIPE_CYCLES) + max(timing.PIPE_CYCLES, 2) + 1


def test_cycle_model_padding_and_taps() -> None:
    # input [1, 2] costs [2, 1], 1x3 kernel, pad 1 each side (pad costs 1): padded [1, 2, 1, 1]
    # taps: (1,2) -> 2, stall 1; (2,1) -> 2, stall 1; (1,1) -> 1, stall 0
    steps = torch.tensor([2, 1]).view(1, 1, 1, 2)
    c = timing.conv_counters(steps, 1, 1, _geom(ow=2, kw=3, pl=1, pr=1), rows=2, cols=2, predictor_cycles=5)
    assert (c["compute_cycles"], c["stall_cycles"], c["mac_steps"]) == (5, 2, 8)
    assert c["busy_cycles"] == timing.LAYER_SETUP_CYCLES + 5 + timing.PIPE_CYCLES + 2 + 5


def test_cycle_model_packs_narrow_groups_onto_columns() -> None:
    # depthwise, 2 channels of [2, 1] and [0, 2] on 2 lanes x 2 columns: one pack of both channels,
    # slowest 2, fastest 0 -> stall 2; the same on 3 columns; on 1 column two packs: 2 + 2, stall 1 + 2
    steps = torch.tensor([2, 1, 0, 2]).view(1, 2, 1, 2)
    g = _geom(groups=2, ow=2)
    c = timing.conv_counters(steps, 1, 1, g, rows=2, cols=2, predictor_cycles=0)
    assert (c["compute_cycles"], c["stall_cycles"], c["mac_steps"]) == (2, 2, 5)
    assert c["busy_cycles"] == timing.LAYER_SETUP_CYCLES + timing.PIPE_CYCLES + 2 + 2
    assert timing.conv_counters(steps, 1, 1, g, rows=2, cols=3, predictor_cycles=0) == c
    one = timing.conv_counters(steps, 1, 1, g, rows=2, cols=1, predictor_cycles=0)
    assert (one["compute_cycles"], one["stall_cycles"]) == (4, 3)
    assert one["busy_cycles"] == timing.LAYER_SETUP_CYCLES + 2 * (2 + timing.PIPE_CYCLES) + 2


def test_cycle_model_reduction_split_and_column_tiles() -> None:
    # Gemm, 5 inputs on 2 lanes: (2,1) (2,2) (0,-) -> 2+2+0, stall 1; 3 outputs on 2 columns: 2 column tiles
    steps = torch.tensor([2, 1, 2, 2, 0]).view(1, 5, 1, 1)
    c = timing.conv_counters(steps, 1, 2, _geom(n_units=5, cout_g=3), rows=2, cols=2, predictor_cycles=0)
    assert (c["compute_cycles"], c["stall_cycles"], c["mac_steps"]) == (8, 2, 21)
    overhead = 2 * (timing.PIPE_CYCLES + timing.REDUCE_CYCLES + 1)
    assert c["busy_cycles"] == timing.LAYER_SETUP_CYCLES + overhead + 8


def test_predictor_and_elementwise_cycles() -> None:
    assert timing.predictor_cycles(1000, rows=4, cols=8) == 32  # 31.25 rounded up
    assert timing.eltwise_cycles(33, rows=16, operands=1) == timing.LAYER_SETUP_CYCLES + 3 + timing.PIPE_CYCLES
    assert timing.eltwise_cycles(33, rows=16, operands=2) == timing.LAYER_SETUP_CYCLES + 6 + timing.PIPE_CYCLES
    # 18 outputs of 2x2 windows on 4x4 PEs: 2 rounds of 4 cycles; average adds 18/4 -> 5 requantize cycles
    assert timing.pool_cycles(2, 3, 3, 2, 2, rows=4, cols=4, average=False) == (
        timing.LAYER_SETUP_CYCLES + 2 * 4 + timing.PIPE_CYCLES)
    assert timing.pool_cycles(2, 3, 3, 2, 2, rows=4, cols=4, average=True) == (
        timing.LAYER_SETUP_CYCLES + 2 * 4 + 5 + timing.PIPE_CYCLES)


def test_uniform_cost_equals_explicit_steps() -> None:
    g = _geom(n_units=3, cout_g=5, oh=5, ow=7, kh=3, kw=3, pt=1, pl=1, pb=1, pr=1)
    explicit = timing.conv_counters(torch.full((2, 3, 5, 7), 2), 2, 2, g, rows=4, cols=4, predictor_cycles=0)
    assert timing.conv_counters(None, 2, 2, g, rows=4, cols=4, predictor_cycles=0) == explicit


def test_generated_docs_are_current() -> None:
    assert sync(ROOT, check=True) == [], "docs are stale: run `dynq docs`"


def test_laconic_term_counts_and_cycles_hand_examples() -> None:
    from dynq.runtime import laconic

    # canonical signed digits: 3 = 4 - 1, 5 = 4 + 1, 7 = 8 - 1, 85 = 64 + 16 + 4 + 1, 255 = 256 - 1
    values = torch.tensor([0, 1, 3, 5, 7, 85, 255, -7, -128])
    assert laconic.terms(values).tolist() == [0, 1, 2, 2, 2, 4, 2, 2, 1]
    # 1x1 conv, lanes see (3, 0): slowest activation 2 terms x weight 5 (2 terms) -> 4 cycles
    x = torch.tensor([3.0, 0.0]).view(1, 1, 1, 2)
    w = np.array([5], dtype=np.int8).reshape(1, 1, 1, 1)
    assert laconic.conv_cycles(x, w, _geom(ow=2), rows=2, cols=1) == 4
    # Gemm over 3 inputs on 2 lanes: products of terms (1*2, 2*1, 0*1) -> lanes (2, 2), (0) -> 2 + max(1, 0)
    x = torch.tensor([1.0, 7.0, 0.0]).view(1, 3, 1, 1)
    w = np.array([3, 1, 2], dtype=np.int8).reshape(1, 3, 1, 1)
    assert laconic.conv_cycles(x, w, _geom(n_units=3), rows=2, cols=1) == 3
    # PEs synchronise per group, not per element: lanes see channels (3, 0) and (0, 3) with unit weights,
    # each lane sums max(1, 2*1) + max(1, 0) = 3, so the group costs 3 (per-element sync would cost 2 + 2)
    x = torch.tensor([3.0, 0.0, 0.0, 3.0]).view(1, 2, 1, 2)
    w = np.ones((1, 2, 1, 1), dtype=np.int8)
    assert laconic.conv_cycles(x, w, _geom(ow=2), rows=2, cols=1) == 3
