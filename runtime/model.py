"""`dynq.load(build_dir)` and `Model.run(x)`: the Python API the CLI mirrors.

A run quantizes the input on the host, walks the build's schedule (device segments on a backend,
host partitions on onnxruntime), and returns outputs with a per-layer report built from the same
counters the overlay's registers hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch

from dynq.contract import MASK_GRID, Mode, PrecisionRegs
from dynq.contract.artifacts import ArtifactError
from dynq.contract.numerics import quantize
from dynq.errors import DynqError
from dynq.runtime import transfers
from dynq.runtime.artifacts import Build, open_build
from dynq.runtime.emulator import Arena, Emulator
from dynq.runtime.energy import layer_energy_uj
from dynq.runtime.importance import Importance, ImportanceMask

if TYPE_CHECKING:
    from dynq.runtime.core_driver import CoreDriver

CHUNK = 64
"""Images emulated at once; bounds memory (SDP and the lock-step model expand tensors several-fold)."""

MaskSpec = np.ndarray | str | Importance | ImportanceMask | None
"""A DAQ region mask: an array of levels ([MASK_GRID, MASK_GRID] for every image, or [N, MASK_GRID,
MASK_GRID], one per image), the name of an importance function ("entropy", "gradient", "keypoints"), an
importance callable (image [C, H, W] -> [H, W]), or an `ImportanceMask` rule; the last three are computed
from each image of the batch."""


class InputError(DynqError, ValueError):
    """The input array does not match what the model was compiled for."""


class VerifyError(DynqError, RuntimeError):
    """A backend's result differs from the emulator's; the message names the first layer, tensor and element."""


@dataclass
class LayerReport:
    index: int
    name: str
    kind: str
    mode: str
    cycles: int
    compute_cycles: int = 0
    stall_cycles: int = 0
    mac_steps: int = 0
    utilization: float = 0.0
    sensitive_share: float | None = None
    kept_share: float | None = None
    energy_uj: float = 0.0
    laconic_cycles: int | None = None
    """With `Model.run(..., laconic=True)`: the layer on a Laconic term-serial array (comparison only)."""


@dataclass
class Report:
    """Per-layer counters and derived figures of one run (summed over the batch)."""

    board: str
    backend: str
    mode: str
    batch: int
    total_cycles: int
    layers: list[LayerReport]
    energy_uj: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The fields and the `extra` entries, side by side."""
        data = asdict(self)
        return {**data, **data.pop("extra")}


@dataclass
class Result:
    outputs: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    report: Report
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    """With `trace=True`: every device tensor (integers, [N, C, H, W]) as the arena holds it at the end."""
    masks: np.ndarray | None = None
    """The DAQ region masks the run used ([MASK_GRID, MASK_GRID] or one per image), None without DAQ layers."""

    @property
    def output(self) -> np.ndarray:
        """The first (usually only) output, dequantized."""
        return next(iter(self.outputs.values()))


