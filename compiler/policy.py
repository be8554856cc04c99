"""Precision policy: which mode, threshold, region, group size and K each layer runs with.

A policy only produces *register values*. A build stores one preset of registers per mode (int8, drq,
sdp, daq) so the runtime can switch modes, thresholds, K or masks between inferences by rewriting
registers; nothing here is baked into the program.

Precedence, lowest first: built-in defaults, the policy's "default" table, its "layers" entries (keys
are shell patterns over layer names, applied in file order), then command-line `--set` overrides.
The `int8` preset is always the all-8-bit baseline; in the other presets a layer runs the preset's
mode when it is eligible (every Conv but the first; Gemm/FC layers stay 8-bit) unless a "mode" key
says otherwise.

Calibration: unless a layer's `threshold` / `sensitive_ratio` (DRQ) or `k` (SDP) is given, the compiler
picks, on the layer's quantized calibration input, the fewest sensitive regions (DRQ) or the smallest K
(SDP) whose approximated input stays within `error_budget` relative L2 error of the exact input. Then it
runs the cycle model on that input: a layer whose dynamic mode would not save cycles (the DRQ predictor's
pass over a depthwise layer's input can cost more than it saves) runs int8 with zero-part skipping
instead, unless the policy names its mode.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch

from dynq.compiler.graph import CompileError
from dynq.contract import Mode, PrecisionRegs
from dynq.contract.numerics import expand_regions, insensitive, region_sums, sdp_keep

MODES = ("int8", "drq", "sdp", "daq")
MODE_BUDGETS = {"drq": 0.15, "sdp": 0.10}
"""Default error budgets (relative L2 error of a layer's input) per mode, measured on the bundled MNIST
models with `dynq bench --quick`: the largest that kept top-1 within a point of int8 for ResNet."""
DEFAULTS: dict[str, Any] = {
    "error_budget": None,
    "sensitive_ratio": None,
    "region": [4, 4],
    "insensitive": "hi",
    "g": 8,
    "k": None,
    "zero_skip": True,
}
KEYS = {"mode", "error_budget", "sensitive_ratio", "threshold", "region", "insensitive", "g", "k", "zero_skip"}
RATIO_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
"""Sensitive ratios tried, smallest first, when a DRQ threshold is calibrated to an error budget."""


def load_policy(path: Path | None) -> dict[str, Any]:
    """Reads a JSON or TOML policy file: {"default": {...}, "layers": {"pattern": {...}}}."""
    if path is None:
        return {}
    try:
        text = path.read_text()
        policy = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise CompileError(f"{path}: cannot read the policy file: {exc}") from exc
    unknown = set(policy) - {"default", "layers"}
    if unknown:
        raise CompileError(f"{path}: unknown policy sections {sorted(unknown)}; use 'default' and 'layers'")
    for entry in [policy.get("default", {}), *policy.get("layers", {}).values()]:
        _check_keys(entry, str(path))
    return policy


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`PATTERN:key=value,key=value` strings (the CLI's --set) -> layer overrides."""
    layers: dict[str, dict[str, Any]] = {}
    for item in items:
        pattern, sep, body = item.partition(":")
        if not sep or not body:
            raise CompileError(f"--set {item!r}: expected PATTERN:key=value[,key=value]")
        entry = {}
        for pair in body.split(","):
            key, eq, value = pair.partition("=")
            if not eq:
                raise CompileError(f"--set {item!r}: {pair!r} is not key=value")
            entry[key.strip()] = _parse_value(value.strip())
        _check_keys(entry, f"--set {item!r}")
        layers[pattern] = {**layers.get(pattern, {}), **entry}
    return layers


def _parse_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if "x" in value and all(p.isdigit() for p in value.split("x")):
        return [int(p) for p in value.split("x")]
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _check_keys(entry: dict[str, Any], where: str) -> None:
    unknown = set(entry) - KEYS
    if unknown:
        raise CompileError(f"{where}: unknown policy keys {sorted(unknown)}; known: {sorted(KEYS)}")
    if "mode" in entry and entry["mode"] not in MODES:
        raise CompileError(f"{where}: mode {entry['mode']!r} is not one of {', '.join(MODES)}")


def settings_for(name: str, dynamic: bool, preset: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The effective settings of one layer in one preset."""
    s = {**DEFAULTS, **policy.get("default", {})}
    s["mode"] = preset if (dynamic and preset != "int8") else "int8"
    for pattern, entry in policy.get("layers", {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            s.update({k: v for k, v in entry.items() if k != "mode" or preset != "int8"})
    if preset == "int8":
        s["mode"], s["zero_skip"] = "int8", False
    if s["error_budget"] is None:
        s["error_budget"] = MODE_BUDGETS.get(s["mode"], 0.0)
    return s


def mode_forced(name: str, policy: dict[str, Any]) -> bool:
    """Whether the policy names this layer's mode itself (then no cost check overrides it)."""
    entries = [policy.get("default", {})] + [e for p, e in policy.get("layers", {}).items()
                                             if fnmatch.fnmatchcase(name, p)]
    return any("mode" in e for e in entries)


def _relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    return float((x - approx).norm() / max(float(x.norm()), 1e-12))


def drq_threshold(sample: torch.Tensor, s: dict[str, Any], signed: bool) -> int:
    """The DRQ threshold: explicit, or for a target sensitive ratio, or else the highest threshold (fewest
    sensitive regions) whose 4-bit regions keep the layer input's relative L2 error within the budget."""
    if s.get("threshold") is not None:
        return int(s["threshold"])
    region = _region(s)
    sums = region_sums(sample, *region)
    flat = sums.reshape(-1).numpy()
    if s.get("sensitive_ratio") is not None:
        return _quantile_threshold(flat, float(s["sensitive_ratio"]))
    low = insensitive(sample, signed, s["insensitive"] == "hi")
    for ratio in RATIO_GRID:
        threshold = _quantile_threshold(flat, ratio)
        sensitive = expand_regions(sums >= threshold, *region, *sample.shape[2:])
        if _relative_error(sample, torch.where(sensitive, sample, low)) <= float(s["error_budget"]):
            return threshold
    return 0


def _quantile_threshold(sums: np.ndarray, ratio: float) -> int:
    if ratio <= 0:
        return int(sums.max()) + 1
    if ratio >= 1:
        return 0
    return int(np.ceil(np.quantile(sums, 1 - ratio)))


def sdp_k(sample: torch.Tensor, s: dict[str, Any], groups: int) -> int:
    """The SDP K: explicit, or else the smallest K whose kept parts keep the layer input's relative L2
    error within the budget."""
    if s.get("k") is not None:
        return int(s["k"])
    n, c, h, w = sample.shape
    grouped = sample.reshape(n * groups, c // groups, h, w)
    g = int(s["g"])
    for k in range(1, 2 * g):
        if _relative_error(grouped, sdp_keep(grouped, g, k)[0]) <= float(s["error_budget"]):
            return k
    return 2 * g


def _region(s: dict[str, Any]) -> list[int]:
    return list(s["region"]) if isinstance(s["region"], list | tuple) else [int(s["region"])] * 2


def to_registers(s: dict[str, Any], threshold: int, k: int) -> PrecisionRegs:
    region = _region(s)
    if s["insensitive"] not in ("lo", "hi"):
        raise CompileError(f"policy: insensitive must be 'lo' or 'hi', got {s['insensitive']!r}")
    regs = PrecisionRegs(mode=Mode[s["mode"].upper()], zero_skip=bool(s["zero_skip"]),
                         insens_hi=s["insensitive"] == "hi", threshold=int(threshold), rh=int(region[0]),
                         rw=int(region[1]), g=int(s["g"]), k=int(k))
    try:
        regs.validate()
    except ValueError as exc:
        raise CompileError(f"policy: {exc}") from exc
    return regs
