"""Atomic file writes: a reader (or a run resumed after a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "public_mkdtemp"]


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; honour the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mkdtemp(parent: Path, prefix: str) -> Path:
    """A temporary directory beside its final place, with the umask's permissions."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_umask())
    return path


def atomic_write_text(path: str | Path, text: str) -> int:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> int:
    """:func:`atomic_write_bytes` of indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