class Model:
    """A loaded build. Precision settings are register values, changeable per call or persistently."""

    def __init__(self, build: Build, mode: str | None = None):
        self.build = build
        self.emulator = Emulator(build)
        self.registers = build.preset(mode or build.manifest["mode"])
        self.mode = mode or build.manifest["mode"]
        self.mask: MaskSpec = None
        """The persistent region mask (`set_mask`): used by every run that passes no `mask`."""
        self._host: dict[str, ort.InferenceSession] = {}
        self._devices: dict[str, CoreDriver] = {}
        self._needed_after = transfers.needed_after(build.manifest, build.instructions)
        """Per schedule step, the arena bytes later steps and the outputs read: all a device returns."""

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.build.manifest["layers"]

    def set_mode(self, mode: str) -> None:
        """Loads the compiler's register preset for `mode` (int8, drq, sdp, daq)."""
        self.registers, self.mode = self.build.preset(mode), mode

    def set_layer(self, layer: int | str, **changes: Any) -> None:
        """Rewrites one layer's precision registers, e.g. set_layer("conv2", threshold=900, k=6)."""
        index = self._layer_index(layer)
        regs = self.registers[index]
        if "mode" in changes and not isinstance(changes["mode"], Mode):
            changes["mode"] = Mode[str(changes["mode"]).upper()]
        new = PrecisionRegs(**{**asdict(regs), **changes})
        new.validate()
        self.registers = [*self.registers[:index], new, *self.registers[index + 1:]]

    def set_mask(self, mask: MaskSpec) -> None:
        """Keeps `mask` (see `MaskSpec`) for every later run that passes none, until set again; None clears it.
        A mask is register contents, not part of the build: changing it never recompiles. An importance rule
        is computed afresh from each image of every run."""
        if mask is not None and _mask_rule(mask) is None:
            mask = _check_masks(np.asarray(mask))
        self.mask = mask

    def _layer_index(self, layer: int | str) -> int:
        if isinstance(layer, int):
            if not 0 <= layer < len(self.layers):
                raise KeyError(f"layer index {layer} out of range 0..{len(self.layers) - 1}")
            return layer
        for entry in self.layers:
            if entry["name"] == layer:
                return int(entry["index"])
        raise KeyError(f"no layer named {layer!r}; layers: {', '.join(e['name'] for e in self.layers)}")

    def check_input(self, x: np.ndarray) -> np.ndarray:
        spec = self.build.manifest["input"]
        expected = tuple(spec["shape"])
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            kind = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise InputError(f"input must be a float32 array [N, {', '.join(map(str, expected))}], got {kind}; "
                             "convert it with x.astype(np.float32)")
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(f"input has shape {list(x.shape)}, the model expects "
                             f"[N, {', '.join(map(str, expected))}]")
        if x.shape[0] == 0:
            raise InputError("the input batch is empty")
        if not np.all(np.isfinite(x)):
            raise InputError("input contains NaN or infinite values")
        return x

    def run(self, x: np.ndarray, mode: str | None = None, mask: MaskSpec = None,
            registers: list[PrecisionRegs] | None = None, trace: bool = False, laconic: bool = False,
            backend: str = "emulator", verify: bool = False, batch_size: int = CHUNK,
            progress: Callable[[int], None] | None = None) -> Result:
        """Runs a batch on `backend` ("emulator", or a device backend of `dynq.runtime.backends`: "rtl",
        "sim-pynq", "sim-pynq-rtl", "pynq", "remote:HOST[:PORT]"; started on first use or by `open_backend`).
        `mode` picks a preset for this call only; `mask` is the region mask the DAQ layers read (`MaskSpec`;
        default: the one of `set_mask`); `trace` keeps every device tensor; `laconic` adds the Laconic
        term-serial comparison column to the report (emulator only). `verify` (for a backend other than the
        emulator) also runs the emulator on every batch and raises VerifyError at the first layer whose output
        tensor or counters differ; the report then says "verified": true. The images run in batches of
        `batch_size` (memory stays bounded); `progress` is called with the number of images after each."""
        x = self.check_input(x)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        regs = registers or (self.build.preset(mode) if mode else self.registers)
        start = time.perf_counter()
        masks, rule = self._region_masks(self.mask if mask is None else mask, x, regs)
        mask_t = None if masks is None else torch.from_numpy(masks.astype(np.int64))
        counters: dict[int, dict[str, int]] = {}
        self.emulator.model_laconic = laconic
        device = self._device(backend)
        checking = verify and backend != "emulator"
        parts = []
        for first in range(0, len(x), batch_size):
            chunk = x[first:first + batch_size]
            chunk_mask = mask_t if mask_t is None or mask_t.dim() == 2 else mask_t[first:first + batch_size]
            part, part_counters = self._run_chunk(chunk, regs, chunk_mask, trace or checking, device)
            if checking:
                want, want_counters = self._run_chunk(chunk, regs, chunk_mask, True, self.emulator)
                self._compare(part[2], part_counters, want[2], want_counters, backend, first)
            for layer, values in part_counters.items():
                total = counters.setdefault(layer, {})
                for key, value in values.items():
                    total[key] = total.get(key, 0) + value
            parts.append(part if trace else (part[0], part[1], {}))
            if progress is not None:
                progress(len(chunk))
        outputs, raw, traced = ({k: np.concatenate([p[j][k] for p in parts]) for k in parts[0][j]} for j in range(3))
        report = self._report(counters, regs, x.shape[0], time.perf_counter() - start, backend)
        if masks is not None:
            report.extra["mask"] = _describe_masks(masks, rule)
        if checking:
            report.extra["verified"] = True
        return Result(outputs, raw, report, traced, masks)

    def _region_masks(self, spec: MaskSpec, x: np.ndarray,
                      regs: list[PrecisionRegs]) -> tuple[np.ndarray | None, ImportanceMask | None]:
        """(the masks the DAQ layers read, the rule that computed them): an array checked as given, a rule
        applied to every image; (None, None) when no layer runs in DAQ (nothing reads the mask)."""
        rule = _mask_rule(spec)
        given = None if spec is None or rule is not None else _check_masks(np.asarray(spec), len(x))
        if not any(r.mode == Mode.DAQ for r in regs):
            return None, None
        return (rule(x) if rule is not None else given), rule

    def _compare(self, got: dict[str, np.ndarray], got_counters: dict[int, dict[str, int]],
                 want: dict[str, np.ndarray], want_counters: dict[int, dict[str, int]], backend: str,
                 first: int) -> None:
        """Layer by layer over one batch whose first image is `first` of the run (the arena never reuses a
        tensor's bytes, so final contents are each layer's output)."""
        for layer in self.layers:
            name = layer["output"]
            where = f"{backend} differs from the emulator at layer {layer['index']} ({layer['name']})"
            have, expected = got.get(name), want.get(name)
            if have is not None and expected is not None and not np.array_equal(have, expected):
                index = tuple(int(i) for i in np.argwhere(have != expected)[0])
                raise VerifyError(f"{where}: tensor {name!r} element {[first + index[0], *index[1:]]} is "
                                  f"{have[index]}, the emulator has {expected[index]}")
            cycles = (got_counters.get(layer["index"], {}).get("busy_cycles", 0),
                      want_counters.get(layer["index"], {}).get("busy_cycles", 0))
            if cycles[0] != cycles[1]:
                raise VerifyError(f"{where}: {cycles[0]} busy cycles, the emulator counts {cycles[1]}")

    def _device(self, backend: str) -> Emulator | CoreDriver:
        if backend == "emulator":
            return self.emulator
        return self._devices.get(backend) or self.open_backend(backend)

    def open_backend(self, backend: str, device: Any = None, timeout: float | None = None,
                     overlay: Any = None) -> CoreDriver:
        """Starts device backend `backend` for this model (closing one of that name already open), which loads
        the program and the weights onto it; later runs reuse it. Options (`dynq.runtime.backends`): for
        "sim-pynq" and "sim-pynq-rtl", `device`, the simulated board to drive (e.g.
        `SimOverlayDevice("pynq-z2", faults=...)`; default: a fresh one of the build's board); for "pynq",
        `overlay`, the loaded `pynq.Overlay`; for these and "remote:HOST[:PORT]" (a board or `dynq vboard
        serve` over PYNQ.remote), `timeout`, the seconds any one wait or network call may take."""
        from dynq.runtime.backends import open_device

        if backend in self._devices:
            self._devices.pop(backend).close()
        self._devices[backend] = open_device(self.build, backend, device, timeout, overlay)
        return self._devices[backend]

    def close(self) -> None:
        """Closes the device backends that were started (simulator processes, DMA buffers)."""
        while self._devices:
            self._devices.popitem()[1].close()

    def _run_chunk(self, x: np.ndarray, regs: list[PrecisionRegs], mask: torch.Tensor | None, trace: bool,
                   device: Emulator | CoreDriver) -> tuple[tuple[dict, dict, dict], dict[int, dict[str, int]]]:
        """((outputs, integer outputs, traced tensors), the layers' counters) of one batch on `device`."""
        counters: dict[int, dict[str, int]] = {}
        arena = self.emulator.new_arena(x.shape[0])
        floats: dict[str, np.ndarray] = {self.build.manifest["input"]["name"]: x}
        tensors = self.build.manifest["tensors"]
        inp = self.build.manifest["input"]
        if "offset" in inp:
            q = quantize(x, inp["scale"], inp["lo"], inp["hi"])
            arena.write(inp["offset"], torch.from_numpy(q), inp["signed"], -1)
        keep = [None] * len(self._needed_after) if trace else self._needed_after
        for step, needed in zip(self.build.manifest["schedule"], keep, strict=True):
            if step["kind"] == "device":
                device.run_segment(arena, step["first"], step["count"], regs, mask, counters, needed)
            else:
                self._run_host(step, arena, floats, tensors)
        outputs, raw = {}, {}
        for out in self.build.manifest["outputs"]:
            if out["device"]:
                q = arena.read(out["offset"], tuple(out["shape"]) if len(out["shape"]) == 3
                               else (int(np.prod(out["shape"])), 1, 1), out["signed"], -1)
                raw[out["name"]] = q.numpy().reshape(x.shape[0], *out["shape"]).astype(np.int32)
                outputs[out["name"]] = (raw[out["name"]] * np.float32(out["scale"])).astype(np.float32)
            else:
                outputs[out["name"]] = floats[out["name"]]
        traced = {name: arena.read(t["offset"], tuple(t["shape"]), t["signed"], -1).numpy().astype(np.int32)
                  for name, t in tensors.items()} if trace else {}
        return (outputs, raw, traced), counters

    def _run_host(self, step: dict[str, Any], arena: Arena, floats: dict[str, np.ndarray],
                  tensors: dict[str, Any]) -> None:
        session = self._host.get(step["file"])
        if session is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(self.build.host_models[step["file"]], options,
                                           providers=["CPUExecutionProvider"])
            self._host[step["file"]] = session
        feed = {}
        for name in step["inputs"]:
            if name in floats:
                feed[name] = floats[name]
            else:
                t = tensors[name]
                q = arena.read(t["offset"], tuple(t["shape"]), t["signed"], -1).numpy()
                shape = session.get_inputs()[step["inputs"].index(name)].shape
                feed[name] = (q * np.float32(t["scale"])).reshape(q.shape[0], *shape[1:]).astype(np.float32)
        for name, value in zip(step["outputs"], session.run(step["outputs"], feed), strict=True):
            floats[name] = value
            if name in tensors:
                t = tensors[name]
                q = quantize(value, t["scale"], t["lo"], t["hi"])
                arena.write(t["offset"], torch.from_numpy(q.reshape(q.shape[0], *t["shape"])), t["signed"], -1)

    def _report(self, counters: dict[int, dict[str, int]], regs: list[PrecisionRegs], batch: int,
                seconds: float, backend: str) -> Report:
        rows, cols = self.emulator.rows, self.emulator.cols
        layers = []
        for entry in self.layers:
            c = counters.get(entry["index"], {})
            mode = regs[entry["index"]].mode.name.lower() if entry["kind"] == "conv" else "int8"
            busy = c.get("busy_cycles", 0)
            layers.append(LayerReport(
                index=entry["index"], name=entry["name"], kind=entry["kind"], mode=mode, cycles=busy,
                compute_cycles=c.get("compute_cycles", 0), stall_cycles=c.get("stall_cycles", 0),
                mac_steps=c.get("mac_steps", 0),
                utilization=c.get("mac_steps", 0) / (rows * cols * busy) if busy else 0.0,
                sensitive_share=(c["sensitive_regions"] / c["total_regions"]) if c.get("total_regions") else None,
                kept_share=(c["kept_parts"] / c["total_parts"]) if c.get("total_parts") else None,
                energy_uj=layer_energy_uj(c, rows, cols),
                laconic_cycles=c.get("laconic_cycles", busy) if any("laconic_cycles" in v for v in counters.values())
                else None))
        return Report(self.build.board, backend, self.mode, batch, sum(lr.cycles for lr in layers), layers,
                      sum(lr.energy_uj for lr in layers), seconds)


