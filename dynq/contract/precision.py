"""The precision rules as the PE array applies them to a CONV's input, and what that costs.

`conv_cost` is the one place that turns a layer's registers and input into the values the array computes
with and its counters: the emulator runs it on every CONV, the compiler's policy on calibration data to
keep a dynamic mode only where it saves cycles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynq.contract import numerics as nx
from dynq.contract import timing
from dynq.contract.array import fused_pool_limits, predictor_limits, window_limits
from dynq.contract.isa import Instr, geometry_error
from dynq.contract.registers import DeviceError, ErrorCode, Level, Mode, PrecisionRegs

ConvPlan = tuple[timing.ConvGeometry, int]
"""What a CONV's instruction and registers fix before any data: its geometry and predictor cycles."""


def conv_cost(x: torch.Tensor, reg: PrecisionRegs, ins: Instr, rows: int, cols: int, mask: torch.Tensor | None,
              pc: int, plan: ConvPlan | None = None) -> tuple[torch.Tensor, dict[str, int], timing.ConvGeometry]:
    """(x' the array computes with, the layer's counters over the batch, its geometry) for a CONV whose
    input is x [N, cin, ih, iw]; raises DeviceError where the overlay would stop. `plan` is `conv_plan`'s
    result for the same instruction and registers, when the caller kept it."""
    geom, predictor = plan or conv_plan(reg, ins, rows, cols, pc)
    xq, steps, stats = apply_precision(x, reg, bool(ins.s0_signed), ins.groups, mask, pc)
    counters = timing.conv_counters(steps, x.shape[0], nx.pad_cost(reg), geom, rows, cols, predictor)
    return xq, {**counters, **stats}, geom


def conv_plan(reg: PrecisionRegs, ins: Instr, rows: int, cols: int, pc: int) -> ConvPlan:
    """Every check the overlay makes of a CONV's fields and registers before it reads the input (raising
    DeviceError as it would stop), the geometry, and the cycles of the DRQ predictor's or the DAQ mask
    expansion's pass over the input. It depends on no data, so a caller running the same instruction with
    the same registers again may keep it."""
    if ins.groups < 1 or ins.cin % ins.groups or ins.cout % ins.groups:
        raise DeviceError(ErrorCode.BAD_OPCODE, pc, f"groups={ins.groups} does not divide cin/cout")
    if ins.aux > 1:
        raise DeviceError(ErrorCode.BAD_OPCODE, pc, f"CONV aux={ins.aux}: 0 (plain) or 1 (fused 2x2 max pooling)")
    try:
        reg.validate()
    except ValueError as exc:
        raise DeviceError(ErrorCode.BAD_PRECISION, pc, str(exc)) from None
    geom = timing.conv_geometry(ins, reg.g if reg.mode == Mode.SDP else 1)
    if timing.reduction_split(geom):
        if reg.mode in (Mode.SDP, Mode.DAQ):
            raise DeviceError(ErrorCode.BAD_PRECISION, pc, f"{reg.mode.name} needs a spatial layer; this one has a "
                                                           "single output pixel (a Gemm): run it in int8 or DRQ")
    else:
        check_window(ins, rows, pc)
    check_geometry(ins, pc)
    if ins.aux == 1 and (reason := fused_pool_limits(ins.oh, ins.ow, rows)):
        raise DeviceError(ErrorCode.BUFFER_OVERFLOW, pc, reason)
    if reg.mode == Mode.DRQ and (reason := predictor_limits(ins.iw, rows)):
        raise DeviceError(ErrorCode.BUFFER_OVERFLOW, pc, reason)
    if reg.mode == Mode.DRQ:
        return geom, timing.predictor_cycles(ins.cin, ins.ih, ins.iw, rows)
    if reg.mode == Mode.DAQ:
        return geom, timing.mask_cycles(ins.ih, ins.iw)
    return geom, 0


def check_geometry(ins: Instr, pc: int) -> None:
    reason = geometry_error(ins)
    if reason:
        raise DeviceError(ErrorCode.BUFFER_OVERFLOW, pc, reason)


