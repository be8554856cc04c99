"""MTCNN face detection on the overlay: agreement with fp32 and cost, per precision mode.

Protocol (`mtcnn_rows`). The trained MTCNN nets run the whole cascade in fp32 (plain torch) on real
photographs bundled with scikit-image; that is the reference. For every mode the same cascade runs with
each net compiled by dynq and emulated bit-exactly, and is compared with the reference twice:

* per net, on identical inputs: PNet on the same pyramid levels, RNet and ONet on the crops the fp32
  cascade cut (plus LFW face and non-face crops): mean absolute difference of the face probability, and
  how many of the inputs fp32 scores at or above 0.5 / 0.7 keep that decision (and how many new ones pass);
* end to end: the final detections (count, each fp32 face matched to the best remaining detection, IoU).

Cycles and energy are the device part of the identical-input runs (PNet on every level, RNet and ONet on
the fp32 crops of the evaluation photos), per photo, so modes are compared on the same work; PReLU,
Softmax and the Transpose before the dense layers run on the host CPU and are not counted. Every net is
calibrated on other photos and other LFW crops than those it is evaluated on.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import dynq
from dynq.runtime.importance import ImportanceMask
from dynq.runtime.model import Model, Report
from dynq.zoo import faces
from dynq.zoo.mtcnn import CROP, export_onnx, load_nets
from dynq.zoo.mtcnn_detect import Stages, Trace, box_iou, detect, normalise, torch_stages


@dataclass(frozen=True)
class Setup:
    """What one benchmark run evaluates: photos (scikit-image names; 'lfw-mosaic-i' is the i-th 16 faces of
    the evaluation or the calibration half of the LFW subset on a grey canvas), the canvas side every photo
    is letterboxed to, and the default modes. `skimage.data.cat` is `chelsea`: never put it on both sides."""

    eval_photos: tuple[str, ...]
    calib_photos: tuple[str, ...]
    canvas: int
    modes: tuple[str, ...]


MODES = ("int8", "drq", "sdp", "daq")
FULL = Setup(("astronaut", "camera", "lfw-mosaic-1", "lfw-mosaic-2", "lfw-mosaic-3", "coffee", "rocket"),
             ("chelsea", "immunohistochemistry", "hubble_deep_field", "lfw-mosaic-1", "lfw-mosaic-2"), 256, MODES)
"""At 256 pixels the astronaut's face is ~45 pixels wide and PNet runs on 8 pyramid levels (154 to 14)."""
QUICK = Setup(("astronaut", "lfw-mosaic-1"), ("chelsea", "lfw-mosaic-1"), 192, ("int8", "sdp"))
MOSAIC_GRID = 4
THRESHOLDS = (0.5, 0.7)
MATCH_IOU = 0.5
CALIB_CROPS = 64
"""Crops per crop-net calibration set: enough for the ranges, few enough to keep DRQ/SDP calibration fast."""
DAQ_MASK = ImportanceMask("entropy")
"""The DAQ region rule: each image's own entropy map; half the cells 8-bit, a quarter 4-bit, a quarter cropped."""


