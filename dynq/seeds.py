"""`dynq bench --suite seeds`: the seed papers' experiments on real trained models and real data, written to
`docs/results.md` and PNG plots.

For LeNet-5 and the small ResNet on the real MNIST digits it sweeps the compiler's DRQ error budgets and
region sizes, SDP error budgets and group sizes, the input-importance (DAQ) masks, and zero-part skipping,
runs every point on the bit-exact emulator, and sets the architectures side by side at equal PE count:
the overlay's nibble-serial array in int8, DRQ, SDP and DAQ, a Laconic term-serial array and an 8-bit
bit-parallel (Eyeriss-like) array. The MTCNN face detector runs from its trained weights on photographs.
Every number in the report comes from this run; the only typed-in figures are the papers' own claims,
quoted beside ours.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.progress import Progress

import dynq
from dynq.bench import mean_present
from dynq.contract.array import SDP_G_VALUES
from dynq.runtime import bitparallel
from dynq.runtime.energy import ENERGY_PJ
from dynq.runtime.importance import ImportanceMask
from dynq.runtime.model import Model, Report

MODELS = ("lenet5", "resnet_small")
BOARD = "pynq-z2"
CALIB_IMAGES = 256
LOSS_LIMIT = 0.01
"""Accuracy a dynamic operating point may lose against int8 on the same array (one point of top-1)."""

DRQ_BUDGETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
DRQ_REGIONS = (2, 4, 8)
SDP_BUDGETS = (0.05, 0.1, 0.15, 0.2, 0.3)
SDP_GROUPS = tuple(g for g in SDP_G_VALUES if g >= 2)
"""Every group size the array offers but 1 (where SDP degenerates to per-channel nibble dropping)."""
DAQ_IMPORTANCE = ("entropy", "gradient", "keypoints")
DAQ_FRACTIONS = ((0.5, 0.5), (0.25, 0.75), (0.25, 0.5), (0.1, 0.6))
"""(8-bit share, 4-bit share) of the mask cells; the rest are skipped."""
QUICK = {"drq_budgets": (0.1, 0.3), "drq_regions": (4,), "sdp_budgets": (0.1, 0.3), "sdp_groups": (8,),
         "daq_importance": ("entropy",), "daq_fractions": ((0.25, 0.75),)}
"""The smaller sweep of `run(quick=True)` (tests, a first look)."""

CLAIMS = (
    ("DRQ", "vs an Eyeriss-like coarse-grained accelerator: +92% performance, -72% energy, < 1% accuracy loss",
     "drq"),
    ("SDP", "vs DRQ at the same accuracy: +29% performance, -51% energy", "sdp"),
    ("Laconic", "term-serial PEs: at least 40x less multiplication work in the limit, identical results",
     "laconic"),
    ("EMC2 (dynamic activation quantization)", "per-input precision from input importance: -33.5% compute energy "
     "at the original top-1", "daq"),
)
"""The seed papers' headline claims (from their abstracts), and which of our families answers each."""

console = Console(width=150)


@dataclass
class Point:
    """One model in one precision setting, over the evaluation images."""

    model: str
    family: str
    setting: str
    accuracy: float
    cycles: float
    """Per image."""
    energy_uj: float | None
    """Per image (None where the architecture has no energy model)."""
    utilization: float | None
    sensitive_share: float | None = None
    kept_share: float | None = None
    layer_cycles: list[float] = field(default_factory=list)
    layer_sensitive: list[float | None] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    """The compiler policy settings of the point's build (empty for the default build)."""
    derived: dict[str, float] = field(default_factory=dict)
    """Filled once the model's references are known: speed-ups, energy reductions, losses."""


def _point(model_name: str, family: str, setting: str, report: Report, accuracy: float, images: int,
           rows: int, cols: int) -> Point:
    layers = report.layers
    busy = sum(lr.cycles for lr in layers)
    dynamic = [lr for lr in layers if lr.mode in ("drq", "sdp", "daq")]
    return Point(
        model_name, family, setting, accuracy, busy / images, report.energy_uj / images,
        sum(lr.mac_steps for lr in layers) / (rows * cols * busy) if busy else 0.0,
        mean_present([lr.sensitive_share for lr in dynamic]), mean_present([lr.kept_share for lr in dynamic]),
        [lr.cycles / images for lr in layers], [lr.sensitive_share for lr in layers], [lr.name for lr in layers])


