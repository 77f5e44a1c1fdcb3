"""What the transformers bridges (Hugging Face export, UperNet segmentation) share: the optional
import with its install hint, this package's version for provenance records, the source's license
for model cards, and writing a model folder atomically."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError
from zoo.registry import Entry, get_entry, license_url, local_source

TRANSFORMERS_INSTALL = "pip install 'long-seq-mae[hf]'"


def require_transformers() -> Any:
    """The transformers module, or a one-line error that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise LsmaeError(f"this bridge needs transformers ({e}): {TRANSFORMERS_INSTALL}") from None
    return transformers


def package_version() -> str:
    """long-seq-mae's installed version ("unknown" in a bare source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("long-seq-mae")
    except PackageNotFoundError:
        return "unknown"


def zoo_entry_of(source: str) -> Entry | None:
    """The zoo entry a source names; None for a local path, an in-memory state dict or another name."""
    if local_source(source) is not None:
        return None
    try:
        return get_entry(source)
    except LsmaeError:
        return None


def card_license(entry: Entry | None) -> tuple[str, str]:
    """(model card metadata id, sentence) of the source weights' license."""
    if entry is None:
        return "other", ("the license of the source file applies (the released long-seq MAE weights are "
                         "CC-BY-NC 4.0: non-commercial use)")
    return entry.license.lower(), f"{entry.license} ({license_url(entry.license)})" + (
        ": non-commercial use" if "NC" in entry.license else "")


def write_folder(output: Path, write: Callable[[Path], None]) -> None:
    """Write the files into a temporary folder beside ``output``, then move each into place (no
    half-written file, also when a run is killed while saving)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp", dir=output.parent))
    try:
        write(tmp)
        output.mkdir(exist_ok=True)
        for file in tmp.iterdir():
            os.replace(file, output / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