def _photos(names: tuple[str, ...], canvas: int, split: faces.Split,
            seed: int) -> tuple[np.ndarray, dict[str, str]]:
    """The named photos letterboxed to `canvas`, [N, 3, canvas, canvas] (the mosaics use `split`'s LFW faces),
    and what each one is, for the report."""
    crops, labels = faces.lfw_crops(split, seed)
    images, sources = [], {}
    for name in names:
        if name.startswith("lfw-mosaic-"):
            first = (int(name.rpartition("-")[2]) - 1) * MOSAIC_GRID**2
            images.append(faces.mosaic(crops[labels == 1][first:], canvas, MOSAIC_GRID, canvas // 6))
            sources[name] = (f"LFW faces {first}..{first + MOSAIC_GRID**2 - 1} of the {split} half, 25x25 each, "
                             f"at {canvas // 6} pixels")
        else:
            image = faces.photo(name)
            images.append(faces.letterbox(image, canvas))
            sources[name] = f"skimage.data.{name}, {image.shape[1]}x{image.shape[2]}"
    return np.stack(images), sources


def _check_mode(mode: str) -> tuple[str, bool]:
    """(preset name, zero-part skipping) of a mode name such as "sdp" or "int8+skip"."""
    base, _, option = mode.partition("+")
    if base not in MODES or option not in ("", "skip"):
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}, optionally with '+skip'")
    return base, bool(option)


def _lfw(split: faces.Split, seed: int, side: int) -> np.ndarray:
    """The LFW half as normalised crops for a crop net of input `side`."""
    return normalise(faces.resample(faces.lfw_crops(split, seed)[0], side, side))


@dataclass
class _Meter:
    """Device cost summed over the counted runs: cycles, energy, and cycle-weighted shares."""

    cycles: int = 0
    energy_uj: float = 0.0
    by_net: dict[str, int] = field(default_factory=dict)
    shares: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: {"sensitive": [], "kept": []})

    def add(self, net: str, report: Report) -> None:
        self.cycles += report.total_cycles
        self.energy_uj += report.energy_uj
        self.by_net[net] = self.by_net.get(net, 0) + report.total_cycles
        for layer in report.layers:
            if layer.mode in ("drq", "sdp", "daq"):
                for key, value in (("sensitive", layer.sensitive_share), ("kept", layer.kept_share)):
                    if value is not None:
                        self.shares[key].append((value, layer.cycles))

    def share(self, key: str) -> float | None:
        pairs = self.shares[key]
        weight = sum(c for _, c in pairs)
        return sum(v * c for v, c in pairs) / weight if weight else None


def _pnet_key(x: np.ndarray) -> str:
    """The build name of PNet at the pyramid level size of batch `x`."""
    return f"pnet@{x.shape[2]}x{x.shape[3]}"


class _DynqNets:
    """The compiled nets (one PNet per pyramid level size) run in one mode; the device cost of the runs
    marked `count` goes to `meter`."""

    def __init__(self, models: dict[str, Model], mode: str) -> None:
        self.models, self.meter = models, _Meter()
        base, skip = _check_mode(mode)
        self.registers = {name: [replace(r, zero_skip=True) if skip else r for r in m.build.preset(base)]
                          for name, m in models.items()}
        self.mask = DAQ_MASK if base == "daq" else None

    def run(self, name: str, x: np.ndarray, count: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(box regression, face probability) of net `name` on `x`."""
        result = self.models[name].run(x, registers=self.registers[name], mask=self.mask)
        if count:
            self.meter.add(name.split("@")[0], result.report)
        return result.outputs["reg"], result.outputs["prob"][:, 1]

    def cascade(self) -> Stages:
        """PNet counts (it sees the same pyramid levels in every mode); the crop nets do not here (their
        crops depend on the mode's PNet), they are counted on the fp32 crops instead."""
        return Stages(lambda x: self.run(_pnet_key(x), x, count=True), lambda x: self.run("rnet", x),
                      lambda x: self.run("onet", x))


def _compile(calib: Trace, lfw: dict[str, np.ndarray], board: str, out: Path, seed: int,
             progress: Callable[[str], None]) -> dict[str, Model]:
    """Exports and compiles PNet at every pyramid level size and the two crop nets, each calibrated on the
    calibration photos' own inputs to that net (crop nets: their cascade crops and LFW crops)."""
    nets = load_nets()
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, Any, str, np.ndarray]] = [
        (_pnet_key(lv), nets.pnet, "pnet", lv) for lv in calib.levels]
    for name in ("rnet", "onet"):
        crops = np.concatenate([getattr(calib, f"{name}_in"), lfw[name]])
        jobs.append((name, getattr(nets, name), name, crops[np.sort(rng.permutation(len(crops))[:CALIB_CROPS])]))
    models = {}
    for key, net, kind, data in jobs:
        progress(f"compiling {key}")
        onnx_path = export_onnx(net, kind, data.shape[2], data.shape[3], out / f"{key}.onnx")
        dynq.compile(onnx_path, board, out / key, calib=data, emulator_only=True)  # PNet's big levels, ONet's weights
        models[key] = dynq.load(out / key)
    return models


