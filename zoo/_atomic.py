"""Atomic file replacement for every artifact the zoo writes.

The cache and the bundled models are read by other processes (tests, the compiler, a second training
run). Writing to a temporary file in the same directory and then `os.replace`-ing it means a reader
sees either the old complete file or the new complete file, never a truncated one, even if the writer
is killed half way.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds.

    The temporary name keeps `path`'s suffix because some writers (e.g. `np.savez`) append one
    when it is missing, which would make the later rename miss the file they actually wrote. The
    file is not pre-created (unlike `tempfile.mkstemp`) so the writer creates it with the usual
    umask-derived permissions instead of 0600, which matters for files shipped as package data.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
