"""The CLI contract: --help everywhere, one clear line and a non-zero exit on bad input, no partial
output, integrity and fingerprint checks on builds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import dynq
from tests.conftest import images

SHAPE = (3, 16, 16)


def dynq_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynq: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, images(16, SHAPE, seed=1))
    return path


@pytest.fixture(scope="module")
def build(ops_model: Path, calib_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clibuild") / "build"
    proc = dynq_cli("compile", ops_model, "--board", "pynq-z2", "--calib", calib_file, "--mode", "sdp", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "on the overlay" in proc.stdout
    return out


@pytest.mark.parametrize("command", [[], ["compile"], ["run"], ["demo"], ["bench"], ["docs"], ["boards"],
                                     ["fetch-data"]])
def test_help(command: list[str]) -> None:
    proc = dynq_cli(*command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_run_writes_outputs_and_report(build: Path, tmp_path: Path) -> None:
    x = images(3, SHAPE, seed=2)
    np.save(tmp_path / "x.npy", x)
    proc = dynq_cli("run", build, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--report",
                    tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (3, 5) and y.dtype == np.float32
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["total_cycles"] == sum(layer["cycles"] for layer in report["layers"]) > 0
    assert all({"name", "cycles"} <= set(layer) for layer in report["layers"])
    # cycles are summed over the batch: one image costs a third (every image has the same int8/SDP cost
    # only without zero skipping, so compare against the API on the same images instead)
    api = dynq.load(build).run(x)
    assert api.report.total_cycles == report["total_cycles"]
    np.testing.assert_array_equal(api.output, y)
    raw = dynq_cli("run", build, "--input", tmp_path / "x.npy", "--output", tmp_path / "raw.npy", "--raw")
    assert raw.returncode == 0
    scale = dynq.load(build).build.manifest["outputs"][0]["scale"]
    np.testing.assert_allclose(np.load(tmp_path / "raw.npy") * scale, y, rtol=1e-6)


def test_emulator_needs_only_the_binaries(ops_model: Path, calib_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "copy.onnx"
    shutil.copy(ops_model, model)
    assert dynq_cli("compile", model, "--calib", calib_file, "-o", tmp_path / "b").returncode == 0
    model.unlink()
    x = images(2, SHAPE, seed=3)
    np.save(tmp_path / "x.npy", x)
    proc = dynq_cli("run", tmp_path / "b", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "program.bin", "weights.bin"]


@pytest.mark.parametrize("name", ["program.bin", "weights.bin"])
def test_any_flipped_byte_is_an_integrity_error(build: Path, tmp_path: Path, name: str) -> None:
    data = (build / name).read_bytes()
    positions = sorted(set(range(0, 40)) | set(np.linspace(40, len(data) - 1, 120).astype(int).tolist()))
    copy = tmp_path / "b"
    shutil.copytree(build, copy)
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        (copy / name).write_bytes(bytes(flipped))
        with pytest.raises(dynq.contract.artifacts.ArtifactError, match=name):
            dynq.load(copy)
    (copy / name).write_bytes(data)
    dynq.load(copy)


def test_edited_manifest_is_refused(build: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(build, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["outputs"][0]["scale"] *= 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(dynq.contract.artifacts.ArtifactError, match="manifest"):
        dynq.load(copy)


def test_flipped_byte_through_cli(build: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(build, copy)
    data = bytearray((copy / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "weights.bin").write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", images(1, SHAPE))
    proc = dynq_cli("run", copy, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert_one_line_error(proc, "weights.bin", "corrupted")
    assert not (tmp_path / "y.npy").exists()


def test_fingerprint_refuses_other_board(build: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", images(1, SHAPE))
    proc = dynq_cli("run", build, "--board", "zcu104", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert_one_line_error(proc, "pynq-z2", "zcu104", "recompile")
    assert not (tmp_path / "y.npy").exists()
    ok = dynq_cli("run", build, "--board", "pynq-z1", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert ok.returncode == 0, "pynq-z1 and pynq-z2 share the architecture"


def _unsupported_model(path: Path) -> Path:
    """A Conv followed by an op from a custom domain: neither the overlay nor onnxruntime has it."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, -1.0])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Frobnicate", ["y"], ["z"],
                                                                             domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid("com.example", 1)])
    onnx.save(model, path)
    return path


