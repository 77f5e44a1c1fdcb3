"""MAE checkpoint -> timm VisionTransformer weights (and q/v-bias <-> qkv-bias attention).

Keeps the encoder (cls_token, pos_embed, patch_embed, blocks, and ``norm`` for cls-token
pooling), drops the decoder and mask token, merges BEiT-style ``q_bias``/``v_bias`` into
``qkv.bias`` and resamples ``pos_embed`` to the target grid with timm's own resampling.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridges.conversion import ConversionReport
from bridges.errors import ConversionError
from bridges.mae_weights import (
    ENCODER_KEYS,
    Provenance,
    load_mae_weights,
    merge_qv_bias,
    resample_pos_embed,
    untrained_mae_weights,
)
from pretrain.atomic import atomic_write
from pretrain.models.archs import model_config
from zoo.checkpoint import CheckpointInfo, check_structure

# timm model names for our encoders, by (width, depth, heads); others are built from vit_base with overrides
TIMM_NAMES = {(768, 12, 12): "vit_base_patch16_224", (1024, 24, 16): "vit_large_patch16_224",
              (1280, 32, 16): "vit_huge_patch14_224"}
HEAD_INIT_STD = 2e-5  # MAE's fine-tuning head initialisation


@dataclass
class Converted:
    """timm-ready weights, what was done to them, and how to rebuild the model they fit."""

    state_dict: dict[str, torch.Tensor]
    report: ConversionReport
    info: CheckpointInfo
    provenance: Provenance
    img_size: int
    global_pool: str
    timm_model: str
    timm_kwargs: dict[str, Any]
    init: str = ""  # "" for the source's weights, else what the weights are instead

    @property
    def timm_kwargs_text(self) -> str:
        """``timm_kwargs`` as the tail of a ``timm.create_model(...)`` call (the load hint of ``--to timm``)."""
        return "".join(f", {k}={v!r}" for k, v in self.timm_kwargs.items())

    @property
    def metadata(self) -> dict[str, str]:
        """Provenance and rebuild arguments as safetensors metadata (str -> str)."""
        return {
            **self.provenance.as_strings(), "format": "long-seq-mae timm ViT", "mae_model": self.info.model,
            "img_size": str(self.img_size), "pretrain_img_size": str(self.info.img_size),
            "patch_size": str(self.info.patch_size), "global_pool": self.global_pool, "timm_model": self.timm_model,
            "timm_kwargs": json.dumps(self.timm_kwargs), **({"init": self.init} if self.init else {}),
        }


def to_timm(sd: dict[str, torch.Tensor], info: CheckpointInfo, img_size: int = 224, global_pool: str = "avg"
            ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """An MAE state dict as a timm ViT's at ``img_size`` with ``global_pool`` 'avg' or 'token' (no I/O).

    With 'avg' the final ``norm`` is dropped (timm, like MAE's fine-tuning, uses a fresh
    ``fc_norm``); with 'token' it is kept.
    """
    if global_pool not in ("avg", "token"):
        raise ConversionError(f"global_pool must be 'avg' or 'token', got {global_pool!r}")
    pos_embed, resampled = resample_pos_embed(sd["pos_embed"], info, img_size)
    keep = ENCODER_KEYS + (("norm.",) if global_pool == "token" else ())
    out = {k: v for k, v in sd.items() if k.startswith(keep)}
    dropped = sorted(set(sd) - set(out))
    out, merged = merge_qv_bias(out)
    out["pos_embed"] = pos_embed.to(sd["pos_embed"].dtype)
    out = {k: v.contiguous() for k, v in out.items()}
    return out, ConversionReport(sorted(out), dropped, merged_k_bias=merged, resampled=resampled)


def convert_to_timm(
    source: str | Path | dict[str, torch.Tensor], img_size: int = 224, global_pool: str = "avg",
    pretrained: bool = True,
) -> Converted:
    """Load ``source`` and convert it with :func:`to_timm`. ``pretrained=False``: the untrained MAE of the
    source's architecture instead (a from-scratch baseline), recorded with the source's provenance."""
    sd, provenance = load_mae_weights(source) if pretrained else untrained_mae_weights(source)
    info = check_structure(sd)  # also refuses ViTDet and fine-tuned checkpoints with a clear message
    out, report = to_timm(sd, info, img_size, global_pool)
    return Converted(out, report, info, provenance, img_size, global_pool, *timm_model_args(info),
                     init="" if pretrained else "untrained (from scratch)")


def timm_model_args(info: CheckpointInfo) -> tuple[str, dict[str, Any]]:
    """A timm model name and the kwargs that make it this checkpoint's encoder."""
    num_heads = model_config(info.model)["num_heads"]
    channels = {} if info.in_chans == 3 else {"in_chans": info.in_chans}  # timm's default is RGB
    name = TIMM_NAMES.get((info.embed_dim, info.depth, num_heads))
    if name and name.split("_")[2] == f"patch{info.patch_size}":
        return name, channels
    return "vit_base_patch16_224", {"embed_dim": info.embed_dim, "depth": info.depth, "num_heads": num_heads,
                                    "patch_size": info.patch_size, **channels}


def save_safetensors(converted: Converted, path: str | Path) -> Path:
    """Write the weights with their provenance in the safetensors metadata (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_file(converted.state_dict, tmp, metadata=converted.metadata))



def create_timm_model(
    source: str | Path | dict[str, torch.Tensor], num_classes: int, global_pool: str = "avg",
    img_size: int = 224, pretrained: bool = True, **timm_kwargs: Any,
) -> tuple[nn.Module, Converted, list[str]]:
    """A timm ViT classifier initialised from an MAE checkpoint, head as in MAE's fine-tuning.

    Returns the model, the conversion, and the keys the model had to initialise itself
    (only ``head.*`` and, with avg pooling, ``fc_norm.*``; anything else is an error).
    ``pretrained=False`` starts from an untrained MAE of the source's architecture (the MAE code's
    own initialisation, converted the same way), so that a from-scratch baseline differs from the
    pretrained run only in what pretraining learned.
    """
    import timm

    converted = convert_to_timm(source, img_size=img_size, global_pool=global_pool, pretrained=pretrained)
    name, arch_kwargs = converted.timm_model, converted.timm_kwargs
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, global_pool=global_pool,
                              img_size=img_size, **arch_kwargs, **timm_kwargs)
    missing, unexpected = model.load_state_dict(converted.state_dict, strict=False)
    allowed = ("head.",) + (("fc_norm.",) if global_pool == "avg" else ())
    bad_missing = [k for k in missing if not k.startswith(allowed)]
    if unexpected or bad_missing:
        raise ConversionError(f"timm {name} does not take these weights: unexpected {unexpected[:5]}, "
                              f"missing {bad_missing[:5]}")
    if isinstance(model.head, nn.Linear):
        nn.init.trunc_normal_(model.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(model.head.bias)
    return model, converted, sorted(missing)
