"""MAE checkpoint -> Detectron2 ViTDet backbone weights, and the load contract that guards them.

Detectron2 only warns when a checkpoint's ``pos_embed`` does not fit the model, then trains
with a random one. Here the model's grid is derived from the checkpoint (``pretrain_img_size``)
and a load that leaves anything but the relative-position tables and the non-backbone parts
uninitialised, or skips a checkpoint tensor, is an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bridges.conversion import ConversionReport, save_pth
from bridges.detection.errors import LoadContractError
from bridges.mae_weights import load_mae_weights, merge_qv_bias
from pretrain.models.pos_embed import grid_size_of
from zoo.checkpoint import CheckpointInfo, check_structure

BACKBONE_PREFIX = "backbone.net."
VITDET_KEEP = ("pos_embed", "patch_embed.", "blocks.")
REL_POS = re.compile(r"^backbone\.net\.blocks\.\d+\.attn\.rel_pos_[hw]$")


@dataclass
class VitDetCheckpoint:
    """A detectron2 checkpoint dict and what the conversion did."""

    checkpoint: dict[str, Any]
    info: CheckpointInfo
    report: ConversionReport

    @property
    def pretrain_img_size(self) -> int:
        """The value ViTDet's ``pretrain_img_size`` must have for this ``pos_embed`` (448 for the release)."""
        return self.info.img_size


def to_vitdet(sd: dict[str, torch.Tensor], info: CheckpointInfo) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Keys become ``backbone.net.<key>`` for patch_embed, pos_embed and blocks; cls_token,
    norm, mask_token and the decoder are dropped (no I/O)."""
    kept = {k: v for k, v in sd.items() if k.startswith(VITDET_KEEP)}
    dropped = sorted(set(sd) - set(kept))
    kept, merged = merge_qv_bias(kept)
    model = {BACKBONE_PREFIX + k: v.contiguous() for k, v in kept.items()}
    note = (f"pos_embed kept whole ({info.grid_size}x{info.grid_size} + cls): set "
            f"model.backbone.net.pretrain_img_size={info.img_size}")
    return model, ConversionReport(sorted(model), dropped, merged_k_bias=merged, notes=[note],
                                   kept_as="{n} tensors as backbone.net.*")


def convert_to_vitdet(source: str | Path | dict[str, torch.Tensor]) -> VitDetCheckpoint:
    """Load ``source`` and convert it with :func:`to_vitdet` into a checkpoint that loads without
    matching heuristics and records the grid and the provenance."""
    sd, provenance = load_mae_weights(source)
    info = check_structure(sd)
    model, report = to_vitdet(sd, info)
    checkpoint = {
        "model": model, "matching_heuristics": False, "__author__": "long-seq-mae",
        "pretrain_img_size": info.img_size, "patch_size": info.patch_size, "mae_model": info.model,
        **{k: v for k, v in provenance.as_strings().items() if k in ("source", "source_sha256", "source_url")},
    }
    return VitDetCheckpoint(checkpoint, info, report)


def save_vitdet(converted: VitDetCheckpoint, path: str | Path) -> Path:
    """Write the checkpoint as a ``.pth`` file (atomically)."""
    return save_pth(converted.checkpoint, path)


def check_load_contract(model_shapes: dict[str, tuple[int, ...]], checkpoint_shapes: dict[str, tuple[int, ...]]
                        ) -> list[str]:
    """Raise unless every checkpoint tensor lands in the model with its shape and the model's
    only uninitialised backbone tensors are the (zero-initialised) relative-position tables.

    Returns the model keys left to their initialisation (rel_pos tables, pyramid, RPN, heads).
    """
    unexpected = sorted(set(checkpoint_shapes) - set(model_shapes))
    wrong = sorted(k for k in set(checkpoint_shapes) & set(model_shapes)
                   if tuple(checkpoint_shapes[k]) != tuple(model_shapes[k]))
    missing = sorted(set(model_shapes) - set(checkpoint_shapes))
    bad_missing = [k for k in missing if k.startswith(BACKBONE_PREFIX) and not REL_POS.match(k)]
    problems = []
    if wrong:
        # a pos_embed of the right width but another grid is the mistake to explain, whatever else differs
        grids = [k for k in wrong if k.endswith("pos_embed") and checkpoint_shapes[k][-1:] == model_shapes[k][-1:]]
        k = grids[0] if grids else wrong[0]
        hint = ""
        if grids:
            grid = grid_size_of(checkpoint_shapes[k])
            patch = checkpoint_shapes.get(BACKBONE_PREFIX + "patch_embed.proj.weight")
            size = f"{grid * patch[-1]}" if patch else f"{grid} x patch size (448 for the released checkpoints)"
            hint = (f" -- the checkpoint's position embeddings are for a {grid}x{grid} grid: set "
                    f"model.backbone.net.pretrain_img_size={size}")
        problems.append(f"{len(wrong)} tensors with other shapes, e.g. {k}: checkpoint "
                        f"{tuple(checkpoint_shapes[k])} vs model {tuple(model_shapes[k])}{hint}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors the model does not have, e.g. {unexpected[:3]}")
    if bad_missing:
        problems.append(f"{len(bad_missing)} backbone tensors the checkpoint does not provide, e.g. {bad_missing[:3]}")
    if problems:
        raise LoadContractError("ViTDet load contract broken: " + "; ".join(problems))
    return missing
