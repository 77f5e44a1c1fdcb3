"""The one way this package puts a file in place: written under a hidden temporary name beside it, then renamed,
so that no reader (another process, a resumed run, a killed one's successor) ever sees a half-written file under
the final name. Standard library only, so the torch-free commands (``lsmae plot``) write the same way; torch is
imported by :func:`save_torch` alone, when a torch object is written."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` into ``.NAME.tmpPID-THREAD`` beside ``path`` (same file system), then rename it to ``path``.
    A write that fails removes its temporary file and leaves an older ``path`` as it was; a killed process
    leaves its temporary file (the trainer removes those of checkpoints)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any, **dumps_options: Any) -> Path:
    """``obj`` as ``json.dumps(obj, **dumps_options)`` writes it; serialised before the file is opened, so an
    object that JSON cannot hold leaves no file at all."""
    return write_text(path, json.dumps(obj, **dumps_options))


def write_image(path: str | Path, image: Image.Image, file_format: str = "PNG") -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format=file_format))


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)``: the only writer that imports torch."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_folder(output: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a hidden temporary folder beside ``output``; then each of its entries replaces its
    namesake in ``output`` (created if needed; other files there are kept). A write that fails leaves ``output``
    as it was, and no temporary folder either way."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp", dir=output.parent))
    try:
        write(tmp)
        output.mkdir(exist_ok=True)
        for entry in tmp.iterdir():
            os.replace(entry, output / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