def _bad_models(tmp_path: Path, ops_model: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(ops_model.read_bytes()[: ops_model.stat().st_size // 2])
    return {"text": (text, "notes.onnx"), "truncated": (truncated, "truncated.onnx"),
            "unsupported": (_unsupported_model(tmp_path / "custom.onnx"), "com.example"),
            "missing": (tmp_path / "nope.onnx", "no such file")}


@pytest.mark.parametrize("kind", ["text", "truncated", "unsupported", "missing"])
def test_bad_models_fail_cleanly(kind: str, ops_model: Path, calib_file: Path, tmp_path: Path) -> None:
    model, needle = _bad_models(tmp_path, ops_model)[kind]
    out = tmp_path / "out"
    proc = dynq_cli("compile", model, "--calib", calib_file, "-o", out)
    assert_one_line_error(proc, needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary build left behind"


def test_unsupported_standard_op_goes_to_host_with_report(tmp_path: Path) -> None:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, -1.0])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Erf", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "erf.onnx")
    np.save(tmp_path / "c.npy", images(4, (1, 4, 4)))
    proc = dynq_cli("compile", tmp_path / "erf.onnx", "--calib", tmp_path / "c.npy", "-o", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    assert "host: " in proc.stdout and "Erf" in proc.stdout


@pytest.mark.parametrize(("array", "needle"), [
    (np.zeros((2, 3, 8, 8), np.float32), "shape [2, 3, 8, 8]"),
    (np.zeros((2, 3, 16, 16), np.int64), "float32"),
    (np.zeros((3, 16, 16), np.float32), "shape [3, 16, 16]"),
])
def test_bad_inputs_fail_cleanly(build: Path, tmp_path: Path, array: np.ndarray, needle: str) -> None:
    np.save(tmp_path / "x.npy", array)
    proc = dynq_cli("run", build, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "y.npy").exists()


def test_output_into_missing_directory(build: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", images(1, SHAPE))
    proc = dynq_cli("run", build, "--input", tmp_path / "x.npy", "--output", tmp_path / "nowhere" / "y.npy")
    assert_one_line_error(proc, "does not exist")


def test_calibration_of_wrong_shape(ops_model: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", images(4, (1, 28, 28)))
    proc = dynq_cli("compile", ops_model, "--calib", tmp_path / "c.npy", "-o", tmp_path / "b")
    assert_one_line_error(proc, "calibration data has shape")
    assert not (tmp_path / "b").exists()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = dynq_cli("--debug", "compile", tmp_path / "nope.onnx", "-o", tmp_path / "b")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_policy_overrides_reach_registers(ops_model: Path, calib_file: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"default": {"k": 6}, "layers": {"/c3/*": {"mode": "drq", "threshold": 77}}}))
    proc = dynq_cli("compile", ops_model, "--calib", calib_file, "--policy", policy, "--set", "/pw/*:k=3",
                    "-o", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    model = dynq.load(tmp_path / "b")
    by_name = {layer["name"]: layer["index"] for layer in model.layers}
    sdp = model.build.preset("sdp")
    assert sdp[by_name["/pw/Conv"]].k == 3 and sdp[by_name["/c2/Conv"]].k == 6
    assert sdp[by_name["/c3/Conv"]].mode.name == "DRQ" and sdp[by_name["/c3/Conv"]].threshold == 77
    assert all(r.mode.name == "INT8" for r in model.build.preset("int8"))
    bad = dynq_cli("compile", ops_model, "--calib", calib_file, "--set", "/pw/*:colour=red", "-o", tmp_path / "c")
    assert_one_line_error(bad, "colour")


def test_daq_needs_a_mask_and_uses_it(build: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", images(2, SHAPE, seed=5))
    args = ["run", build, "--input", tmp_path / "x.npy", "--mode", "daq", "--output", tmp_path / "y.npy"]
    assert_one_line_error(dynq_cli(*args), "mask")
    np.save(tmp_path / "bad.npy", np.full((4, 4), 2))
    assert_one_line_error(dynq_cli(*args, "--mask", tmp_path / "bad.npy"), "16x16")
    np.save(tmp_path / "full.npy", np.full((16, 16), 2))
    assert dynq_cli(*args, "--mask", tmp_path / "full.npy").returncode == 0
    int8 = dynq_cli("run", build, "--input", tmp_path / "x.npy", "--mode", "int8", "--output", tmp_path / "z.npy")
    assert int8.returncode == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "z.npy"))  # all 8-bit == int8


def test_percentile_calibration(ops_model: Path, calib_file: Path, tmp_path: Path) -> None:
    proc = dynq_cli("compile", ops_model, "--calib", calib_file, "--calib-method", "percentile", "-o", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    scales = {n: t["scale"] for n, t in dynq.load(tmp_path / "b").build.manifest["tensors"].items()}
    dynq.compile(ops_model, "pynq-z2", tmp_path / "m", calib=np.load(calib_file))
    reference = {n: t["scale"] for n, t in dynq.load(tmp_path / "m").build.manifest["tensors"].items()}
    assert all(scales[n] <= reference[n] + 1e-12 for n in scales)  # a percentile never exceeds the max
    assert any(scales[n] < reference[n] for n in scales)


def test_model_larger_than_the_board_is_refused_at_compile_time(tmp_path: Path) -> None:
    """A 3x128x128 input and a 16-channel 1x1 convolution need 49,152 + 262,144 bytes of arena, more than
    pynq-z2's 131,072 (its board file): compile names the memory and writes nothing. --emulator-only builds
    it; the emulator runs it and the simulated board refuses it before anything is written to it."""
    from torch import nn

    from tests.conftest import export

    onnx_file = export(nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU()), tmp_path / "big.onnx", (3, 128, 128))
    np.save(tmp_path / "c.npy", images(2, (3, 128, 128)))
    out = tmp_path / "b"
    proc = dynq_cli("compile", onnx_file, "--calib", tmp_path / "c.npy", "-o", out)
    assert_one_line_error(proc, "does not fit the pynq-z2 core", "activation arena (AMEM)", "the core has 131,072",
                          "--emulator-only")
    assert not out.exists()
    assert dynq_cli("compile", onnx_file, "--calib", tmp_path / "c.npy", "--emulator-only", "-o", out).returncode == 0
    assert dynq.load(out).build.manifest["arena_bytes"] >= 49_152 + 262_144
    proc = dynq_cli("run", out, "--input", tmp_path / "c.npy", "--output", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    proc = dynq_cli("run", out, "--input", tmp_path / "c.npy", "--backend", "sim-pynq", "--output", tmp_path / "z.npy")
    assert_one_line_error(proc, "bytes of AMEM", "the pynq-z2 core has 131072")
    assert not (tmp_path / "z.npy").exists()


def test_drq_over_a_wide_input(tmp_path: Path) -> None:
    """The region predictor keeps sums for inputs at most REGION_ROW_TILES * rows wide: the compiler runs a
    wider layer in int8 with zero-part skipping, or, when the policy insists on DRQ, says why it cannot."""
    from torch import nn

    from dynq.contract.array import REGION_ROW_TILES
    from tests.conftest import export

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    wide = REGION_ROW_TILES * 16 + 8  # pynq-z2: 16 lanes

    def compile_(width: int, *extra: str) -> subprocess.CompletedProcess:
        onnx_file = export(net, tmp_path / f"{width}.onnx", (1, 4, width))
        np.save(tmp_path / f"c{width}.npy", images(4, (1, 4, width)))
        return dynq_cli("compile", onnx_file, "--calib", tmp_path / f"c{width}.npy", *extra, "-o",
                        tmp_path / f"b{width}{len(extra)}")

    assert compile_(wide).returncode == 0
    second = dynq.load(tmp_path / f"b{wide}0").build.preset("drq")[1]
    assert (second.mode.name, second.zero_skip) == ("INT8", True)
    assert compile_(64, "--set", "/2/*:mode=drq").returncode == 0
    assert dynq.load(tmp_path / "b642").build.preset("drq")[1].mode.name == "DRQ"
    forced = compile_(wide, "--set", "/2/*:mode=drq")
    assert_one_line_error(forced, "region predictor")
    assert not (tmp_path / f"b{wide}2").exists()


def test_run_on_image_files(build: Path, tmp_path: Path) -> None:
    """A directory of images, a glob and one file: 16x16 RGB and grey PNGs (the model's size) become pixel/255
    exactly, grey copied into R, G and B, in sorted file order (other files in the directory are not images and
    are left out); the outputs equal the API's on those arrays and the report lists the files. A larger JPEG
    is resized to the model's 16x16."""
    from PIL import Image

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, pixels in (("b.png", rgb[1]), ("a.png", rgb[0]), ("c.png", grey)):
        Image.fromarray(pixels).save(folder / name)
    (folder / "notes.txt").write_text("not an image\n")
    expected = np.concatenate([rgb.transpose(0, 3, 1, 2), np.repeat(grey[None, None], 3, axis=1)]) / np.float32(255)
    want = dynq.load(build).run(expected.astype(np.float32)).output
    for source in (folder, folder / "*.png"):
        proc = dynq_cli("run", build, "-i", source, "-o", tmp_path / "y.npy", "--report", tmp_path / "r.json")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["inputs"] == [str(folder / n) for n in ("a.png", "b.png", "c.png")]
        assert report["backend"] == "emulator" and report["verified"] is False
    Image.fromarray(rgb[0]).resize((40, 30)).save(tmp_path / "big.jpg")
    proc = dynq_cli("run", build, "-i", tmp_path / "big.jpg", "-o", tmp_path / "j.npy")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "j.npy").shape == (1, 5)


def test_npz_inputs_name_their_array(build: Path, tmp_path: Path) -> None:
    x = images(2, SHAPE, seed=6)
    np.savez(tmp_path / "one.npz", batch=x)
    np.savez(tmp_path / "two.npz", batch=x, labels=np.arange(2))
    want = dynq.load(build).run(x).output
    for args in (["-i", tmp_path / "one.npz"], ["-i", tmp_path / "two.npz", "--array", "batch"]):
        proc = dynq_cli("run", build, *args, "-o", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_bad_run_inputs_fail_in_one_line_without_output(build: Path, tmp_path: Path) -> None:
    """Each names the thing and the fix, exits non-zero and leaves no output or report behind."""
    np.save(tmp_path / "x.npy", images(2, SHAPE))
    np.savez(tmp_path / "two.npz", a=images(1, SHAPE), b=images(1, SHAPE))
    (tmp_path / "bad.png").write_text("this is text, not a PNG\n")
    out = ["-o", tmp_path / "y.npy", "--report", tmp_path / "r.json"]
    cases = [
        (["-i", tmp_path / "missing.npy"], ("missing.npy", "no such file")),
        (["-i", tmp_path / "missing.png"], ("missing.png", "no such file")),
        (["-i", str(tmp_path / "none-*.png")], ("no file matches",)),
        (["-i", tmp_path / "bad.png"], ("bad.png", "not an image Pillow can read", "PNG or JPEG")),
        (["-i", tmp_path / "two.npz"], ("holds a, b", "--array NAME")),
        (["-i", tmp_path / "two.npz", "--array", "c"], ("no array 'c'", "a, b")),
        (["-i", tmp_path / "x.npy", "--mode", "daq", "--mask", "saliency"],
         ("--mask saliency", "entropy, gradient, keypoints")),
        (["-i", tmp_path / "x.npy", "--mask", "entropy"], ("DAQ", "--mode daq")),
        (["-i", tmp_path / "x.npy", "--mode", "daq", "--mask", "entropy", "--mask-fraction", "0.8,0.5"],
         ("0.8", "at most 1")),
        (["-i", tmp_path / "x.npy", "--mode", "daq", "--mask", "entropy", "--mask-fraction", "half"],
         ("--mask-fraction", "two numbers")),
        (["-i", tmp_path / "x.npy", "--backend", "pynq"], ("--overlay FILE.bit",)),
        (["-i", tmp_path / "x.npy", "--backend", "pynq", "--overlay", tmp_path / "none.bit"],
         ("none.bit", "no such file", ".hwh")),
        (["-i", tmp_path / "x.npy", "--backend", "pynq", "--overlay", tmp_path / "bad.png"],
         ("bad.png", "pynq could not load the overlay", "on the board")),  # this machine is no board
    ]
    for args, needles in cases:
        assert_one_line_error(dynq_cli("run", build, *args, *out), *needles)
        assert not (tmp_path / "y.npy").exists() and not (tmp_path / "r.json").exists()


def test_images_for_a_model_they_cannot_fill() -> None:
    """Images convert to one (grey) or three (RGB) channels; for any other input the error names the shape."""
    from dynq.errors import UsageError
    from dynq.inputs import read_images

    with pytest.raises(UsageError, match=r"takes \[N, 2, 8, 8\].*give a \.npy of shape \[N, 2, 8, 8\]"):
        read_images([Path("any.png")], (2, 8, 8))


def test_run_with_importance_masks_and_batches(build: Path, tmp_path: Path) -> None:
    """--mask gradient --mask-fraction gives the API's outputs with the same rule, and the report says how the
    masks were made and the share of cells per level; a per-image mask file works as given; --batch-size
    changes neither outputs nor counters."""
    from dynq.runtime.importance import ImportanceMask

    x = images(5, SHAPE, seed=8)
    np.save(tmp_path / "x.npy", x)
    model = dynq.load(build, mode="daq")
    base = ["run", build, "-i", tmp_path / "x.npy", "--mode", "daq", "-o", tmp_path / "y.npy", "--report",
            tmp_path / "r.json"]
    proc = dynq_cli(*base, "--mask", "gradient", "--mask-fraction", "0.25,0.25")
    assert proc.returncode == 0, proc.stderr
    api = model.run(x, mask=ImportanceMask("gradient", fractions=(0.25, 0.25)))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), api.output)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mask"] == {"importance": "gradient", "fractions": [0.25, 0.25],
                              "cells": {"8-bit": 0.25, "4-bit": 0.25, "cropped": 0.5}}
    masks = np.random.default_rng(9).integers(0, 3, (5, 16, 16))
    np.save(tmp_path / "masks.npy", masks)
    for batch in ("5", "2"):
        proc = dynq_cli(*base, "--mask", tmp_path / "masks.npy", "--batch-size", batch)
        assert proc.returncode == 0, proc.stderr
        want = model.run(x, mask=masks)
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want.output)
        assert json.loads((tmp_path / "r.json").read_text())["total_cycles"] == want.report.total_cycles


def test_progress_bar_only_on_a_terminal(build: Path, tmp_path: Path) -> None:
    """On a terminal stderr shows a bar over the batches; with --quiet, or when stderr is not a terminal,
    nothing but errors goes there."""
    import os
    import pty
    import select

    np.save(tmp_path / "x.npy", images(5, SHAPE, seed=10))
    args = [sys.executable, "-m", "dynq.cli", "run", str(build), "-i", str(tmp_path / "x.npy"), "-o",
            str(tmp_path / "y.npy"), "--batch-size", "2"]

    def on_a_terminal(*extra: str) -> str:
        master, slave = pty.openpty()
        proc = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL, stderr=slave,
                                env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
        os.close(slave)
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            try:
                chunk = os.read(master, 4096) if ready else b""
            except OSError:  # the terminal closed: the process is gone
                chunk = b""
            if not chunk:
                break
            seen += chunk
        os.close(master)
        assert proc.wait(timeout=60) == 0
        return seen.decode(errors="replace")

    shown = on_a_terminal()
    assert "batches" in shown and "3/3" in shown, shown
    assert "batches" not in on_a_terminal("--quiet")
    piped = dynq_cli(*args[3:])
    assert piped.returncode == 0 and piped.stderr == ""
