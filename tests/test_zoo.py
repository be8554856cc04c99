"""Tests of the model zoo: the MNIST split, the bundled fp32 ONNX models and their int8 QDQ versions.

The bundled models are checked against their own json records with an independent onnxruntime run,
so a retrained `.onnx` committed without its `.json` (or the reverse) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dynq.zoo import bundled_model, bundled_samples
from dynq.zoo.data import load_mnist, load_mnist_uint8
from dynq.zoo.models import MODELS
from dynq.zoo.qdq import make_qdq

MIN_ACCURACY = 0.97
MIN_QDQ_AGREEMENT = 0.97


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist("test")


def _predict(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": images})
    return logits.argmax(axis=1)


def test_split_is_deterministic_stratified_and_disjoint(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    train_x, train_y = load_mnist("train")
    test_x, test_y = test_split
    again_x, again_y = load_mnist("test")
    np.testing.assert_array_equal(again_x, test_x)
    np.testing.assert_array_equal(again_y, test_y)
    assert np.bincount(test_y).tolist() == [100] * 10
    assert np.bincount(train_y).tolist() == [400] * 10
    train_rows = {row.tobytes() for row in train_x}
    assert not any(row.tobytes() in train_rows for row in test_x)


def test_images_are_float_pixels_over_255(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = test_split
    assert images.shape == (1000, 1, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.rint(images * 255).astype(np.uint8), load_mnist_uint8("test")[0])


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")  # type: ignore[arg-type]


def test_bundled_samples_are_the_first_test_images() -> None:
    images, labels = bundled_samples()
    test_images, test_labels = load_mnist_uint8("test")
    assert images.shape == (64, 1, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, test_images[:64])
    np.testing.assert_array_equal(labels, test_labels[:64])


def test_missing_model_names_the_regeneration_command() -> None:
    with pytest.raises(FileNotFoundError, match="python -m dynq.zoo.train"):
        bundled_model("no_such_model")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bundled_model_is_valid_and_matches_its_record(
    name: str, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    path = bundled_model(name)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["name"] == name
    images, labels = test_split
    accuracy = float((_predict(path, images) == labels).mean())
    assert accuracy == record["fp32_test_accuracy"]
    assert accuracy >= MIN_ACCURACY


@pytest.mark.parametrize("name", sorted(MODELS))
def test_qdq_model_agrees_with_fp32(
    name: str, tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    calib = load_mnist("train")[0][:256]
    qdq = make_qdq(bundled_model(name), tmp_path / f"{name}_qdq.onnx", calib)
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(qdq)).graph.node}
    images, _ = test_split
    agreement = float((_predict(qdq, images) == _predict(bundled_model(name), images)).mean())
    assert agreement >= MIN_QDQ_AGREEMENT
