"""Integer numerics of the overlay: requantization, term parts and the precision rules of every mode.

These functions *are* the specification: the emulator executes them, the RTL is checked against them,
and the compiler uses `quantize_multiplier` to produce the constants they consume. Activations are
tensors of exact integers (float32 or int64 torch tensors); nothing here rounds a float on the device
path except `quantize_multiplier`, which runs once in the compiler.

Rounding rule (one, everywhere): `requant(acc, m, s) = (acc * m + (2**s >> 1)) >> s`, an arithmetic
shift, i.e. round half towards +infinity. Multipliers are unsigned 15-bit (`MULT_BITS`), so
`|acc * m| < 2**46` and the rule is also exact in float64 (the emulator's fast path).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dynq.contract.registers import MASK_GRID, Mode, PrecisionRegs

MULT_BITS = 15
"""Requantization multipliers lie in [0, 2**MULT_BITS)."""
SHIFT_MAX = 63
ACC_BITS = 32
"""Accumulators are int32; the compiler proves the bound per layer (`accumulator_bound`)."""
PART_BITS = 4
"""An 8-bit activation is two 4-bit term parts: x = 16*hi + lo."""
PART_SCALE = 1 << PART_BITS
WEIGHT_MAX = 127
"""Weights are symmetric int8 in [-WEIGHT_MAX, WEIGHT_MAX] (no -128, so negation never overflows)."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Returns (mult, shift) with mult/2**shift ~= real, mult in [2**14, 2**15) where the shift allows."""
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"requantization scale must be finite and >= 0, got {real}")
    if real == 0:
        return 0, 0
    shift = MULT_BITS - 1 - math.frexp(real)[1] + 1
    shift = max(0, min(SHIFT_MAX, shift))
    mult = round(real * 2.0**shift)
    if mult >= 1 << MULT_BITS:
        if shift == 0:
            raise ValueError(f"requantization scale {real} exceeds {2**MULT_BITS - 1}")
        mult, shift = round(real * 2.0 ** (shift - 1)), shift - 1
    return int(mult), int(shift)


