"""An independent integer reference of the overlay's instruction semantics, for checking the emulator.

Plain numpy int64, written from `docs/isa.md` and nothing of the emulator: convolutions are sums over
kernel taps (no float, no torch conv), requantization is the contract's integer formula. It shares
only the contract's precision rules, which tests pin separately with hand-computed values.
"""

from __future__ import annotations

import numpy as np
import torch

from dynq.contract import Mode, Op, PrecisionRegs, layout, timing
from dynq.contract import numerics as nx
from dynq.runtime.artifacts import Build


def requant(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, lo: int, hi: int) -> np.ndarray:
    t = nx.requantize(torch.from_numpy(acc), torch.from_numpy(np.asarray(mult, np.int64)),
                      torch.from_numpy(np.asarray(shift, np.int64)), lo, hi)
    return t.numpy()


def precision_input(x: np.ndarray, reg: PrecisionRegs, signed: bool, groups: int,
                    mask: np.ndarray | None) -> np.ndarray:
    t = torch.from_numpy(x.astype(np.float64))
    n, c, h, w = x.shape
    if reg.mode == Mode.INT8:
        return x
    if reg.mode == Mode.SDP:
        xq, _, _ = nx.sdp_keep(t.reshape(n * groups, c // groups, h, w), reg.g, reg.k)
        return xq.reshape(n, c, h, w).numpy().astype(np.int64)
    if reg.mode == Mode.DRQ:
        sens = nx.region_sums(t, reg.rh, reg.rw) >= reg.threshold
        level = nx.expand_regions(sens, reg.rh, reg.rw, h, w).numpy().astype(np.int64) + 1
    else:
        level = np.broadcast_to(nx.mask_cells(torch.from_numpy(mask), h, w).numpy(), x.shape)
    low = nx.insensitive(t, signed, reg.insens_hi).numpy().astype(np.int64)
    return np.where(level == 2, x, np.where(level == 1, low, 0))


def conv(x: np.ndarray, w: np.ndarray, ins) -> np.ndarray:  # noqa: ANN001 - a decoded Instr
    n = x.shape[0]
    g = ins.groups
    cin_g, cout_g = ins.cin // g, ins.cout // g
    xp = np.pad(x, ((0, 0), (0, 0), (ins.pt, ins.pb), (ins.pl, ins.pr)))
    out = np.zeros((n, ins.cout, ins.oh, ins.ow), dtype=np.int64)
    for a in range(ins.kh):
        for b in range(ins.kw):
            y0, x0 = a * ins.dh, b * ins.dw
            tap = xp[:, :, y0:y0 + ins.sh * (ins.oh - 1) + 1:ins.sh, x0:x0 + ins.sw * (ins.ow - 1) + 1:ins.sw]
            for gi in range(g):
                xs = tap[:, gi * cin_g:(gi + 1) * cin_g]
                ws = w[gi * cout_g:(gi + 1) * cout_g, :, a, b]
                out[:, gi * cout_g:(gi + 1) * cout_g] += np.einsum("nchw,oc->nohw", xs, ws)
    return out


def run(build: Build, x_q: np.ndarray, regs: list[PrecisionRegs], mask: np.ndarray | None = None) -> np.ndarray:
    """Executes the (single-segment) program on integer input; returns the arena, int64 [N, bytes]."""
    n = x_q.shape[0]
    mem = np.zeros((n, build.manifest["arena_bytes"]), dtype=np.int64)

    def read(offset: int, shape: tuple[int, ...]) -> np.ndarray:
        return mem[:, offset:offset + int(np.prod(shape))].reshape(n, *shape)

    def write(offset: int, value: np.ndarray) -> None:
        mem[:, offset:offset + value[0].size] = value.reshape(n, -1)

    write(build.manifest["input"]["offset"], x_q.astype(np.int64))
    weights, cols = build.weights, int(build.manifest["arch"]["cols"])
    for ins in build.instructions:
        if ins.op == Op.END:
            break
        src = read(ins.src0, (ins.cin, ins.ih, ins.iw))
        if ins.op == Op.CONV:
            geom = timing.conv_geometry(ins)
            stream = np.frombuffer(weights, np.int8, layout.conv_weight_count(geom, cols), ins.src1)
            w = layout.conv_weights(stream, geom, cols).astype(np.int64)
            bias, mult, shift = layout.params(np.frombuffer(weights, np.uint8, ins.cout * layout.PARAM_BYTES,
                                                            ins.param))
            xe = precision_input(src, regs[ins.layer], bool(ins.s0_signed), ins.groups, mask)
            acc = conv(xe, w, ins) + bias.reshape(1, -1, 1, 1)
            out = requant(acc, mult.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1), ins.clip_lo, ins.clip_hi)
            if ins.aux == 1:  # fused 2x2 max pooling, floor mode
                h, w = out.shape[2] // 2 * 2, out.shape[3] // 2 * 2
                out = out[:, :, :h, :w].reshape(n, ins.cout, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        elif ins.op == Op.POOL:
            pads = ((0, 0), (0, 0), (ins.pt, ins.pb), (ins.pl, ins.pr))
            xp = np.pad(src, pads, constant_values=-(1 << 20) if ins.aux == 0 else 0)
            taps = [xp[:, :, a:a + ins.sh * (ins.oh - 1) + 1:ins.sh, b:b + ins.sw * (ins.ow - 1) + 1:ins.sw]
                    for a in range(ins.kh) for b in range(ins.kw)]
            if ins.aux == 0:
                out = np.clip(np.max(taps, axis=0), ins.clip_lo, ins.clip_hi)
            else:
                out = requant(np.sum(taps, axis=0), ins.mult0, ins.shift0, ins.clip_lo, ins.clip_hi)
        elif ins.op == Op.ADD:
            other = read(ins.src1, (ins.cin, ins.ih, ins.iw))
            out = requant(src * ins.mult0 + other * ins.mult1, 1, ins.shift0, ins.clip_lo, ins.clip_hi)
        elif ins.op == Op.MOVE:
            out = requant(src * ins.mult0, 1, ins.shift0, ins.clip_lo, ins.clip_hi)
        else:
            continue
        write(ins.dst, out)
    return mem
