"""Artifact formats of a compiled build: `program.bin`, `weights.bin`, `manifest.json`, and fingerprints.

Both binaries start with the same 32-byte header: magic, format version, architecture fingerprint,
body length and CRC-32 of the body. The manifest records every file's SHA-256. A reader checks all of
it before use, so a flipped byte is an integrity error, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynq.errors import DynqError

FORMAT_VERSION = 1
PROGRAM_MAGIC = b"DYNQPRG\0"
WEIGHTS_MAGIC = b"DYNQWGT\0"
HEADER = struct.Struct("<8sHHIQI4x")
"""magic, format version, header bytes, fingerprint, body bytes, body CRC-32, reserved."""
assert HEADER.size == 32

PROGRAM_FILE = "program.bin"
WEIGHTS_FILE = "weights.bin"
MANIFEST_FILE = "manifest.json"


class ArtifactError(DynqError, RuntimeError):
    """A build directory is missing, corrupted, or made for another architecture."""


def fingerprint(arch: dict[str, Any], contract_version: int) -> int:
    """32-bit fingerprint of an architecture: same array, buffers and contract -> same overlay."""
    canonical = json.dumps({"arch": arch, "contract": contract_version}, sort_keys=True).encode()
    return zlib.crc32(canonical)


def pack(magic: bytes, fp: int, body: bytes) -> bytes:
    return HEADER.pack(magic, FORMAT_VERSION, HEADER.size, fp, len(body), zlib.crc32(body)) + body


@dataclass(frozen=True)
class Blob:
    fingerprint: int
    body: bytes


def unpack(data: bytes, magic: bytes, name: str) -> Blob:
    """Checks header and CRC; raises ArtifactError naming the file and what is wrong."""
    if len(data) < HEADER.size:
        raise ArtifactError(f"{name}: {len(data)} bytes is too short to be a dynq artifact (rebuild it)")
    got_magic, version, header_bytes, fp, length, crc = HEADER.unpack_from(data)
    if got_magic != magic:
        raise ArtifactError(f"{name}: not a dynq {magic[4:7].decode().lower()} file (bad magic)")
    if version != FORMAT_VERSION or header_bytes != HEADER.size:
        raise ArtifactError(f"{name}: format version {version}, this dynq reads {FORMAT_VERSION}; recompile")
    body = data[HEADER.size:]
    if len(body) != length:
        raise ArtifactError(f"{name}: body has {len(body)} bytes, header says {length} (truncated?)")
    if zlib.crc32(body) != crc:
        raise ArtifactError(f"{name}: CRC mismatch, the file is corrupted; recompile or copy it again")
    return Blob(fp, body)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest as written: JSON with a `checksum` over its own canonical form, so an edited or
    corrupted manifest (a scale, an offset) is refused like a corrupted binary."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return json.dumps({**body, "checksum": sha256(_canonical(body))}, indent=1).encode()


def manifest_intact(manifest: dict[str, Any]) -> bool:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return manifest.get("checksum") == sha256(_canonical(body))


def _canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds.

    Readers (tests, the compiler, another run, a cache lookup) see the old complete file or the new
    complete file, never a truncated one, even if the writer is killed half way. The temporary name is
    unique, so concurrent writers do not collide, and keeps `path`'s suffix because some writers (e.g.
    `np.savez`) append one when it is missing. The file is not pre-created, so it gets the usual
    umask-derived permissions (it may be shipped as package data).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