def _accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    return float((output.argmax(1) == labels).mean())


@dataclass
class Sweep:
    """The settings swept, per family."""

    drq_budgets: tuple[float, ...] = DRQ_BUDGETS
    drq_regions: tuple[int, ...] = DRQ_REGIONS
    sdp_budgets: tuple[float, ...] = SDP_BUDGETS
    sdp_groups: tuple[int, ...] = SDP_GROUPS
    daq_importance: tuple[str, ...] = DAQ_IMPORTANCE
    daq_fractions: tuple[tuple[float, float], ...] = DAQ_FRACTIONS

    def compiles(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(family, setting, compiler policy) of every build the sweep needs besides the default one."""
        builds = [("drq", f"budget {b:g}, region {r}x{r}", {"default": {"error_budget": b, "region": [r, r]}})
                  for r in self.drq_regions for b in self.drq_budgets]
        builds += [("sdp", f"budget {b:g}, G={g}", {"default": {"error_budget": b, "g": g}})
                   for g in self.sdp_groups for b in self.sdp_budgets]
        builds += [(family, "default budget, no zero-skip", {"default": {"zero_skip": False}})
                   for family in ("drq", "sdp")]
        return builds

    def size(self) -> int:
        return len(self.compiles()) + len(self.daq_importance) * len(self.daq_fractions) + 2


def evaluate_model(name: str, x: np.ndarray, y: np.ndarray, calib: np.ndarray, sweep: Sweep, workdir: Path,
                   advance: Callable[[str], None]) -> tuple[list[Point], dict[str, Any]]:
    """Every point of the sweep for one bundled model, and the model's references (fp32 and int8 accuracy,
    int8 and bit-parallel cycles and energy)."""
    from dynq.zoo import bundled_model

    onnx_path = bundled_model(name)
    fp32 = _accuracy(_ort_session(onnx_path).run(None, {"input": x})[0], y)
    points: list[Point] = []

    def measure(model: Model, family: str, setting: str, params: dict[str, Any] | None = None, **run: Any) -> Point:
        advance(f"{name}: {family} {setting}")
        result = model.run(x, **run)
        rows, cols = model.emulator.rows, model.emulator.cols
        point = _point(name, family, setting, result.report, _accuracy(result.output, y), len(x), rows, cols)
        point.params = params or {}
        points.append(point)
        return point

    default = dynq.load(dynq.compile(onnx_path, BOARD, workdir / f"{name}-default", calib=calib).out_dir)
    rows, cols = default.emulator.rows, default.emulator.cols
    int8 = default.run(x, mode="int8", laconic=True)
    base = _point(name, "int8", "nibble-serial, no zero-skip", int8.report, _accuracy(int8.output, y), len(x),
                  rows, cols)
    points.append(base)
    advance(f"{name}: int8")
    parallel = _bitparallel_point(base, default, int8.report, len(x))
    points += [_laconic_point(base, int8.report, len(x)), parallel]
    measure(default, "int8", "nibble-serial, zero-skip",
            registers=[replace(r, zero_skip=True) for r in default.build.preset("int8")])
    for family, setting, policy in sweep.compiles():
        build = dynq.compile(onnx_path, BOARD, workdir / f"{name}-{len(points)}", calib=calib, policy=policy)
        measure(dynq.load(build.out_dir), family, setting, policy["default"], mode=family)
    for importance in sweep.daq_importance:
        for fractions in sweep.daq_fractions:
            measure(default, "daq", f"{importance}, 8-bit {fractions[0]:.0%} / 4-bit {fractions[1]:.0%}",
                    mode="daq", mask=ImportanceMask(importance, fractions))
    references = {"fp32_accuracy": fp32, "int8": base, "bit-parallel": parallel, "default_build": default}
    for point in points:
        _derive(point, references)
    return points, references


def _laconic_point(base: Point, report: Report, images: int) -> Point:
    """The int8 run's layers on the Laconic term-serial array (the emulator models its cycles only)."""
    cycles = [(lr.laconic_cycles or 0) / images for lr in report.layers]
    return replace(base, family="laconic", setting="term-serial PEs, same PE count", cycles=sum(cycles),
                   energy_uj=None, utilization=None, layer_cycles=cycles, derived={})


