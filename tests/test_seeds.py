"""The seeds suite: the bit-parallel baseline against hand-counted work, the choice of operating points, and a
small run of the whole suite (report, plots, determinism)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dynq
from dynq import seeds
from dynq.contract import Op
from dynq.runtime import bitparallel
from dynq.zoo import bundled_model, bundled_samples


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> dynq.runtime.model.Model:
    x, _ = bundled_samples()
    out = tmp_path_factory.mktemp("resnet") / "build"
    dynq.compile(bundled_model("resnet_small"), "pynq-z2", out, calib=x[:32].astype(np.float32))
    return dynq.load(out)


def test_bitparallel_does_one_step_per_mac_where_the_nibble_array_does_two(resnet: dynq.runtime.model.Model) -> None:
    """Every CONV: the bit-parallel array's steps are the layer's multiply-accumulates (counted from the
    instruction's shape by hand), the int8 nibble-serial run's are twice that; a spatial layer's compute
    cycles halve, a single-pixel layer (weight-bound) keeps its pace."""
    x, _ = bundled_samples()
    images = 4
    layers = {lr.index: lr for lr in resnet.run(x[:images].astype(np.float32), mode="int8").report.layers}
    rows, cols = resnet.emulator.rows, resnet.emulator.cols
    convs = [ins for ins in resnet.build.instructions if ins.op == Op.CONV]
    assert len(convs) == len({ins.layer for ins in convs}), "one CONV per layer in this model"
    for ins in convs:
        macs = images * ins.cout * (ins.cin // ins.groups) * ins.kh * ins.kw * ins.oh * ins.ow
        parallel = bitparallel.conv_counters(ins, rows, cols, images)
        nibble = layers[ins.layer]
        assert parallel["mac_steps"] == macs and nibble.mac_steps == 2 * macs
        if ins.oh * ins.ow > 1:
            assert 2 * parallel["compute_cycles"] == nibble.compute_cycles
        else:
            assert parallel["compute_cycles"] == nibble.compute_cycles
        assert parallel["busy_cycles"] <= nibble.cycles


def _point(family: str, accuracy: float, cycles: float, energy: float = 1.0) -> seeds.Point:
    return seeds.Point("m", family, f"{family} {cycles}", accuracy, cycles, energy, 0.5)


def test_best_point_is_the_fastest_within_the_loss_limit() -> None:
    points = [_point("drq", 0.990, 100), _point("drq", 0.975, 50), _point("drq", 0.981, 70),
              _point("drq", 0.981, 70, energy=0.5), _point("sdp", 0.99, 10)]
    chosen = seeds.best(points, "drq", 0.991 - 0.01)
    assert (chosen.cycles, chosen.energy_uj) == (70, 0.5)
    assert seeds.best(points, "drq", 0.995) is None
    assert seeds.matched(points, points[0], "sdp").cycles == 10
    assert seeds.matched(points, _point("drq", 0.999, 1), "sdp") is None


def test_suite_writes_a_report_of_its_own_numbers_and_repeats_them(tmp_path: Path) -> None:
    """A small run: results.md and the PNGs are written; the best points in the report are the data's; the
    same seed gives the same accuracies and cycles again."""
    data = seeds.run(seed=3, images=64, out=tmp_path, quick=True, faces=False)
    text = (tmp_path / "results.md").read_text()
    for png in re.findall(r"\]\((results/[^)]+\.png)\)", text):
        with Image.open(tmp_path / png) as image:
            assert image.format == "PNG" and image.width > 300
    assert len(re.findall(r"\]\((results/[^)]+\.png)\)", text)) >= 4
    assert "--seed 3 --quick" in text
    lenet = data["models"]["lenet5"]["points"]
    int8 = next(p for p in lenet if p["family"] == "int8")
    assert f"| int8 | {int8['setting']} | {100 * int8['accuracy']:.1f}% |" in text
    assert f"{int8['cycles']:,.0f}" in text
    again = seeds.run(seed=3, images=64, out=tmp_path / "again", quick=True, faces=False)
    for name, model in data["models"].items():
        first = [(p["family"], p["setting"], p["accuracy"], p["cycles"], p["energy_uj"]) for p in model["points"]]
        second = [(p["family"], p["setting"], p["accuracy"], p["cycles"], p["energy_uj"])
                  for p in again["models"][name]["points"]]
        assert first == second
