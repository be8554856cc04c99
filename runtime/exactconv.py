"""Exact integer convolution on float hardware paths, with a proof per call.

float32 represents every integer below 2**24 exactly, so a float32 convolution (oneDNN, fast) returns
the exact integer result whenever every partial sum stays below 2**24, in any summation order. Each
call proves that from the data before trusting float32:

1. `max|x| * max_c sum|w_c|` (cheap), else
2. Cauchy-Schwarz per output pixel: `||x_window|| * max_c ||w_c||`, else the same bound per chunk of
   input channels, computing the chunks as one grouped convolution and adding them in float64, else
3. the two 4-bit term parts of x (|part| <= 15) as two float32 convolutions, else
4. float64 (exact below 2**53; slow).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dynq.contract.numerics import PART_SCALE, peak, split_parts

EXACT_F32 = float(1 << 24)
SAFETY = 1.001  # covers the float32 rounding of the bound computations themselves
PART_MAX = 15  # largest |term part| of an 8-bit value
CHUNKS = (2, 4, 8)


class ExactConv:
    """One layer's weights, prepared once for every exact path."""

    def __init__(self, w: np.ndarray, groups: int, stride: tuple[int, int], dilation: tuple[int, int]):
        self.groups, self.stride, self.dilation = groups, stride, dilation
        self.kernel = w.shape[2:]
        self.w64 = torch.from_numpy(w.astype(np.float64))
        self.w32 = self.w64.float().contiguous(memory_format=torch.channels_last)
        flat = self.w64.reshape(w.shape[0], -1)
        self.abs_sum_max = float(flat.abs().sum(1).max())
        self.l2_max = float(flat.square().sum(1).sqrt().max())
        self.always_exact = peak(False) * self.abs_sum_max * SAFETY < EXACT_F32  # any 8-bit input: no check
        self._chunked: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        """The exact accumulators (float32 or float64 tensor of integers) of conv(x, w), x 8-bit valued."""
        if self.always_exact:
            return self._conv(x, self.w32, padding, self.groups)
        lo, hi = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))
        if max(float(hi), -float(lo)) * self.abs_sum_max * SAFETY < EXACT_F32:
            return self._conv(x, self.w32, padding, self.groups)
        energy = x.square()
        if self._cauchy_schwarz(energy.sum(dim=1, keepdim=True), torch.tensor([self.l2_max]), padding):
            return self._conv(x, self.w32, padding, self.groups)
        cin = x.shape[1]
        for n in CHUNKS if self.groups == 1 else ():
            if cin % n or cin // n < 1:
                continue
            weight, l2 = self._chunks(n)
            chunk_energy = energy.reshape(x.shape[0], n, cin // n, *x.shape[2:]).sum(dim=2)
            if self._cauchy_schwarz(chunk_energy, l2, padding):
                out = self._conv(x, weight, padding, n)
                return out.double().view(x.shape[0], n, -1, *out.shape[2:]).sum(dim=1)
        if PART_MAX * self.abs_sum_max < EXACT_F32:
            high, low = split_parts(x)
            return self._conv(high, self.w32, padding, self.groups).double().mul_(PART_SCALE).add_(
                self._conv(low, self.w32, padding, self.groups))
        return F.conv2d(x.double(), self.w64, None, self.stride, padding, self.dilation, self.groups)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, padding: tuple[int, int], groups: int) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, None, self.stride, padding, self.dilation, groups)

    def _cauchy_schwarz(self, energy: torch.Tensor, l2: torch.Tensor, padding: tuple[int, int]) -> bool:
        """energy: [N, n, H, W] sums of x**2 per channel chunk; l2: [n] max weight norms per chunk."""
        n = energy.shape[1]
        window = torch.ones((n, 1, *self.kernel), dtype=energy.dtype)
        local = F.conv2d(energy, window, None, self.stride, padding, self.dilation, n)
        peak = local.amax(dim=(0, 2, 3)).double().sqrt()
        return bool((peak * l2 * SAFETY**2 < EXACT_F32).all())

    def _chunks(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights regrouped so chunk i of the input channels feeds output block i; per-chunk norms."""
        if n not in self._chunked:
            cout, cin = self.w64.shape[:2]
            w = self.w64.view(cout, n, cin // n, *self.kernel).transpose(0, 1)
            l2 = w.reshape(n, cout, -1).square().sum(-1).sqrt().amax(dim=1)
            grouped = w.reshape(n * cout, cin // n, *self.kernel).float().contiguous(memory_format=torch.channels_last)
            self._chunked[n] = (grouped, l2)
        return self._chunked[n]