def requantize(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The integer rule on int64 tensors: clamp((acc*mult + (2**shift >> 1)) >> shift, lo, hi)."""
    acc, mult, shift = acc.to(torch.int64), mult.to(torch.int64), shift.to(torch.int64)
    rounding = torch.bitwise_right_shift(torch.ones_like(shift) << shift, 1)
    return torch.clamp(torch.bitwise_right_shift(acc * mult + rounding, shift), lo, hi)


def requantize_fast(acc: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Same result as `requantize`, in float64: `scale = mult * 2**-shift` is exact, so is the product.

    `acc` holds exact integers (any float dtype), `scale` broadcasts against it. Returns float32, exact
    because every clamp range of the ISA (16-bit fields) lies within float32's exact integers.
    """
    out = acc.to(torch.float64).mul_(scale).add_(0.5).floor_().clamp_(lo, hi)
    return out.to(torch.float32)


def scale_of(mult: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The exact float64 value of mult * 2**-shift."""
    return mult.to(torch.float64) * torch.pow(2.0, -shift.to(torch.float64))


def value_range(signed: bool) -> tuple[int, int]:
    return (-128, 127) if signed else (0, 255)


def peak(signed: bool) -> int:
    """Largest |x| of an 8-bit tensor."""
    return 128 if signed else 255


def quantize(x: np.ndarray, scale: float, lo: int, hi: int) -> np.ndarray:
    """Host-side quantization of float values onto a tensor's integer grid (round half to even, the
    rule of onnxruntime's QuantizeLinear, so QDQ models agree), as float32 integers."""
    return np.clip(np.rint(x / scale), lo, hi).astype(np.float32)


def split_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Term parts of 8-bit values: hi = x >> 4 (signed for int8), lo = x & 15, x = 16*hi + lo."""
    hi = torch.floor(x / PART_SCALE)
    return hi, x - PART_SCALE * hi


def part_steps(x: torch.Tensor) -> torch.Tensor:
    """Non-zero term parts of each value (0, 1 or 2): the steps zero-part skipping leaves."""
    hi, lo = split_parts(x)
    return (hi != 0).to(torch.int16) + (lo != 0).to(torch.int16)


def part_range(signed: bool) -> tuple[int, int]:
    """The values a high part takes: x >> 4 of an int8 (-8..7) or a uint8 (0..15)."""
    lo, hi = value_range(signed)
    return lo >> PART_BITS, hi >> PART_BITS


LOW_MAX = PART_SCALE - 1
"""The largest magnitude one low part holds (the 4-bit low-part rule saturates to it)."""


def insensitive(x: torch.Tensor, signed: bool, use_hi: bool) -> torch.Tensor:
    """The 4-bit value a DRQ/DAQ low-precision region computes with (one term part, one step).

    Low-part rule: saturate the magnitude to 15 (exact for small values; the DRQ authors' choice).
    High-part rule: keep the rounded high part, 16 * clamp((x + 8) >> 4) within the part's range.
    """
    if use_hi:
        lo, hi = part_range(signed)
        return PART_SCALE * torch.clamp(torch.floor((x + PART_SCALE // 2) / PART_SCALE), lo, hi)
    return torch.clamp(x, -LOW_MAX, LOW_MAX)


def region_sums(x: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    """Sum of |x| per channel over Rh x Rw regions tiling the map from (0, 0); edge regions are smaller.

    x is [N, C, H, W]; returns float64 [N, C, ceil(H/rh), ceil(W/rw)] of exact integers.
    """
    n, c, h, w = x.shape
    gh, gw = -(-h // rh), -(-w // rw)
    padded = torch.zeros((n, c, gh * rh, gw * rw), dtype=torch.float64)
    padded[:, :, :h, :w] = x.abs()
    return padded.view(n, c, gh, rh, gw, rw).sum(dim=(3, 5))


def expand_regions(flags: torch.Tensor, rh: int, rw: int, h: int, w: int) -> torch.Tensor:
    """Per-region values [N, C, gh, gw] broadcast back to every pixel [N, C, h, w]."""
    return flags.repeat_interleave(rh, dim=2).repeat_interleave(rw, dim=3)[:, :, :h, :w]


def mask_cells(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The region mask (MASK_GRID x MASK_GRID cells over the input) scaled to an h x w feature map.

    Pixel (y, x) takes cell (y * MASK_GRID // h, x * MASK_GRID // w). Returns [h, w], or [N, h, w] for one
    mask per image ([N, MASK_GRID, MASK_GRID]: the host rewrites the mask memory between images).
    """
    ys = torch.arange(h) * MASK_GRID // h
    xs = torch.arange(w) * MASK_GRID // w
    return mask[..., ys, :][..., xs]


def sdp_keep(x: torch.Tensor, g: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDP selection: in each group of g channels at a pixel keep the k most important term parts.

    Importance is 16*|hi| for a high part and |lo| for a low part; ties go to high parts, then to the
    lower channel. Returns (x', keep_hi, keep_lo) where x' is the value computed with. Channels are
    padded with zeros to a multiple of g (padding parts are never more important than real ones).
    """
    n, c, h, w = x.shape
    groups = -(-c // g)
    xp = torch.zeros((n, groups * g, h, w), dtype=x.dtype)
    xp[:, :c] = x
    hi, lo = split_parts(xp.view(n, groups, g, h, w))
    importance = torch.cat([16 * hi.abs(), lo.abs()], dim=2)  # [n, groups, 2g, h, w]
    order = torch.arange(2 * g, dtype=importance.dtype).view(1, 1, 2 * g, 1, 1)
    keys = importance * (2 * g) + (2 * g - 1 - order)  # unique per part, larger = kept first
    kk = min(k, 2 * g)
    if kk == 0:
        keep = torch.zeros_like(keys, dtype=torch.bool)
    else:
        kth = torch.topk(keys, kk, dim=2).values[:, :, -1:]
        keep = keys >= kth
    keep_hi, keep_lo = keep[:, :, :g], keep[:, :, g:]
    xq = (16 * hi * keep_hi + lo * keep_lo).view(n, groups * g, h, w)[:, :c]
    return xq, keep_hi.reshape(n, groups * g, h, w)[:, :c], keep_lo.reshape(n, groups * g, h, w)[:, :c]


def accumulator_bound(k: int, w_absmax: int, signed_input: bool) -> int:
    """Largest |sum| a conv with reduction size k can reach before bias (the int32 proof)."""
    return k * peak(signed_input) * w_absmax


def pad_cost(regs: PrecisionRegs) -> int:
    """Steps a padding position costs per sync unit (zero-skip skips it; otherwise the mode's floor)."""
    if regs.zero_skip:
        return 0
    return {Mode.INT8: 2, Mode.DRQ: 1, Mode.DAQ: 1, Mode.SDP: regs.k}[regs.mode]
