"""The bundled models (trained in-repo on real MNIST) on the 1,000 held-out test digits: int8 accuracy
against onnxruntime fp32, QDQ models against onnxruntime's own int8 execution, and precision modes. All on
the emulator: the builds are `emulator_only`, since MobileNetV2's 240 KB arena exceeds the pynq-z2 core's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import dynq
from dynq.zoo import bundled_model
from dynq.zoo.data import load_mnist
from dynq.zoo.qdq import make_qdq

MODELS = ["lenet5", "resnet_small", "mobilenetv2_small"]


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x_train, _ = load_mnist("train")
    x_test, y_test = load_mnist("test")
    return x_train[:256], x_test, y_test


def _ort(model: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def builds(mnist: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    calib = mnist[0]
    out = {}
    for name in MODELS:
        out[name] = tmp_path_factory.mktemp(name) / "build"
        dynq.compile(bundled_model(name), "pynq-z2", out[name], calib=calib, emulator_only=True)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_int8_accuracy_within_one_point_of_fp32(name: str, mnist: tuple, builds: dict[str, Path]) -> None:
    _, x, y = mnist
    fp32 = (_ort(bundled_model(name), x).argmax(1) == y).mean()
    int8 = (dynq.load(builds[name]).run(x, mode="int8").output.argmax(1) == y).mean()
    assert fp32 >= 0.97
    assert int8 >= fp32 - 0.01, f"{name}: int8 {int8:.3f} vs fp32 {fp32:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_qdq_matches_onnxruntime_within_one_lsb(name: str, mnist: tuple, tmp_path: Path) -> None:
    calib, x, _ = mnist
    qdq = make_qdq(bundled_model(name), tmp_path / "qdq.onnx", calib)
    dynq.compile(qdq, "pynq-z2", tmp_path / "b", emulator_only=True)
    model = dynq.load(tmp_path / "b")
    result = model.run(x)
    ref = _ort(qdq, x)
    out = model.build.manifest["outputs"][0]
    lsb = np.abs(np.rint(ref / out["scale"]) - result.raw[out["name"]])
    assert (lsb <= 1).mean() >= 0.99, f"{name}: {(lsb <= 1).mean():.4f} of elements within 1 LSB"
    assert (ref.argmax(1) == result.output.argmax(1)).mean() >= 0.995


@pytest.mark.parametrize("name", MODELS)
def test_zero_skipping_is_exact(name: str, mnist: tuple, builds: dict[str, Path]) -> None:
    x = mnist[1][:64]
    model = dynq.load(builds[name])
    for mode in ("int8", "drq", "sdp"):
        preset = model.build.preset(mode)
        plain = model.run(x, registers=[replace(r, zero_skip=False) for r in preset])
        skip = model.run(x, registers=[replace(r, zero_skip=True) for r in preset])
        np.testing.assert_array_equal(plain.output, skip.output)
        assert skip.report.total_cycles < plain.report.total_cycles


MIN_SPEEDUP = {"lenet5": 1.5, "resnet_small": 1.5, "mobilenetv2_small": 1.1}
"""MobileNetV2's depthwise layers are bound by input reads, which no precision mode reduces (docs/precision.md)."""


@pytest.mark.parametrize("mode", ["drq", "sdp"])
@pytest.mark.parametrize("name", MODELS)
def test_dynamic_modes_speed_up_at_one_point(name: str, mode: str, mnist: tuple, builds: dict[str, Path]) -> None:
    """Default policies: fewer cycles than int8 (1.5x for LeNet-5 and the small ResNet) at no more than one
    point of accuracy lost."""
    _, x, y = mnist
    model = dynq.load(builds[name])
    base = model.run(x, mode="int8")
    run = model.run(x, mode=mode)
    acc_int8 = (base.output.argmax(1) == y).mean()
    acc = (run.output.argmax(1) == y).mean()
    speedup = base.report.total_cycles / run.report.total_cycles
    assert acc >= acc_int8 - 0.01 and speedup >= MIN_SPEEDUP[name], (
        f"{name} {mode}: accuracy {acc:.3f} speed-up {speedup:.2f}")


def test_runtime_precision_change_needs_no_recompile(mnist: tuple, builds: dict[str, Path]) -> None:
    x = mnist[1][:50]
    model = dynq.load(builds["resnet_small"])
    model.set_mode("drq")
    layer = next(e for e in model.layers if e["dynamic"])
    first = model.run(x, trace=True)
    model.set_layer(layer["name"], threshold=0)  # every region sensitive: that layer becomes exact 8-bit
    second = model.run(x, trace=True)
    exact = model.run(x, mode="int8", trace=True)
    assert second.report.layers[layer["index"]].cycles > first.report.layers[layer["index"]].cycles
    assert second.report.layers[layer["index"]].sensitive_share == 1.0
    assert not np.array_equal(first.tensors[layer["output"]], second.tensors[layer["output"]])
    np.testing.assert_array_equal(second.tensors[layer["output"]], exact.tensors[layer["output"]])
