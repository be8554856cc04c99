"""Benchmarks that print tables: accuracy and cycles per precision mode, the emulator's speed, and the pynq
driver's overhead on the simulated board.

Every number comes from running the code here on this machine; nothing is typed in. Timing ratios are
always taken against a reference measured in the same run.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import dynq

QUICK_MODELS = ("lenet5", "resnet_small", "mobilenetv2_small")
QUICK_MODES = ("int8", "int8+skip", "drq", "sdp")
"""Modes run on the emulator; each model also gets a 'laconic (model)' row from the int8 run."""
CALIB_IMAGES = 256
console = Console(width=150)


def _fp32_accuracy(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def quick(images: int = 1000, board: str = "pynq-z2", seed: int = 0) -> dict[str, Any]:
    """Bundled MNIST models: fp32 vs emulated accuracy and cycles in every mode (default policies); `seed`
    picks the calibration digits."""
    from dataclasses import replace

    from dynq.zoo import bundled_model
    from dynq.zoo.data import load_mnist

    x_train, _ = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x_test, y_test = x_test[:images], y_test[:images]
    calib = x_train[np.random.default_rng(seed).choice(len(x_train), CALIB_IMAGES, replace=False)]
    rows: list[dict[str, Any]] = []
    with Progress(console=console, transient=True) as progress, tempfile.TemporaryDirectory() as tmp:
        task = progress.add_task("bench --quick", total=len(QUICK_MODELS) * len(QUICK_MODES))
        for name in QUICK_MODELS:
            onnx_path = bundled_model(name)
            fp32 = _fp32_accuracy(onnx_path, x_test, y_test)
            # an emulator bench: MobileNetV2's 240 KB arena need not fit the board's core
            dynq.compile(onnx_path, board, Path(tmp) / name, calib=calib, emulator_only=True)
            model = dynq.load(Path(tmp) / name)
            base_cycles = None
            for mode in QUICK_MODES:
                progress.update(task, description=f"{name} {mode}")
                preset = model.build.preset(mode.split("+")[0])
                if mode == "int8+skip":
                    preset = [replace(r, zero_skip=True) for r in preset]
                result = model.run(x_test, registers=preset, laconic=mode == "int8")
                acc = float((result.output.argmax(1) == y_test).mean())
                cycles = result.report.total_cycles / len(x_test)
                base_cycles = base_cycles or cycles
                dyn = [lr for lr in result.report.layers if lr.mode in ("drq", "sdp")]
                rows.append({
                    "model": name, "mode": mode, "fp32_accuracy": fp32, "accuracy": acc,
                    "cycles_per_image": cycles, "speedup_vs_int8": base_cycles / cycles,
                    "energy_uj_per_image": result.report.energy_uj / len(x_test),
                    "stall_share": sum(lr.stall_cycles for lr in result.report.layers) / max(
                        1, sum(lr.compute_cycles for lr in result.report.layers)),
                    "sensitive_share": mean_present([lr.sensitive_share for lr in dyn]),
                    "kept_share": mean_present([lr.kept_share for lr in dyn]),
                })
                if mode == "int8":
                    term_serial = sum(lr.laconic_cycles or 0 for lr in result.report.layers) / len(x_test)
                    rows.append({**rows[-1], "mode": "laconic (model)", "cycles_per_image": term_serial,
                                 "speedup_vs_int8": base_cycles / term_serial, "energy_uj_per_image": None,
                                 "stall_share": None})
                progress.advance(task)
    table = Table(title=f"dynq bench --quick: {images} MNIST test images, {board}, default policies")
    for col in ("model", "mode", "fp32 top-1", "top-1", "cycles/img", "speed-up", "energy uJ/img", "stall",
                "sensitive", "kept parts"):
        table.add_column(col, justify="right" if col not in ("model", "mode") else "left")
    for r in rows:
        table.add_row(r["model"], r["mode"], f"{r['fp32_accuracy']:.3f}", f"{r['accuracy']:.3f}",
                      f"{r['cycles_per_image']:.0f}", f"{r['speedup_vs_int8']:.2f}x",
                      _num(r["energy_uj_per_image"]), _pct(r["stall_share"]), _pct(r["sensitive_share"]),
                      _pct(r["kept_share"]))
    console.print(table)
    return {"suite": "quick", "board": board, "images": images, "seed": seed, "rows": rows}


def mean_present(values: list[float | None]) -> float | None:
    """The mean of the values that are there (layers without a dynamic mode report None)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def quantize_qdq(model: Path, calib: np.ndarray, out: Path) -> Path:
    """onnxruntime's own static int8 quantization of `model` (QDQ, uint8 activations, per-channel int8
    weights), calibrated on `calib`: the int8 reference the emulator's speed is compared with."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the model goes to the root logger on every call
    try:
        quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return out


def speed(board: str = "pynq-z2", repeats: int = 20) -> dict[str, Any]:
    """Emulator wall time for ResNet-18 (224x224, random weights, calibrated) in int8 against
    onnxruntime's int8 QDQ model (uint8 activations, int8 weights) and fp32, plus ResNet-50 compile time."""
    from dynq.zoo.resnet_imagenet import export

    rng = np.random.default_rng(0)
    calib = rng.random((8, 3, 224, 224), dtype=np.float32)
    x = rng.random((1, 3, 224, 224), dtype=np.float32)
    results: dict[str, Any] = {"suite": "speed", "board": board}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as progress:
        task = progress.add_task("exporting ResNet-18/50", total=6)
        r18 = export("resnet18", Path(tmp) / "resnet18.onnx")
        r50 = export("resnet50", Path(tmp) / "resnet50.onnx")
        progress.update(task, advance=1, description="compiling ResNet-50")
        # at 224x224 neither fits a board's on-chip arena: built for the emulator, whose speed is measured
        results["compile_resnet50_s"] = dynq.compile(r50, board, Path(tmp) / "b50", calib=calib[:2],
                                                     emulator_only=True).seconds
        progress.update(task, advance=1, description="compiling ResNet-18")
        results["compile_resnet18_s"] = dynq.compile(r18, board, Path(tmp) / "b18", calib=calib,
                                                     emulator_only=True).seconds
        progress.update(task, advance=1, description="quantizing ResNet-18 with onnxruntime")
        qdq = quantize_qdq(r18, calib, Path(tmp) / "resnet18_qdq.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                    for name, p in (("onnxruntime fp32", r18), ("onnxruntime int8 QDQ", qdq))}
        model = dynq.load(Path(tmp) / "b18")
        runners = {name: (lambda s=s: s.run(None, {"input": x})) for name, s in sessions.items()}
        runners["dynq emulator int8"] = lambda: model.run(x, mode="int8")
        progress.update(task, advance=1, description="timing")
        # round robin: every repeat times each runner once, so load changes on the machine hit all alike
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for fn in runners.values():
            fn()
        for _ in range(repeats):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        times = {name: float(np.median(s)) * 1e3 for name, s in samples.items()}
        progress.update(task, advance=2)
    ref = times["onnxruntime int8 QDQ"]
    table = Table(title=f"dynq bench --suite speed: ResNet-18 1x3x224x224, median of {repeats} round-robin "
                        "repeats, this machine")
    table.add_column("runner")
    table.add_column("ms", justify="right")
    table.add_column("x onnxruntime int8", justify="right")
    for name, ms in times.items():
        table.add_row(name, f"{ms:.1f}", f"{ms / ref:.2f}")
    console.print(table)
    console.print(f"compile: ResNet-18 {results['compile_resnet18_s']:.2f} s, "
                  f"ResNet-50 {results['compile_resnet50_s']:.2f} s")
    results["ms"] = times
    results["emulator_vs_ort_int8"] = times["dynq emulator int8"] / ref
    return results


SIM_PYNQ = "sim-pynq (pynq driver, simulated board)"
SIM_PYNQ_TARGET = 1.5
"""The per-image overhead the simulated board may have over the bare emulator on a batch of 100 images."""


def sim_pynq(images: int = 100, board: str = "pynq-z2", repeats: int = 3) -> dict[str, Any]:
    """Per-image wall time of the small ResNet on `images` MNIST test digits through the pynq driver on the
    simulated board (`sim-pynq`: pynq's MMIO, allocate and DMA classes, the overlay's register and DMA model,
    the emulated core; the batch goes in batch starts), against the bare emulator on the same batch, and
    against the emulator given one image per call."""
    from dynq.zoo import bundled_model
    from dynq.zoo.data import load_mnist

    x = load_mnist("test")[0][:images]
    results: dict[str, Any] = {"suite": "sim-pynq", "board": board, "images": len(x), "repeats": repeats,
                               "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        dynq.compile(bundled_model("resnet_small"), board, Path(tmp) / "b", calib=load_mnist("train")[0][:CALIB_IMAGES])
        model = dynq.load(Path(tmp) / "b")
        driver = model.open_backend("sim-pynq")  # program and weights go to the device once, outside the timing
        runners = {
            "emulator, whole batch": lambda: model.run(x),
            "emulator, one image per call": lambda: [model.run(x[i:i + 1]) for i in range(len(x))],
            SIM_PYNQ: lambda: model.run(x, backend="sim-pynq"),
        }
        if not np.array_equal(model.run(x, backend="sim-pynq").output, model.run(x).output):
            raise RuntimeError("sim-pynq and the emulator disagree on the benchmark batch; run the tests")
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):  # round robin, as in `speed`
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        model.close()
    ms = {name: float(np.median(s)) * 1e3 / len(x) for name, s in samples.items()}
    batch, single = ms["emulator, whole batch"], ms["emulator, one image per call"]
    table = Table(title=f"dynq bench --suite sim-pynq: small ResNet, {len(x)} MNIST digits, {board}, median of "
                        f"{repeats} round-robin repeats, {results['torch_threads']} torch thread(s), this machine")
    for col in ("runner", "ms / image", "x emulator batch", "x emulator per image"):
        table.add_column(col, justify="left" if col == "runner" else "right")
    for name, value in ms.items():
        table.add_row(name, f"{value:.2f}", f"{value / batch:.2f}", f"{value / single:.2f}")
    console.print(table)
    moved = driver.device.dma.moved
    console.print(f"sim-pynq moved {moved['mm2s']:,} bytes to the core and {moved['s2mm']:,} back through the "
                  f"simulated AXI DMA (program and weights once; in each of the {repeats + 1} runs, each image's "
                  "input tensor in and its logits out)")
    console.print(f"sim-pynq per image: {ms[SIM_PYNQ] / batch:.2f}x the bare emulator on the whole batch "
                  f"(target: at most {SIM_PYNQ_TARGET}x)")
    results["ms_per_image"] = ms
    results["sim_pynq_vs_emulator_batch"] = ms[SIM_PYNQ] / batch
    results["sim_pynq_vs_emulator_per_image"] = ms[SIM_PYNQ] / single
    return results