def _agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Face-probability agreement on identical inputs: mean |difference|, and per threshold t the inputs
    fp32 puts at or above t, the share of them the mode keeps there, and how many the mode newly passes."""
    ref, got = ref.reshape(-1), got.reshape(-1)
    row: dict[str, Any] = {"n": int(ref.size), "prob_mad": float(np.abs(ref - got).mean()) if ref.size else None}
    for t in THRESHOLDS:
        pos = ref >= t
        row[f"fp32_at_{t}"] = int(pos.sum())
        row[f"kept_at_{t}"] = float((got[pos] >= t).mean()) if pos.any() else None
        row[f"gained_at_{t}"] = int((got[~pos] >= t).sum())
    return row


def _match(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    """Final detections: each fp32 box, best score first, takes the unclaimed mode box it overlaps most;
    IoU >= MATCH_IOU counts as found. Mean IoU is over all fp32 boxes (a lost face counts 0)."""
    ious, score_diffs, extra = [], [], 0
    for a, b in zip(ref, got, strict=True):
        iou = box_iou(a, b) if len(a) and len(b) else np.zeros((len(a), len(b)))
        free = np.ones(len(b), bool)
        for i in np.argsort(-a[:, 4], kind="stable"):
            j = int(np.argmax(np.where(free, iou[i], -1.0))) if free.any() else -1
            if j >= 0 and iou[i, j] >= MATCH_IOU:
                free[j] = False
                ious.append(float(iou[i, j]))
                score_diffs.append(abs(float(a[i, 4] - b[j, 4])))
            else:
                ious.append(0.0)
        extra += int(free.sum())
    found = sum(v > 0 for v in ious)
    return {"detections_fp32": sum(len(a) for a in ref), "detections": sum(len(b) for b in got),
            "found": found, "lost": len(ious) - found, "extra": extra,
            "mean_iou": float(np.mean(ious)) if ious else None,
            "mean_iou_found": float(np.mean([v for v in ious if v > 0])) if found else None,
            "final_prob_mad": float(np.mean(score_diffs)) if score_diffs else None}


def _evaluate(models: dict[str, Model], mode: str, ref: Trace, images: np.ndarray,
              lfw: dict[str, np.ndarray], lfw_ref: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One mode: the cascade end to end, then each crop net on the fp32 crops and the LFW crops. Returns the
    table row (scalars) and the details (per-net agreement, cycles per net)."""
    nets = _DynqNets(models, mode)
    got = detect(images, nets.cascade())
    row: dict[str, Any] = {"mode": mode, **_match(ref.boxes, got.boxes)}
    stages = {"pnet": _agreement(np.concatenate([p.reshape(-1) for p in ref.pnet_prob]),
                                 np.concatenate([p.reshape(-1) for p in got.pnet_prob]))}
    for name in ("rnet", "onet"):
        crops = getattr(ref, f"{name}_in")
        prob = nets.run(name, crops, count=True)[1] if len(crops) else np.zeros(0, np.float32)
        prob = np.concatenate([prob, nets.run(name, lfw[name])[1]])
        stages[name] = _agreement(np.concatenate([getattr(ref, f"{name}_prob"), lfw_ref[name]]), prob)
    photos, onet = len(images), stages["onet"]
    row.update({"face_prob_mad": onet["prob_mad"], **{f"onet_kept_at_{t}": onet[f"kept_at_{t}"] for t in THRESHOLDS},
                "rnet_prob_mad": stages["rnet"]["prob_mad"], "pnet_prob_mad": stages["pnet"]["prob_mad"],
                "cycles_per_image": nets.meter.cycles / photos,
                "energy_uj_per_image": nets.meter.energy_uj / photos,
                "sensitive_share": nets.meter.share("sensitive"), "kept_share": nets.meter.share("kept")})
    details = {"stages": stages, "cycles_per_image_by_net": {k: v / photos for k, v in nets.meter.by_net.items()}}
    return row, details