def require_mask(reg: PrecisionRegs, mask: torch.Tensor | None, pc: int) -> None:
    """A DAQ layer reads the region mask: a run without one stops before it (the overlay's mask memory would
    hold whatever the last run left)."""
    if reg.mode == Mode.DAQ and mask is None:
        raise DeviceError(ErrorCode.BAD_PRECISION, pc, "DAQ mode needs a region mask: pass --mask "
                          "entropy|gradient|keypoints|FILE.npy (16x16 of 0/1/2), Model.run(..., mask=...) or "
                          "Model.set_mask(...)")


def check_window(ins: Instr, rows: int, pc: int) -> None:
    reason = window_limits(ins.sw, ins.kw, (ins.dh, ins.dw), ins.ow, rows)
    if reason:
        raise DeviceError(ErrorCode.BUFFER_OVERFLOW, pc, reason)


def apply_precision(x: torch.Tensor, reg: PrecisionRegs, signed: bool, groups: int, mask: torch.Tensor | None,
                    pc: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, int]]:
    """The input as the PE array computes with it under the layer's registers.

    Returns (x', steps per sync unit and position or None when uniform, statistics counters).
    """
    n, c, h, w = x.shape
    values = x.numel()
    stats = {"total_parts": 2 * values}
    if reg.mode == Mode.INT8:
        if not reg.zero_skip:
            return x, None, {**stats, "kept_parts": 2 * values}
        steps = nx.part_steps(x)
        return x, steps, {**stats, "kept_parts": int(steps.sum())}
    if reg.mode in (Mode.DRQ, Mode.DAQ):
        if reg.mode == Mode.DRQ:
            sums = nx.region_sums(x, reg.rh, reg.rw)
            sensitive_regions = sums >= reg.threshold
            level = nx.expand_regions(sensitive_regions, reg.rh, reg.rw, h, w).to(torch.int16) + 1
            stats.update(sensitive_regions=int(sensitive_regions.sum()), total_regions=sensitive_regions.numel())
        else:
            require_mask(reg, mask, pc)
            if mask.dim() == 3 and mask.shape[0] != n:
                raise ValueError(f"{mask.shape[0]} region masks for a batch of {n} images")
            level = nx.mask_cells(mask, h, w).to(torch.int16).reshape(-1, 1, h, w).expand(n, c, h, w)
            stats.update(sensitive_regions=int((level == Level.EIGHT_BIT).sum()), total_regions=values)
        low = nx.insensitive(x, signed, reg.insens_hi)
        xq = torch.where(level == Level.EIGHT_BIT, x, torch.where(level == Level.FOUR_BIT, low, torch.zeros_like(x)))
        if reg.zero_skip:
            steps = torch.where(level == Level.EIGHT_BIT, nx.part_steps(xq), (xq != 0).to(torch.int16))
        else:
            steps = level.clone() if reg.mode == Mode.DAQ else level.expand(n, c, h, w).clone()
        return xq, steps, {**stats, "kept_parts": int(steps.sum())}
    cin_g = c // groups
    xg = x.reshape(n * groups, cin_g, h, w)
    xq, keep_hi, keep_lo = nx.sdp_keep(xg, reg.g, reg.k)
    units = timing.ceil_div(cin_g, reg.g)
    stats["kept_parts"] = int(keep_hi.sum() + keep_lo.sum())
    xq = xq.reshape(n, c, h, w)
    if not reg.zero_skip:
        return xq, None, stats
    hi, lo = nx.split_parts(xq.reshape(n * groups, cin_g, h, w))
    used = ((hi != 0) & keep_hi).to(torch.int16) + ((lo != 0) & keep_lo).to(torch.int16)
    padded = F.pad(used, (0, 0, 0, 0, 0, units * reg.g - cin_g))
    steps = padded.view(n * groups, units, reg.g, h, w).sum(dim=2).reshape(n, groups * units, h, w)
    return xq, steps, stats
