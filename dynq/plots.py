"""The PNG figures of `docs/results.md`: accuracy against speed-up, cycles per layer, sensitive share per
layer. Drawn off screen (Agg) from the suite's data only, so a rerun with the same seed redraws them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from dynq.contract.artifacts import write_atomic  # noqa: E402

if TYPE_CHECKING:
    from dynq.seeds import Point

FAMILY_STYLE = {"int8": ("tab:gray", "s"), "bit-parallel": ("black", "D"), "laconic": ("tab:purple", "v"),
                "drq": ("tab:blue", "o"), "sdp": ("tab:orange", "^"), "daq": ("tab:green", "P")}


ZOOM_POINTS = 5.0
"""The Pareto plot shows top-1 down to this many points below the loss limit (the region that matters)."""


def _save(fig: plt.Figure, path: Path) -> Path:
    from io import BytesIO

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def pareto(model: str, points: list[Point], int8: Point, floor: float, path: Path) -> Path:
    """Top-1 against speed-up over int8, every swept point, with each family's Pareto front drawn."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, (color, marker) in FAMILY_STYLE.items():
        mine = [p for p in points if p.family == family]
        if not mine:
            continue
        speed = [int8.cycles / p.cycles for p in mine]
        ax.scatter(speed, [100 * p.accuracy for p in mine], color=color, marker=marker, label=family, zorder=3)
        front, top = [], -1.0
        for s, a in sorted(zip(speed, (p.accuracy for p in mine), strict=True), key=lambda t: -t[0]):
            if a > top:
                front.append((s, a))
                top = a
        if len(front) > 1:
            ax.plot([s for s, _ in front], [100 * a for _, a in front], color=color, alpha=0.6, zorder=2)
    ax.axhline(100 * floor, color="tab:red", linestyle=":", label="int8 - 1 point")
    low = 100 * floor - ZOOM_POINTS
    hidden = sum(p.accuracy * 100 < low for p in points)
    ax.set_ylim(low, 100 * max(p.accuracy for p in points) + 0.5)
    if hidden:
        ax.annotate(f"{hidden} setting(s) below {low:.1f}% not shown", (0.99, 0.02), xycoords="axes fraction",
                    ha="right", fontsize=8)
    ax.set_xlabel("speed-up over int8 on the same array (cycles)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{model}: accuracy vs speed-up, every swept setting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncols=2)
    return _save(fig, path)


def layer_cycles(model: str, chosen: dict[str, Point], path: Path) -> Path:
    """Cycles of every layer per architecture / mode (the chosen operating points)."""
    names = next(iter(chosen.values())).layer_names
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(names)), 4.5))
    width = 0.8 / len(chosen)
    for i, (label, point) in enumerate(chosen.items()):
        color = FAMILY_STYLE[point.family][0]
        ax.bar([j + i * width for j in range(len(names))], point.layer_cycles, width, label=label, color=color)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("cycles per image")
    ax.set_title(f"{model}: cycles per layer by architecture and mode")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def sensitive_share(model: str, points: list[Point], path: Path) -> Path:
    """Share of sensitive (8-bit) regions in each DRQ layer, one line per swept setting."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names: list[str] = []
    for point in points:
        shares = [(n, s) for n, s in zip(point.layer_names, point.layer_sensitive, strict=True) if s is not None]
        names = names or [n for n, _ in shares]
        ax.plot(range(len(shares)), [100 * s for _, s in shares], marker="o", label=point.setting)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("sensitive regions (%)")
    ax.set_title(f"{model}: sensitive share per DRQ layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
