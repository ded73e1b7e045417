"""Write a file so that a reader, or a run killed midway, sees the old file or the new one, never
half of one."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an unpicklable object, Ctrl-C: no half-written temp file left
        tmp.unlink(missing_ok=True)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to disk, so that a rename of it after a power loss never points at an
    empty or partly written file (write errors the disk reports late surface here as ``OSError``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make the renames into ``directory`` durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fsync_file(directory)
