"""Reading checkpoint files without running their code (safe unpickling), below both the training engine and
the zoo, which read the same files. Imported where a file is loaded, never by a look-up command: torch comes
with it."""
from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from pretrain.errors import CheckpointError

# The release's training checkpoints pickle their command line as an argparse.Namespace.
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (plus ``argparse.Namespace``), memory-mapped.

    Anything that would execute code while unpickling is refused before it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    mmap = zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            name = found.group(1) or found.group(2)
            raise CheckpointError(
                f"{path}: refused to load: the file asks to run or build {name}, which a weights "
                "file never needs (not loaded; nothing was executed)"
            ) from None
        detail = str(e).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or _first_line(e)
        raise CheckpointError(
            f"{path}: refused to load: not a PyTorch weights file, or it uses pickle features a weights "
            f"file never needs ({detail}; nothing was executed)"
        ) from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, OSError) as e:
        if mmap or "zip archive" in str(e):
            reason = str(e).partition("zip archive: ")[2].split(".")[0] or _first_line(e)
            raise CheckpointError(f"{path}: damaged or truncated checkpoint ({reason})") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