def _bitparallel_point(base: Point, model: Model, report: Report, images: int) -> Point:
    """The int8 run's layers on the 8-bit bit-parallel array: its CONV layers re-timed, the others as run."""
    costs = bitparallel.layer_costs(list(model.build.instructions), model.emulator.rows, model.emulator.cols,
                                    images)
    cycles, energy = [], 0.0
    for lr in report.layers:
        layer_cycles, layer_energy = costs.get(lr.index, (lr.cycles, lr.energy_uj))
        cycles.append(layer_cycles / images)
        energy += layer_energy
    return replace(base, family="bit-parallel", setting="8x8 PEs (Eyeriss-like), same PE count",
                   cycles=sum(cycles), energy_uj=energy / images, utilization=None, layer_cycles=cycles,
                   derived={})


def _derive(point: Point, refs: dict[str, Any]) -> None:
    int8, parallel = refs["int8"], refs["bit-parallel"]
    point.derived = {
        "loss_vs_int8": int8.accuracy - point.accuracy,
        "loss_vs_fp32": refs["fp32_accuracy"] - point.accuracy,
        "speedup_vs_int8": int8.cycles / point.cycles,
        "speedup_vs_bitparallel": parallel.cycles / point.cycles,
    }
    if point.energy_uj is not None:
        point.derived["energy_saving_vs_int8"] = 1 - point.energy_uj / int8.energy_uj
        point.derived["energy_saving_vs_bitparallel"] = 1 - point.energy_uj / parallel.energy_uj


def best(points: list[Point], family: str, floor: float) -> Point | None:
    """The fastest point of `family` whose accuracy is at least `floor` (ties: the lower energy)."""
    eligible = [p for p in points if p.family == family and p.accuracy >= floor - 1e-12]
    return min(eligible, key=lambda p: (p.cycles, p.energy_uj or 0.0), default=None)


def matched(points: list[Point], reference: Point, family: str) -> Point | None:
    """The fastest point of `family` at least as accurate as `reference`."""
    return best(points, family, reference.accuracy)


def choose(points: list[Point], refs: dict[str, Any]) -> dict[str, Point]:
    """The operating points the report compares: int8, the baselines, and each dynamic mode's fastest point
    within LOSS_LIMIT of int8's accuracy."""
    floor = refs["int8"].accuracy - LOSS_LIMIT
    chosen = {"int8": refs["int8"], "bit-parallel": refs["bit-parallel"],
              "Laconic": next(p for p in points if p.family == "laconic")}
    for family in ("drq", "sdp", "daq"):
        point = best(points, family, floor)
        if point is not None:
            chosen[family.upper()] = point
    return chosen


def _ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def emulator_speed(name: str, x: np.ndarray, calib: np.ndarray, default: Model, workdir: Path,
                   repeats: int = 3) -> dict[str, float]:
    """Milliseconds per image on the evaluation batch: onnxruntime fp32 and int8 (QDQ) against the emulator
    in int8, DRQ and SDP (default policies), timed round robin in this run."""
    from dynq.bench import quantize_qdq
    from dynq.zoo import bundled_model

    onnx_path = bundled_model(name)
    qdq = quantize_qdq(onnx_path, calib, workdir / f"{name}-qdq.onnx")
    sessions = {"onnxruntime fp32": _ort_session(onnx_path), "onnxruntime int8 (QDQ)": _ort_session(qdq)}
    runners: dict[str, Callable[[], object]] = {
        label: (lambda s=s: s.run(None, {"input": x})) for label, s in sessions.items()}
    for mode in ("int8", "drq", "sdp"):
        runners[f"dynq emulator {mode}"] = lambda mode=mode: default.run(x, mode=mode)
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(repeats):
        for label, fn in runners.items():
            start = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - start)
    return {label: float(np.median(s)) * 1e3 / len(x) for label, s in samples.items()}


@contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench --suite seeds", total=total)

        def advance(what: str) -> None:
            progress.update(task, advance=1, description=what)

        yield advance


def run(seed: int = 0, images: int | None = None, out: Path = Path("docs"), quick: bool = False,
        faces: bool = True) -> dict[str, Any]:
    """Runs the suite and writes `out/results.md` and `out/results/*.png`; returns the numbers as data.
    `seed` picks the calibration digits; `images` limits the evaluation digits (default: all 1,000 of the
    test split); `quick` runs a smaller sweep; `faces=False` leaves out MTCNN."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small runs: a second thread mostly waits (10x slower with the other core busy)
    try:
        return _run(seed, images, out, quick, faces, started)
    finally:
        torch.set_num_threads(threads)


def _run(seed: int, images: int | None, out: Path, quick: bool, faces: bool, started: float) -> dict[str, Any]:
    from dynq import plots, results_doc
    from dynq.zoo.data import load_mnist

    sweep = Sweep(**QUICK) if quick else Sweep()
    x_train, _ = load_mnist("train")
    x, y = load_mnist("test")
    if images is not None:
        x, y = x[:images], y[:images]
    calib = x_train[np.random.default_rng(seed).choice(len(x_train), CALIB_IMAGES, replace=False)]
    all_points: dict[str, list[Point]] = {}
    refs: dict[str, dict[str, Any]] = {}
    speed: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, _progress(len(MODELS) * (sweep.size() + 2)) as advance:
        for name in MODELS:
            all_points[name], refs[name] = evaluate_model(name, x, y, calib, sweep, Path(tmp), advance)
            advance(f"{name}: emulator speed")
            speed[name] = emulator_speed(name, x, calib, refs[name].pop("default_build"), Path(tmp))
    face_rows = _faces(seed, quick) if faces else None
    data = {"seed": seed, "board": BOARD, "images": len(x), "calib_images": CALIB_IMAGES, "quick": quick,
            "loss_limit": LOSS_LIMIT, "energy_pj": dict(ENERGY_PJ),
            "models": {name: {"fp32_accuracy": refs[name]["fp32_accuracy"],
                              "points": [asdict(p) for p in all_points[name]]} for name in MODELS},
            "emulator_ms_per_image": speed, "mtcnn": face_rows}
    chosen = {name: choose(all_points[name], refs[name]) for name in MODELS}
    figures: dict[str, dict[str, Path]] = {}
    for name in MODELS:
        floor = refs[name]["int8"].accuracy - LOSS_LIMIT
        png = out / "results" / name
        figures[name] = {"pareto": plots.pareto(name, all_points[name], refs[name]["int8"], floor,
                                                png.with_name(f"{name}_pareto.png")),
                         "cycles": plots.layer_cycles(name, chosen[name], png.with_name(f"{name}_layer_cycles.png"))}
        if "DRQ" in chosen[name]:
            region = chosen[name]["DRQ"].params.get("region")
            same_region = [p for p in all_points[name] if p.family == "drq" and p.params.get("region") == region]
            figures[name]["sensitive"] = plots.sensitive_share(name, same_region,
                                                               png.with_name(f"{name}_sensitive.png"))
    results_doc.write(out / "results.md", data, all_points, refs, chosen, figures, out)
    data["seconds"] = time.perf_counter() - started
    console.print(f"wrote {out / 'results.md'} and {sum(map(len, figures.values()))} plots in {out / 'results'} "
                  f"({data['seconds']:.0f} s)")
    return data


def _faces(seed: int, quick: bool) -> dict[str, Any]:
    from dynq.bench_faces import mtcnn_rows

    return mtcnn_rows(board=BOARD, seed=seed, quick=quick)
