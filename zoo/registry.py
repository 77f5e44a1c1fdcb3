"""The released checkpoints, read from ``registry.json``, and entry-id resolution."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError
from pretrain.models.archs import model_config

from . import settings
from .errors import UnknownEntryError, UnknownSourceError

REGISTRY_FILE = Path(__file__).with_name("registry.json")
ASSETS_DIR = Path(__file__).with_name("assets")
PACKAGE_PREFIX = "package"  # an entry whose url_prefix is this ships inside the package


@dataclass(frozen=True)
class Entry:
    """One released checkpoint; ``epochs`` is the effective count (COCO: file epochs x repeat)."""

    id: str
    arch: str
    model: str
    dataset: str
    dataset_name: str
    epochs: int
    file_epochs: int
    repeat: int
    path: str
    img_size: int
    patch_size: int
    mask_downsampling: int
    decoder: dict[str, int]
    license: str
    sha256: str = ""
    url_prefix: str = ""
    notes: str = ""
    # shell commands that regenerate the file from an empty folder (the project-made demo entry)
    recipe: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_packaged(self) -> bool:
        return self.url_prefix == PACKAGE_PREFIX

    def url(self, mirror: str | None = None) -> str:
        """Download URL; ``mirror`` (or ``LSMAE_MIRROR``) replaces the release's URL prefix."""
        if self.is_packaged:
            return (ASSETS_DIR / self.path).as_uri()
        prefix = mirror or settings.mirror() or self.url_prefix
        return prefix.rstrip("/") + "/" + self.path


def registry_file() -> Path:
    """``LSMAE_REGISTRY`` (a registry of your own, same format) or the packaged one."""
    return settings.registry_override() or REGISTRY_FILE


def _load() -> dict[str, Any]:
    return _read(registry_file())


@lru_cache(maxsize=None)
def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LsmaeError(f"cannot read the checkpoint registry {path}: {e}") from None


def license_url(license: str) -> str:
    return _load()["licenses"].get(license, "")


def entries() -> list[Entry]:
    """All registry entries, in file order."""
    doc = _load()
    return [Entry(**{"url_prefix": doc["url_prefix"], **e, "recipe": tuple(e.get("recipe", ()))})
            for e in doc["entries"]]


def _valid_ids() -> str:
    return ", ".join(e.id for e in entries())


def get_entry(entry_id: str) -> Entry:
    """Resolve ``ARCH/DATASET/EPOCHS`` (aliases allowed: ``vitb/imagenet/1600``) or ``demo``."""
    by_id = {e.id: e for e in entries()}
    if entry_id in by_id:
        return by_id[entry_id]
    aliases = _load()["aliases"]
    parts = entry_id.strip().strip("/").lower().split("/")
    if len(parts) != 3:
        raise UnknownEntryError(
            f"unknown checkpoint id {entry_id!r}: expected ARCH/DATASET/EPOCHS; valid ids: {_valid_ids()}"
        )
    arch = aliases["arch"].get(parts[0], parts[0])
    dataset = aliases["dataset"].get(parts[1], parts[1])
    epochs = parts[2].removesuffix("ep")
    candidate = f"{arch}/{dataset}/{epochs}"
    if candidate in by_id:
        return by_id[candidate]
    file_epoch_match = [e for e in by_id.values() if e.arch == arch and e.dataset == dataset
                        and str(e.file_epochs) == epochs and e.repeat > 1]
    if file_epoch_match:
        e = file_epoch_match[0]
        raise UnknownEntryError(
            f"{entry_id!r}: the {e.dataset_name} checkpoint's file is named '{epochs}ep' because it made "
            f"{e.file_epochs} passes over a data set repeated {e.repeat}x, i.e. {e.epochs} effective epochs; "
            f"use {e.id!r}. (The ImageNet-1k {epochs}-epoch file has the same basename: {arch}/in1k/{epochs}.)"
        )
    raise UnknownEntryError(f"unknown checkpoint id {entry_id!r}; valid ids: {_valid_ids()}")


@dataclass(frozen=True)
class Source:
    """What a SOURCE argument names: a local ``path`` (a checkpoint file, a transformers ViTMAE/ViT
    folder) or a zoo ``entry``; exactly one of them is set."""

    name: str
    path: Path | None = None
    entry: Entry | None = None

    @property
    def kind(self) -> str:
        if self.entry is not None:
            return "zoo entry"
        return "transformers folder" if self.path.is_dir() else "checkpoint file"


def resolve_source(source: str | Path) -> Source:
    """The one reading of SOURCE for every converter and launcher: an existing path wins over a zoo id
    spelled the same; anything else must be a zoo id or alias (else one line listing the valid ids)."""
    path = Path(source).expanduser()
    if path.exists():
        return Source(str(source), path=path)
    try:
        return Source(str(source), entry=get_entry(str(source)))
    except UnknownEntryError as e:
        raise UnknownSourceError(f"{str(source)!r} is neither a file nor a zoo id ({e})") from None


def encoder_size(source: str | Path) -> tuple[int, int]:
    """(width, depth) of the encoder of a zoo id (from the registry: nothing is fetched, no torch) or of
    a local source (its shapes), for choosing a recipe before anything is converted."""
    src = resolve_source(source)
    if src.entry is not None:
        cfg = model_config(src.entry.model)
        return cfg["embed_dim"], cfg["depth"]
    from .checkpoint import describe, model_state_dict, read_checkpoint

    info = describe(model_state_dict(read_checkpoint(src.path)))
    return info.embed_dim, info.depth
