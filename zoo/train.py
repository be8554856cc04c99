"""Train the zoo models on MNIST and export them as the bundled fp32 ONNX files.

Training is short and CPU-only (at most about a minute per model on two idle cores) and seeded, so
anyone can regenerate `zoo/models/` and get the same networks on the same machine; the onnxruntime
accuracy is recorded next to each model so tests can tell a stale or hand-edited bundle from a fresh one.

Usage: `python -m dynq.zoo.train [--models NAME ...] [--epochs N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

from dynq.contract.artifacts import atomic_path

from . import MODELS_DIR, SAMPLES_PATH
from .data import load_mnist, write_test_samples
from .models import MODELS

EPOCHS: dict[str, int] = {"lenet5": 20, "resnet_small": 10, "mobilenetv2_small": 8}
"""Default epochs per model: enough to clear 97% test accuracy by about a point, few enough to stay well
inside a two-minute, two-core training budget."""

BATCH_SIZE = 64
LEARNING_RATE = 5e-3
THREADS = 2


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and ask for deterministic kernels on `THREADS` threads; restore the global state after.

    The thread count is pinned because it changes the reduction order, hence the trained weights.
    `warn_only` makes an op without a deterministic kernel a warning rather than an abort: every op the
    zoo uses has one on CPU, so in practice training is bit-reproducible on a given machine.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


def train(name: str, epochs: int, seed: int = 0) -> nn.Module:
    """Train zoo model `name` with Adam on the 4,000 training images; return it in eval mode.

    A one-cycle learning-rate schedule lets the few epochs we can afford on a CPU reach the accuracy
    target without tuning a per-model learning rate.
    """
    images, labels = (torch.from_numpy(a) for a in load_mnist("train"))
    steps_per_epoch = math.ceil(len(images) / BATCH_SIZE)
    with _deterministic(seed):
        model = MODELS[name]()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=LEARNING_RATE, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(images), generator=order).split(BATCH_SIZE):
                optimizer.zero_grad()
                F.cross_entropy(model(images[batch]), labels[batch]).backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def export_onnx(model: nn.Module, path: Path, opset: int = 17) -> Path:
    """Export `model` (eval mode) to a single self-contained ONNX file with a dynamic batch axis.

    The TorchScript exporter (`dynamo=False`) is used because it folds BatchNorm into the Conv weights
    and emits a flat graph of plain ONNX operators, which is what the dynq compiler consumes; its
    deprecation warning is silenced since choosing it is deliberate.
    """
    model.eval()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier under onnxruntime (CPU), the reference for the bundle."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    return float((logits.argmax(axis=1) == labels).mean())


def _write_bundle(name: str, epochs: int, seed: int, out_dir: Path) -> None:
    """Train, export and evaluate one model; write `<name>.onnx` and `<name>.json` into `out_dir`."""
    start = time.perf_counter()
    model = train(name, epochs, seed)
    seconds = time.perf_counter() - start
    onnx_path = export_onnx(model, out_dir / f"{name}.onnx")
    accuracy = onnx_accuracy(onnx_path, *load_mnist("test"))
    record = {
        "name": name,
        "epochs": epochs,
        "seed": seed,
        "fp32_test_accuracy": accuracy,
        "torch_version": torch.__version__,
    }
    with atomic_path(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: {epochs} epochs in {seconds:.1f} s, onnxruntime test accuracy {accuracy:.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: retrain the selected models and rewrite the bundled samples."""
    parser = argparse.ArgumentParser(prog="python -m dynq.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--epochs", type=int, help="epochs for every model (default: per-model EPOCHS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    for name in args.models:
        _write_bundle(name, args.epochs or EPOCHS[name], args.seed, MODELS_DIR)
    write_test_samples(SAMPLES_PATH)


if __name__ == "__main__":
    main()