def _mask_rule(spec: MaskSpec) -> ImportanceMask | None:
    """The rule a mask spec computes masks with (None for an array or no mask); an unknown name is refused."""
    if isinstance(spec, ImportanceMask):
        return spec
    return ImportanceMask(spec) if isinstance(spec, str) or callable(spec) else None


def _check_masks(masks: np.ndarray, batch: int | None = None) -> np.ndarray:
    """A region mask [MASK_GRID, MASK_GRID], or one per image [batch, MASK_GRID, MASK_GRID], of levels 0/1/2."""
    grid = (MASK_GRID, MASK_GRID)
    per_image = masks.ndim == 3 and masks.shape[1:] == grid and batch in (None, masks.shape[0])
    if masks.shape != grid and not per_image:
        one_per = f" or [{batch}, {MASK_GRID}, {MASK_GRID}] (one per image)" if batch else ""
        raise InputError(f"region mask has shape {list(masks.shape)}; it must be a {MASK_GRID}x{MASK_GRID} "
                         f"array{one_per} of 0, 1 or 2")
    if not np.isin(masks, (0, 1, 2)).all():
        raise InputError(f"region mask must be a {MASK_GRID}x{MASK_GRID} array of 0, 1 or 2 (cropped, 4-bit, "
                         f"8-bit); it holds {sorted(set(np.unique(masks).tolist()) - {0, 1, 2})[:5]}")
    return masks.astype(np.uint8)


def _describe_masks(masks: np.ndarray, rule: ImportanceMask | None) -> dict[str, Any]:
    """Report data: how the masks were made and the share of cells at each level over the run."""
    shares = np.bincount(masks.reshape(-1), minlength=3) / masks.size
    return {**(rule.describe() if rule is not None else {"importance": None}),
            "cells": {"8-bit": float(shares[2]), "4-bit": float(shares[1]), "cropped": float(shares[0])}}


def load(build_dir: str | Path, board: str | None = None, mode: str | None = None) -> Model:
    """Opens and verifies a build; `board` refuses a build compiled for another architecture."""
    build = open_build(Path(build_dir), board)
    if mode is not None and mode not in build.manifest["presets"]:
        raise ArtifactError(f"no precision preset {mode!r} in {build_dir}")
    return Model(build, mode)