def mtcnn_rows(board: str = "pynq-z2", modes: tuple[str, ...] | None = None,
               progress: Callable[[str], None] | None = None, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """MTCNN with its trained weights on real photos: per mode, agreement with fp32 and device cost.

    Returns {"suite": "mtcnn", "board", "seed", "setup": what was run, "rows": one dict per mode, "seconds"}.
    `modes` defaults to the setup's (FULL: int8, drq, sdp, daq; QUICK: int8, sdp); "MODE+skip" adds zero-part
    skipping; "speedup_vs_int8" is None unless int8 is among them. `quick` runs the QUICK setup (two photos on
    a smaller canvas). `progress` is called with a short description before each step. Deterministic for a
    given seed: it picks which LFW crops calibrate and which evaluate, and the crop nets' calibration subsets.

    Each row (scalars only): "mode"; end to end "detections_fp32", "detections", "found", "lost", "extra",
    "mean_iou" (over the fp32 detections, lost ones 0), "mean_iou_found", "final_prob_mad"; ONet's face
    probability on the fp32 and LFW crops "face_prob_mad", "onet_kept_at_0.5", "onet_kept_at_0.7", and
    "rnet_prob_mad", "pnet_prob_mad"; cost "cycles_per_image" (device part), "speedup_vs_int8",
    "energy_uj_per_image", "sensitive_share" (DRQ/DAQ) and "kept_share" (term parts kept), both weighted by the
    dynamic layers' cycles. "details"[mode] holds each net's full agreement ("stages") and cycles per net;
    "description" says in one paragraph what was run."""
    start = time.perf_counter()
    say = progress or (lambda _message: None)
    setup = QUICK if quick else FULL
    modes = modes or setup.modes
    for mode in modes:
        _check_mode(mode)
    say("fp32 cascade")
    fp32 = torch_stages(load_nets())
    images, sources = _photos(setup.eval_photos, setup.canvas, "eval", seed)
    calib_images, calib_sources = _photos(setup.calib_photos, setup.canvas, "calib", seed)
    lfw = {name: _lfw("eval", seed, CROP[name]) for name in CROP}
    lfw_calib = {name: _lfw("calib", seed, CROP[name]) for name in CROP}
    ref, calib = detect(images, fp32), detect(calib_images, fp32)
    lfw_ref = {name: getattr(fp32, name)(lfw[name])[1] for name in CROP}
    rows, details = [], {}
    with tempfile.TemporaryDirectory(prefix="dynq-mtcnn-") as tmp:
        models = _compile(calib, lfw_calib, board, Path(tmp), seed, say)
        for mode in modes:
            say(f"{mode}: cascade and crop nets")
            row, details[mode] = _evaluate(models, mode, ref, images, lfw, lfw_ref)
            rows.append(row)
    base = next((r["cycles_per_image"] for r in rows if r["mode"] == "int8"), None)
    for r in rows:
        r["speedup_vs_int8"] = base / r["cycles_per_image"] if base else None
    run = {**asdict(setup), "modes": list(modes), "eval_sources": sources, "calib_sources": calib_sources,
           "pyramid_levels": [list(lv.shape[2:]) for lv in ref.levels],
           "crops": {"rnet": len(ref.rnet_in), "onet": len(ref.onet_in)}, "lfw_eval_crops": len(lfw["rnet"]),
           "daq_mask": DAQ_MASK.describe(), "thresholds": list(THRESHOLDS), "match_iou": MATCH_IOU}
    return {"suite": "mtcnn", "board": board, "seed": seed, "setup": run, "description": _describe(run, ref),
            "rows": rows, "details": details, "seconds": time.perf_counter() - start}


def _describe(run: dict[str, Any], ref: Trace) -> str:
    """One paragraph saying what was run, for reports."""
    faces_found = sum(len(b) for b in ref.boxes)
    return (f"The MTCNN cascade with its trained weights (facenet-pytorch 2.6.0's PNet, RNet, ONet) on "
            f"{len(run['eval_photos'])} photos letterboxed to {run['canvas']}x{run['canvas']} "
            f"({', '.join(run['eval_photos'])}; the mosaics tile real LFW faces), where fp32 finds {faces_found} "
            f"faces; PNet on {len(run['pyramid_levels'])} pyramid levels "
            f"({run['pyramid_levels'][0][0]} to {run['pyramid_levels'][-1][0]} pixels), RNet on "
            f"{run['crops']['rnet']} and ONet on {run['crops']['onet']} fp32 crops plus {run['lfw_eval_crops']} "
            f"LFW face/non-face crops each. Calibrated on {', '.join(run['calib_photos'])} and the other LFW half. "
            "Agreement is with the fp32 cascade: face-probability differences on identical inputs, and the final "
            f"boxes matched at IoU >= {run['match_iou']}. Cycles and energy are the overlay's part per photo "
            "(PReLU, Softmax and a Transpose run on the host); DAQ uses each image's entropy mask "
            f"(fractions {run['daq_mask']['fractions']}).")
