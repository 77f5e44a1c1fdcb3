"""``lsmae://ARCH/DATASET/EPOCHS`` (and ``lsmae://demo``) for Detectron2's PathManager.

Importing this module registers the handler on ``detectron2.utils.file_io.PathManager``; the
shipped detection configs import it, so every process that loads a config (including the
workers ``detectron2.engine.launch`` spawns) can resolve the scheme. A path resolves to the
fetched, verified checkpoint converted for ViTDet, converted once and cached beside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from bridges.detection.convert import convert_to_vitdet, save_vitdet
from zoo.cache import entry_path, expected_digest
from zoo.registry import Entry, get_entry

SCHEME = "lsmae://"


def vitdet_checkpoint(entry_id: str) -> Path:
    """The ViTDet conversion of a zoo entry, keyed by the digest of the file it came from."""
    entry = get_entry(entry_id)
    digest, _ = expected_digest(entry)
    if digest and _converted_path(entry, digest).exists():
        return _converted_path(entry, digest)  # made from a verified file: no need to hash it again
    converted = convert_to_vitdet(entry.id)  # fetches and verifies (downloading if needed)
    out = _converted_path(entry, converted.checkpoint["source_sha256"])
    save_vitdet(converted, out)  # written by rename: concurrent workers at worst convert twice
    return out


def _converted_path(entry: Entry, digest: str) -> Path:
    return entry_path(entry).with_name(f"vitdet-{digest[:16]}.pth")


class LsmaePathHandler(PathHandler):
    """Resolves ``lsmae://ID`` to a local ViTDet checkpoint (read-only)."""

    def _get_supported_prefixes(self) -> list[str]:
        return [SCHEME]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        return str(vitdet_checkpoint(path[len(SCHEME):].split("?", 1)[0]))

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any) -> IO[Any]:
        if any(c in mode for c in "wa+"):
            raise ValueError(f"{path} is read-only")
        return open(self._get_local_path(path), mode, buffering=buffering)

    def _exists(self, path: str, **kwargs: Any) -> bool:
        return Path(self._get_local_path(path)).exists()

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return self._exists(path)


def register() -> None:
    """Idempotent (a re-registration replaces the handler)."""
    PathManager.register_handler(LsmaePathHandler(), allow_override=True)


register()
