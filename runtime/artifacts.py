"""Opening a build directory: every file is checked (hash, magic, CRC, fingerprint) before any use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dynq import boards
from dynq.contract import CONTRACT_VERSION, Instr, PrecisionRegs, decode_program
from dynq.contract.artifacts import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PROGRAM_FILE,
    PROGRAM_MAGIC,
    WEIGHTS_FILE,
    WEIGHTS_MAGIC,
    ArtifactError,
    manifest_intact,
    sha256,
    unpack,
)
from dynq.contract.isa import DecodeError


@dataclass(frozen=True)
class Build:
    """A verified compiled model: manifest, decoded program, weight image and host partitions."""

    path: Path
    manifest: dict[str, Any]
    program: bytes
    weights: bytes
    host_models: dict[str, bytes]

    @cached_property
    def instructions(self) -> list[Instr]:
        try:
            return decode_program(self.program)
        except DecodeError as exc:
            raise ArtifactError(f"{self.path / PROGRAM_FILE}: {exc}") from exc

    @property
    def fingerprint(self) -> int:
        return int(self.manifest["fingerprint"])

    @property
    def board(self) -> str:
        return str(self.manifest["board"])

    def preset(self, mode: str) -> list[PrecisionRegs]:
        """The register values the compiler chose for `mode`, one bank per layer."""
        presets = self.manifest["presets"]
        if mode not in presets:
            raise ArtifactError(f"{self.path}: no precision preset {mode!r}; presets: {', '.join(presets)}")
        return [PrecisionRegs.from_words(words) for words in presets[mode]]


def open_build(path: Path, board: str | None = None) -> Build:
    """Reads and verifies a build; with `board`, refuses a build made for another architecture."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: not a dynq build (no {MANIFEST_FILE}); run 'dynq compile' first")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
        fp = int(manifest["fingerprint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc}); recompile") from exc
    if not manifest_intact(manifest):
        raise ArtifactError(f"{manifest_path}: checksum mismatch, the manifest was corrupted or edited; recompile")
    if manifest.get("format") != FORMAT_VERSION or manifest.get("contract") != CONTRACT_VERSION:
        raise ArtifactError(f"{path}: built with format {manifest.get('format')} / contract "
                            f"{manifest.get('contract')}, this dynq needs {FORMAT_VERSION} / {CONTRACT_VERSION}; "
                            "recompile the model")
    data: dict[str, bytes] = {}
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the build; recompile or copy the whole directory")
        data[name] = file.read_bytes()
        if sha256(data[name]) != digest:
            raise ArtifactError(f"{file}: contents do not match the manifest's SHA-256 (corrupted or "
                                "modified); recompile or copy it again")
    program = unpack(data[PROGRAM_FILE], PROGRAM_MAGIC, str(path / PROGRAM_FILE))
    weights = unpack(data[WEIGHTS_FILE], WEIGHTS_MAGIC, str(path / WEIGHTS_FILE))
    for name, blob in ((PROGRAM_FILE, program), (WEIGHTS_FILE, weights)):
        if blob.fingerprint != fp:
            raise ArtifactError(f"{path / name}: fingerprint {blob.fingerprint:08x} differs from the "
                                f"manifest's {fp:08x}; the build directory mixes two builds")
    if board is not None:
        target = boards.load(board)
        if target.arch.fingerprint != fp:
            raise ArtifactError(
                f"{path}: compiled for {manifest.get('board')} (architecture {fp:08x}), but {board} is "
                f"{target.arch.fingerprint:08x} ({target.arch.rows}x{target.arch.cols} array); "
                f"recompile with --board {board}")
    host = {n: d for n, d in data.items() if n.startswith("host_")}
    return Build(path, manifest, program.body, weights.body, host)
