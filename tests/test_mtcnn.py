"""MTCNN with its real trained weights: the plain-torch nets, their ONNX export, the fp32 cascade on a real
photo, the compiler's ceil-mode pooling rewrite they need, and the int8 overlay run against fp32.

The astronaut's face region below was read off the photo by eye (a 16-pixel grid drawn over
`skimage.data.astronaut()`), not computed by any code under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import dynq
from dynq.bench_faces import mtcnn_rows
from dynq.compiler.graph import import_model, load
from dynq.compiler.passes import ceil_max_pool_to_pads
from dynq.zoo import faces
from dynq.zoo.mtcnn import CROP, OUTPUTS, WEIGHTS_SHA256, Nets, export_onnx, load_nets, weights_dir
from dynq.zoo.mtcnn_detect import box_iou, detect, nms, normalise, torch_stages

ASTRONAUT_FACE = np.array([180.0, 78.0, 262.0, 172.0])
"""Cheek to cheek, bangs to chin, in the 512x512 photo's pixels."""
ASTRONAUT_EYES_MOUTH = [(205, 100), (245, 100), (228, 143)]
INT8_TOLERANCE = {"face_prob_mad": 0.02, "rnet_prob_mad": 0.05, "mean_iou": 0.85, "kept": 0.95}
"""int8 against fp32 (measured on this setup: 0.002, 0.013, 0.92, 1.0)."""


@pytest.fixture(scope="module")
def nets() -> Nets:
    return load_nets()


def test_weights_load_strictly_into_the_plain_torch_nets(nets: Nets) -> None:
    for name, net in zip(Nets._fields, nets, strict=True):
        state = torch.load(weights_dir() / f"{name}.pt", weights_only=True)
        assert set(state) == set(net.state_dict()), name  # strict loading would have raised; check anyway
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items()), name
    # parameter counts of the published MTCNN nets
    assert [sum(p.numel() for p in net.parameters()) for net in nets] == [6632, 100178, 389040]


def test_a_corrupted_weight_cache_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(weights_dir(), tmp_path / "mtcnn")
    (tmp_path / "mtcnn" / "rnet.pt").write_bytes(b"not the weights")
    monkeypatch.setenv("DYNQ_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=rf"rnet\.pt .*expected {WEIGHTS_SHA256['rnet']}.*fetch-data"):
        load_nets()


def test_fp32_cascade_finds_the_astronaut_face(nets: Nets) -> None:
    trace = detect(faces.photo("astronaut")[None], torch_stages(nets))
    (boxes,) = trace.boxes
    assert len(boxes) == 1, boxes  # one person in the photo
    x1, y1, x2, y2, score = boxes[0]
    assert score > 0.95
    assert box_iou(boxes, ASTRONAUT_FACE[None])[0, 0] > 0.6, boxes
    assert all(x1 < x < x2 and y1 < y < y2 for x, y in ASTRONAUT_EYES_MOUTH)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 9, 9, 0.8], [1, 1, 10, 10, 0.9], [20, 20, 29, 29, 0.5], [0, 0, 4, 9, 0.7]], float)
    # boxes 0 and 1 share 81 of 119 pixels (IoU 0.68); box 3, half of box 0, has IoU 36/114 with box 1
    assert nms(boxes, 0.5).tolist() == [1, 3, 2]
    assert nms(boxes, 0.5, "min").tolist() == [1, 2]  # box 3 lies 36/50 inside box 1


@pytest.mark.parametrize("name, height, width", [("pnet", 47, 62), ("rnet", 24, 24), ("onet", 48, 48)])
def test_onnx_export_matches_the_torch_net(nets: Nets, tmp_path: Path, name: str, height: int, width: int) -> None:
    net = getattr(nets, name)
    crops = faces.lfw_crops("eval")[0][::10]  # real faces and non-faces
    x = normalise(faces.resample(crops, height, width))
    path = export_onnx(net, name, height, width, tmp_path / f"{name}.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(OUTPUTS[name], {"input": x})
    with torch.inference_mode():
        want = net(torch.from_numpy(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=2e-5, rtol=1e-4)


def test_ceil_mode_max_pooling_becomes_padding_and_runs_on_the_overlay(nets: Nets, tmp_path: Path) -> None:
    """PNet at an odd size and ONet have ceil-mode pools whose last window hangs over the input; rewritten
    with explicit end padding they give identical results and compile onto the overlay's instructions."""
    for name, (h, w) in (("pnet", (47, 62)), ("onet", (CROP["onet"], CROP["onet"]))):
        path = export_onnx(getattr(nets, name), name, h, w, tmp_path / f"{name}.onnx")
        g = import_model(load(path), str(path))
        ceil_max_pool_to_pads(g)
        pools = [n for n in g.nodes if n.op == "MaxPool"]
        assert pools and all(not n.attr("ceil_mode") for n in pools)
        assert any(n.attr("pads")[2:] != [0, 0] for n in pools)
        rewritten = g.to_onnx(g.nodes, g.inputs, g.outputs).SerializeToString()
        x = np.random.default_rng(0).uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
        sessions = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (str(path), rewritten)]
        a, b = (s.run(OUTPUTS[name], {"input": x}) for s in sessions)
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
        # ONet's 398 KB of weights exceed the pynq-z2 core's memories: the placement is the question here
        result = dynq.compile(path, "pynq-z2", tmp_path / f"b_{name}", calib=x, emulator_only=True)
        assert {p.where for p in result.placements if p.op == "MaxPool"} == {"device"}


def test_int8_overlay_agrees_with_fp32() -> None:
    result = mtcnn_rows(modes=("int8",), quick=True)
    (row,) = result["rows"]
    assert result["setup"]["eval_photos"][0] == "astronaut"
    assert row["detections_fp32"] >= 10  # the astronaut and the mosaic's faces
    assert row["found"] == row["detections_fp32"] and row["extra"] == 0, row
    assert row["mean_iou"] >= INT8_TOLERANCE["mean_iou"]
    assert row["face_prob_mad"] <= INT8_TOLERANCE["face_prob_mad"]
    assert row["rnet_prob_mad"] <= INT8_TOLERANCE["rnet_prob_mad"]
    stages = result["details"]["int8"]["stages"]
    for net in ("rnet", "onet"):
        assert stages[net]["kept_at_0.7"] >= INT8_TOLERANCE["kept"], (net, stages[net])
    assert row["cycles_per_image"] > 0 and row["energy_uj_per_image"] > 0 and row["speedup_vs_int8"] == 1.0
