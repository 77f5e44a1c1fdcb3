"""Atomic file writes, standard library only: the torch-free commands (``lsmae plot``) write their
files the way checkpoints are written, never leaving a half-written file under the final name."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a hidden temporary file beside ``path`` (same file system), then rename it to
    ``path``. A write that fails removes its temporary file; a killed process leaves
    ``.NAME.tmpPID`` (the trainer removes those of checkpoints)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
