"""The contract pinned by hand-computed values: encodings, numerics, precision rules, cycle model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynq.contract import (
    FIELDS,
    INSTR_BYTES,
    Mode,
    Op,
    PrecisionRegs,
    decode_program,
    encode,
    layout,
    registers,
    timing,
)
from dynq.contract import numerics as nx
from dynq.contract.array import BLOCK, line_reads, window_limits
from dynq.contract.isa import DecodeError, EncodeError, decode, geometry_error
from dynq.contract.precision import conv_cost
from dynq.contract.registers import DeviceError, ErrorCode
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
    base = dict(cin_g=1, g=1, groups=1, cout_g=1, oh=1, ow=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0, pb=0, pr=0)
    return timing.ConvGeometry(**{**base, **kw})


SETUP, PIPE, LAT = timing.LAYER_SETUP_CYCLES, timing.PIPE_CYCLES, timing.FILL_LATENCY


def test_cycle_model_lockstep_hand_example() -> None:
    # 3 output pixels on 2 lanes: x tiles (2, 1 | 0) cost 2 and max(1, 0) = 1 (a tap is at least a cycle)
    steps = torch.tensor([2, 1, 0]).view(1, 1, 1, 3)
    c = timing.conv_counters(steps, 1, 1, _geom(ow=3), rows=2, cols=1, predictor_cycles=0)
    assert c["compute_cycles"] == 3 and c["stall_cycles"] == 1 and c["mac_steps"] == 3
    # fill one 1-window line (+ latency); pass 1: max(2, next fill); pass 2: max(1, drain of pass 1); last drain
    f = 1 + LAT
    assert c["busy_cycles"] == SETUP + f + max(2, f) + max(1, 1 + PIPE) + (1 + PIPE)


def test_cycle_model_padding_and_taps() -> None:
    # input [1, 2] costs [2, 1], 1x3 kernel, pad 1 each side (pad costs 1): padded [1, 2, 1, 1]
    # taps: (1,2) -> 2, stall 1; (2,1) -> 2, stall 1; (1,1) -> 1, stall 0
    steps = torch.tensor([2, 1]).view(1, 1, 1, 2)
    c = timing.conv_counters(steps, 1, 1, _geom(ow=2, kw=3, pl=1, pr=1), rows=2, cols=2, predictor_cycles=5)
    assert (c["compute_cycles"], c["stall_cycles"], c["mac_steps"]) == (5, 2, 8)
    # the line of lanes 0..1 over 3 taps spans 4 bytes: 2 windows of 2
    assert c["busy_cycles"] == SETUP + 5 + (2 + LAT) + 5 + (1 + PIPE)


def test_cycle_model_packs_narrow_groups_and_rows() -> None:
    # depthwise, 2 channels of [2, 1] and [0, 2] on 2 lanes: both groups side by side in one pass (2 columns,
    # 2 line registers), lock-stepped: slowest 2, fastest 0; two lines to fill, two channels to drain
    steps = torch.tensor([2, 1, 0, 2]).view(1, 2, 1, 2)
    g = _geom(groups=2, ow=2)
    assert timing.packing(g, cols=2) == 2
    c = timing.conv_counters(steps, 1, 1, g, rows=2, cols=2, predictor_cycles=0)
    assert (c["compute_cycles"], c["stall_cycles"], c["mac_steps"]) == (2, 2, 5)
    assert c["busy_cycles"] == SETUP + (2 + LAT) + 2 + (2 + PIPE)
    assert timing.conv_counters(steps, 1, 1, g, rows=2, cols=3, predictor_cycles=0) == c
    # one column: no room, a pass per group, the second waits for the first one's drain
    one = timing.conv_counters(steps, 1, 1, g, rows=2, cols=1, predictor_cycles=0)
    assert (one["compute_cycles"], one["stall_cycles"]) == (4, 3)
    assert one["busy_cycles"] == SETUP + (1 + LAT) + max(2, 1 + LAT) + max(2, 1 + PIPE) + (1 + PIPE)
    # one group of 6 output channels, 2x2 output: both output rows side by side on 12 columns
    rows2 = _geom(cout_g=6, oh=2, ow=2)
    assert timing.packing(rows2, cols=16) == 2
    r = timing.conv_counters(torch.tensor([2, 1, 0, 2]).view(1, 1, 2, 2), 1, 1, rows2, rows=2, cols=16,
                             predictor_cycles=0)
    assert (r["compute_cycles"], r["stall_cycles"], r["mac_steps"]) == (2, 2, 30)
    assert r["busy_cycles"] == SETUP + (2 + LAT) + 2 + (12 + PIPE)


def test_cycle_model_blocks_and_line_fills() -> None:
    # 10 input channels = blocks of 8 and 2; 1x1 kernel on 2 pixels, 2 lanes: one pass of two items
    g = _geom(cin_g=10, ow=2)
    dense = timing.conv_counters(None, 1, 2, g, rows=2, cols=1, predictor_cycles=0)
    # fills 8 and 2 windows; taps cost 8*2 and 2*2
    assert dense["busy_cycles"] == SETUP + (8 + LAT) + max(16, 2 + LAT) + 4 + (1 + PIPE)
    # nothing to compute: each tap still a cycle, and the next block's fill sets the pace
    empty = timing.conv_counters(None, 1, 0, g, rows=2, cols=1, predictor_cycles=0)
    assert empty["busy_cycles"] == SETUP + (8 + LAT) + max(1, 2 + LAT) + 1 + (1 + PIPE)
    # SDP groups of 4: 3 units (the last padded), 2 in the first block, 1 in the second
    sdp = timing.conv_counters(None, 1, 3, _geom(cin_g=10, g=4, ow=2), rows=2, cols=1, predictor_cycles=0)
    assert sdp["busy_cycles"] == SETUP + (8 + LAT) + max(2 * 3, 2 + LAT) + 3 + (1 + PIPE)


def test_cycle_model_reduction_split_and_column_tiles() -> None:
    # Gemm, 20 inputs on 16 lanes: 2 chunks of 16 // BLOCK weight words each; 3 outputs on 2 columns
    steps = torch.tensor([2] * 15 + [0] + [1] * 4).view(1, 20, 1, 1)
    c = timing.conv_counters(steps, 1, 2, _geom(cin_g=20, cout_g=3), rows=16, cols=2, predictor_cycles=0)
    words, tree = 16 // BLOCK, timing.reduce_cycles(16)
    assert (words, tree) == (2, 4)
    assert (c["compute_cycles"], c["stall_cycles"], c["mac_steps"]) == (4 * words, 2 * 2, 3 * 34)
    drain0, drain1 = 2 + PIPE + tree, 1 + PIPE + tree
    assert c["busy_cycles"] == SETUP + words + 2 * words + max(2 * words, drain0) + drain1


def test_predictor_pool_and_elementwise_cycles() -> None:
    gap = timing.PREDICTOR_GAP_CYCLES
    assert timing.predictor_cycles(3, 5, 20, rows=16) == 3 * 5 * 2 + gap  # every window of the input once
    assert timing.mask_cycles(5, 20) == 5 * 20 + timing.MASK_GAP_CYCLES  # a pixel a cycle
    assert timing.eltwise_cycles(33, rows=16, operands=1) == SETUP + 3 + PIPE
    assert timing.eltwise_cycles(33, rows=16, operands=2) == SETUP + 6 + PIPE
    # 2 channels, 3x3 output of 2x2 windows at stride 2 on 4 lanes: 3 passes (rows) of 2 items (kernel rows);
    # 3 lanes span 2*2 + 2 = 6 bytes = 2 windows per channel; a tap is a cycle per channel; drain 2 + PIPE
    fill, compute, drain = 2 * 2 + LAT, 2 * 2, 2 + PIPE
    passes = [max(compute, fill) + max(compute, fill)] * 2 + [max(compute, fill) + compute]
    assert timing.pool_cycles(2, 3, 3, 2, 2, 2, rows=4) == (
        SETUP + fill + passes[0] + max(passes[1], drain) + max(passes[2], drain) + drain)


def test_window_limits() -> None:
    assert line_reads(1, 3, 16, 16) == 2 and line_reads(2, 3, 16, 16) == 3 and line_reads(1, 1, 16, 16) == 1
    assert line_reads(1, 3, 10, 16) == 1  # only the active lanes' bytes are read
    assert window_limits(2, 7, (1, 1), 56, 16) is None
    assert "dilation" in window_limits(1, 3, (2, 2), 56, 16)
    assert "line holds 64" in window_limits(4, 5, (1, 1), 56, 16)
    assert window_limits(7, 7, (1, 1), 1, 16) is None  # a global pooling: one lane
    assert "stride 5 across" in window_limits(5, 1, (1, 1), 2, 16)  # lane 1 would read byte 5


def test_precision_rules_of_the_array() -> None:
    PrecisionRegs(mode=Mode.SDP, g=4, k=3).validate()
    with pytest.raises(ValueError, match="SDP needs g in"):
        PrecisionRegs(mode=Mode.SDP, g=3, k=3).validate()
    with pytest.raises(ValueError, match="powers of two"):
        PrecisionRegs(mode=Mode.DRQ, rh=3, rw=4).validate()
    PrecisionRegs(mode=Mode.DRQ, rh=2, rw=8).validate()


def test_uniform_cost_equals_explicit_steps() -> None:
    g = _geom(cin_g=11, cout_g=5, oh=5, ow=7, kh=3, kw=3, pt=1, pl=1, pb=1, pr=1)
    explicit = timing.conv_counters(torch.full((2, 11, 5, 7), 2), 2, 2, g, rows=4, cols=4, predictor_cycles=0)
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
    assert laconic.conv_cycles(x, w, _geom(cin_g=3), rows=2, cols=1) == 3
    # PEs synchronise per group, not per element: lanes see channels (3, 0) and (0, 3) with unit weights,
    # each lane sums max(1, 2*1) + max(1, 0) = 3, so the group costs 3 (per-element sync would cost 2 + 2)
    x = torch.tensor([3.0, 0.0, 0.0, 3.0]).view(1, 2, 1, 2)
    w = np.ones((1, 2, 1, 1), dtype=np.int8)
    assert laconic.conv_cycles(x, w, _geom(ow=2), rows=2, cols=1) == 3


@pytest.mark.parametrize("geom", [
    dict(cin_g=10, cout_g=20, oh=3, ow=3, kh=3, kw=2),  # blocks and column tiles, padded
    dict(cin_g=1, groups=5, cout_g=1, oh=4, ow=4, kh=3, kw=3),  # depthwise: groups packed side by side
    dict(cin_g=2, cout_g=3, oh=5, ow=4, kh=1, kw=3),  # few output channels: rows packed side by side
    dict(cin_g=40, cout_g=7),  # a Gemm
])
def test_weight_layout_round_trip_and_words(geom: dict) -> None:
    g = _geom(**geom)
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (g.groups * g.cout_g, g.cin_g, g.kh, g.kw)).astype(np.int8)
    stream = np.frombuffer(layout.conv_weight_bytes(w, g, cols=4), dtype=np.int8)
    assert len(stream) % layout.word_bytes(4) == 0 == len(stream) % (BLOCK * 4)
    np.testing.assert_array_equal(layout.conv_weights(stream, g, cols=4), w)
    if timing.packing(g, 4) == 1:  # first word: tap (0, 0), channels 0..7 of block 0, columns 0..3
        first = stream[:BLOCK * 4].reshape(BLOCK, 4)
        cin, cout = min(BLOCK, g.cin_g), min(4, g.cout_g)
        np.testing.assert_array_equal(first[:cin, :cout], w[:cout, :cin, 0, 0].T)
        assert not first[cin:].any() and not first[:, cout:].any()


def test_param_records() -> None:
    image = np.frombuffer(layout.param_bytes(np.array([-5, 7]), np.array([100, 200]), np.array([3, 9])), np.uint8)
    assert len(image) == 2 * layout.PARAM_BYTES
    assert [list(v) for v in layout.params(image)] == [[-5, 7], [100, 200], [3, 9]]


@pytest.mark.parametrize("fields, error", [
    (dict(ih=28, iw=28, oh=28, ow=28, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1), None),
    (dict(ih=28, iw=28, oh=14, ow=14, kh=3, kw=3, sh=2, sw=2, pt=1, pb=1, pl=1, pr=1), None),  # (28+2-3)//2+1
    (dict(ih=28, iw=27, oh=14, ow=13, kh=3, kw=3, sh=2, sw=2, pt=0, pb=1, pl=0, pr=0), None),  # 26//2+1, 24//2+1
    (dict(ih=7, iw=7, oh=1, ow=1, kh=7, kw=7, sh=1, sw=1), None),
    (dict(ih=28, iw=28, oh=28, ow=28, kh=3, kw=3, sh=1, sw=1), "output 28x28 is not"),  # unpadded gives 26
    (dict(ih=2, iw=8, oh=1, ow=6, kh=3, kw=3, sh=1, sw=1), "(0x6)"),  # taller than the input
    (dict(ih=8, iw=8, oh=6, ow=6, kh=3, kw=3, sh=0, sw=1), "each must be at least 1"),
    (dict(ih=8, iw=8, oh=0, ow=0, kh=9, kw=9, sh=1, sw=1), "(0x0)"),  # no output is not a valid output
])
def test_window_geometry_hand_examples(fields: dict, error: str | None) -> None:
    for op in (Op.CONV, Op.POOL):
        ins = decode(encode(op, cin=1, cout=1, dh=1, dw=1, **fields))
        reason = geometry_error(ins)
        assert (reason is None) if error is None else (error in reason), reason


def test_malformed_geometry_is_refused_before_any_work() -> None:
    """A CONV whose output size is not its window's stops with BUFFER_OVERFLOW before the cycle model would
    size its passes (here 8190 column tiles x 1024 rows x 257 x tiles)."""
    ins = decode(encode(Op.CONV, cin=16, cout=65520, ih=4, iw=40, oh=1024, ow=4097, kh=3, kw=3, sh=1, sw=1, dh=1,
                        dw=1, groups=1))
    with pytest.raises(DeviceError) as info:
        conv_cost(torch.zeros(1, 16, 4, 40), PrecisionRegs(), ins, 16, 8, None, 5)
    assert (info.value.code, info.value.pc) == (ErrorCode.BUFFER_OVERFLOW, 5)
    assert "output 1024x4097 is not the 3x3 window's over the 4x40 input (2x38)" in str(info.value)
