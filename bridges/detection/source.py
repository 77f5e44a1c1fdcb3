"""SOURCE of ``lsmae detect`` -> the backbone initialisation Detectron2 loads, and the load contract
checked before anything is launched: every tensor of the checkpoint lands in the model with its
shape; only the relative-position tables may be left to their initialisation (Detectron2 itself
only warns about a ``pos_embed`` that does not fit, then trains with a random one)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bridges.detection.convert import BACKBONE_PREFIX, check_load_contract, convert_to_vitdet, save_vitdet
from bridges.detection.errors import DetectError
from pretrain.errors import CheckpointError, LsmaeError
from pretrain.models.pos_embed import grid_size_of
from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict, read_checkpoint
from zoo.errors import UnknownSourceError
from zoo.registry import resolve_source

INIT_KEY = "train.init_checkpoint"
PRETRAIN_IMG_SIZE_KEY = "model.backbone.net.pretrain_img_size"
CONVERTED_NAME = "lsmae_init_vitdet.pth"  # conversion of a SOURCE file, written into train.output_dir


# --------------------------------------------------------------------------- the source checkpoint
@dataclass
class Init:
    """What SOURCE provides: the converted checkpoint (when it is used) and its grid."""

    pretrain_img_size: int
    grid_size: int
    description: str
    checkpoint: str | None = None
    report: str = ""


def _grid_of(sd: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(grid, patch) of a ViTDet backbone state dict (``backbone.net.*``, pos_embed with cls)."""
    try:
        pos = sd[BACKBONE_PREFIX + "pos_embed"]
        patch = sd[BACKBONE_PREFIX + "patch_embed.proj.weight"].shape[-1]
    except KeyError as e:
        raise DetectError(f"the ViTDet checkpoint has no {e.args[0]} tensor") from None
    return grid_size_of(pos.shape), patch


def _backbone_only(sd: dict[str, Any]) -> bool:
    return bool(sd) and all(k.startswith(BACKBONE_PREFIX) for k in sd)


def prepare_source(source: str, output_dir: str, convert: bool) -> Init:
    """Fetch/verify/convert SOURCE (``convert``) or only read its grid (an override names the init)."""
    try:
        src = resolve_source(source)
    except UnknownSourceError as e:
        raise DetectError(f"SOURCE {e}") from None
    path = src.path
    if path is not None:
        sd = model_state_dict(read_checkpoint(path))
        if any(k.startswith(BACKBONE_PREFIX) for k in sd):
            if not _backbone_only(sd):
                raise DetectError(
                    f"{path} is a whole detector checkpoint, not a backbone initialisation: name the MAE checkpoint "
                    f"it was trained from as SOURCE and pass {INIT_KEY}={path}")
            grid, patch = _grid_of(sd)
            return Init(grid * patch, grid, f"{path} (converted for ViTDet)",
                        str(path.resolve()) if convert else None)
        if not convert:
            info = check_structure(sd)
            return Init(info.img_size, info.grid_size, str(path))
        converted = convert_to_vitdet(path)
        out = save_vitdet(converted, Path(output_dir) / CONVERTED_NAME)
        grid, patch = _grid_of(converted.checkpoint["model"])
        return Init(grid * patch, grid, f"{path} -> {out}", str(out), converted.report.text())
    entry = src.entry
    if not convert:
        return Init(entry.img_size, entry.img_size // entry.patch_size, entry.id)
    from bridges.detection.paths import vitdet_checkpoint

    out = vitdet_checkpoint(entry.id)  # fetches (progress bar, license) unless already converted
    grid, patch = _grid_of(model_state_dict(load_checkpoint(out)))
    return Init(grid * patch, grid, f"{entry.id} -> {out}", str(out))


def _local_path(path: str) -> str | None:
    from detectron2.utils.file_io import PathManager

    path = path.split("?", 1)[0]
    try:
        local = PathManager.get_local_path(path)
    except LsmaeError:
        raise
    except Exception:  # noqa: BLE001 - a URL detectron2 will report itself
        return None
    return local if os.path.isfile(local) else None


def backbone_init_shapes(init_checkpoint: str) -> dict[str, tuple[int, ...]] | None:
    """Shapes of ``init_checkpoint`` when it is a backbone initialisation (only ``backbone.net.*``
    tensors, e.g. a conversion of an MAE checkpoint), else None (a detector checkpoint)."""
    local = _local_path(init_checkpoint) if init_checkpoint else None
    if local is None:
        return None
    try:
        sd = model_state_dict(load_checkpoint(local))
    except CheckpointError:
        return None  # not ours to judge (e.g. a detectron2 .pkl); detectron2 loads it
    if not _backbone_only(sd):
        return None
    return {k: tuple(v.shape) for k, v in sd.items()}


def check_architecture(cfg: Any, checkpoint_shapes: dict[str, tuple[int, ...]]) -> None:
    """Width, depth and patch of the checkpoint's ViT against the config's (before building anything)."""
    from omegaconf import OmegaConf

    proj = checkpoint_shapes.get(BACKBONE_PREFIX + "patch_embed.proj.weight")
    blocks = {int(k.split(".")[3]) for k in checkpoint_shapes if k.startswith(BACKBONE_PREFIX + "blocks.")}
    if proj is None or not blocks:
        return  # check_load_contract reports what is missing
    have = {"embed_dim": proj[0], "depth": max(blocks) + 1, "patch_size": proj[-1]}
    want = {k: OmegaConf.select(cfg, f"model.backbone.net.{k}", default=None) for k in have}
    if any(want[k] != v for k, v in have.items()):
        def fmt(d: dict[str, Any]) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items())

        raise DetectError(f"the checkpoint is a ViT with {fmt(have)} but the config builds {fmt(want)}: use the config "
                          "of that size (_b_ for ViT-B, _l_ for ViT-L) or override model.backbone.net.*")


def enforce_load_contract(cfg: Any, checkpoint_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Build the model on the CPU and check that the checkpoint loads into it without gaps."""
    from detectron2.config import instantiate

    check_architecture(cfg, checkpoint_shapes)
    try:
        model = instantiate(cfg.model)
    except Exception as e:  # noqa: BLE001 - a config or override that does not build: say so in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DetectError(f"cannot build the model of the config: {type(e).__name__}: {msg}") from None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    return check_load_contract(shapes, checkpoint_shapes)


def summarise_missing(missing: list[str]) -> str:
    rel_pos = sum(1 for k in missing if k.startswith(BACKBONE_PREFIX))
    return f"{rel_pos} relative-position tables and {len(missing) - rel_pos} pyramid/RPN/head tensors"
