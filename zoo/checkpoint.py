"""Reading checkpoints without trusting them, and structural verification.

A local source is a ``.pth`` file (read with :func:`pretrain.safe_load.load_checkpoint`: no
code runs while unpickling) or a transformers folder / ``.safetensors`` file (:mod:`zoo.hf_folder`).
Its weights are checked against the architecture table of :mod:`pretrain` (the source of truth
for keys and shapes), built on the meta device so no weights are allocated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretrain.errors import CheckpointError
from pretrain.models.archs import list_models, model_config
from pretrain.models.mae import create_model
from pretrain.models.pos_embed import grid_size_of
from pretrain.safe_load import load_checkpoint

from .errors import VerificationError
from .hf_folder import Q_V_BIAS, read_safetensors_source, weights_file

# the keys of an encoder-only MAE checkpoint (the decoder and mask token dropped)
ENCODER_ONLY_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
__all__ = ["CheckpointError", "CheckpointInfo", "VerificationError", "check_structure", "describe",
           "expected_shapes", "load_checkpoint", "model_state_dict", "read_checkpoint",
           "weights_file"]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A local source as a checkpoint dict: a torch file as saved; a safetensors file or a transformers
    ViTMAE/ViT folder as ``{'model': weights}`` under the release's keys."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return {"model": read_safetensors_source(path)}
    return load_checkpoint(path)


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a release-format (``{'model': ...}``) or bare state-dict checkpoint."""
    sd = checkpoint.get("model", checkpoint)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"no model weights found (top-level keys: {', '.join(map(str, list(checkpoint)[:8]))})"
        )
    return sd


@dataclass
class CheckpointInfo:
    """What a checkpoint's shapes say it is."""

    embed_dim: int
    depth: int
    patch_size: int
    in_chans: int
    grid_size: int
    k_bias: str  # "qkv.bias" | "q_bias/v_bias" | "none"
    has_decoder: bool
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_downsampling: int = 1
    pred_downsampling: int = 1
    num_tensors: int = 0
    num_params: int = 0
    num_bytes: int = 0
    dtypes: list[str] = field(default_factory=list)
    matching_models: list[str] = field(default_factory=list)  # every table row these shapes fit
    model: str = ""  # the architecture check_structure verified the weights against ("" before)

    @property
    def img_size(self) -> int:
        return self.grid_size * self.patch_size

    def model_overrides(self) -> dict[str, Any]:
        """``create_model`` options that reproduce this checkpoint's layout."""
        return dict(
            img_size=self.img_size, in_chans=self.in_chans, no_k_bias=self.k_bias == Q_V_BIAS,
            decoder_downsampling=self.decoder_downsampling, pred_downsampling=self.pred_downsampling,
        )


def _foreign_kind(sd: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith("backbone.net.") for k in sd):
        return "a Detectron2 ViTDet checkpoint"
    if "head.weight" in sd or "fc_norm.weight" in sd:
        return "a fine-tuned classifier (it has a classification head)"
    return None


def _block_count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def describe(sd: dict[str, torch.Tensor]) -> CheckpointInfo:
    """Infer the architecture from the shapes alone (heads are taken from the table)."""
    foreign = _foreign_kind(sd)
    if foreign:
        raise CheckpointError(f"this is {foreign}, not an MAE pretraining checkpoint")
    try:
        embed_dim = sd["cls_token"].shape[-1]
        proj = sd["patch_embed.proj.weight"].shape
        grid = grid_size_of(sd["pos_embed"].shape)
    except KeyError as e:
        raise CheckpointError(f"not an MAE checkpoint: no {e.args[0]!r} tensor") from None
    except ValueError as e:
        raise CheckpointError(f"not an MAE checkpoint: pos_embed: {e}") from None
    k_bias = Q_V_BIAS if "blocks.0.attn.q_bias" in sd else (
        "qkv.bias" if "blocks.0.attn.qkv.bias" in sd else "none")
    info = CheckpointInfo(
        embed_dim=embed_dim, depth=_block_count(sd, "blocks."), patch_size=proj[-1], in_chans=proj[1],
        grid_size=grid, k_bias=k_bias, has_decoder="decoder_embed.weight" in sd,
        num_tensors=len(sd), num_params=sum(t.numel() for t in sd.values()),
        num_bytes=sum(t.numel() * t.element_size() for t in sd.values()),
        dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in sd.values()}),
    )
    if info.has_decoder:
        info.decoder_embed_dim = sd["decoder_embed.weight"].shape[0]
        info.decoder_depth = _block_count(sd, "decoder_blocks.")
        decoder_grid = grid_size_of(sd["decoder_pos_embed"].shape)
        info.decoder_downsampling = max(1, grid // max(decoder_grid, 1))
        pred_patch = round((sd["decoder_pred.weight"].shape[0] / info.in_chans) ** 0.5)
        info.pred_downsampling = max(1, pred_patch // info.patch_size)
    info.matching_models = [
        name for name in list_models()
        if _same_shape_family(model_config(name), info)
    ]
    return info


def _same_shape_family(cfg: dict[str, Any], info: CheckpointInfo) -> bool:
    if (cfg["embed_dim"], cfg["depth"], cfg["patch_size"]) != (info.embed_dim, info.depth, info.patch_size):
        return False
    return not info.has_decoder or (
        (cfg["decoder_embed_dim"], cfg["decoder_depth"]) == (info.decoder_embed_dim, info.decoder_depth)
    )


def expected_shapes(model_name: str, **overrides: Any) -> dict[str, torch.Size]:
    """Keys and shapes of ``create_model(model_name, **overrides)``, built on the meta device."""
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_structure(
    sd: dict[str, torch.Tensor], model_name: str | None = None, img_size: int | None = None
) -> CheckpointInfo:
    """Verify ``sd`` against an architecture (inferred when ``model_name`` is None).

    Full (with decoder) and encoder-only checkpoints are both accepted; every tensor must be
    floating point and finite. Raises :class:`VerificationError` listing what differs.
    """
    info = describe(sd)
    if model_name is None:
        if not info.matching_models:
            raise VerificationError(
                f"no known architecture has width {info.embed_dim}, depth {info.depth}, "
                f"patch {info.patch_size}" + (f", decoder {info.decoder_embed_dim}x{info.decoder_depth}"
                                              if info.has_decoder else "")
            )
        model_name = info.matching_models[0]
    overrides = info.model_overrides()
    if img_size is not None and img_size != info.img_size:
        raise VerificationError(
            f"position embeddings are for a {info.grid_size}x{info.grid_size} grid "
            f"({info.img_size}px at patch {info.patch_size}), expected {img_size}px for {model_name}"
        )
    expected = expected_shapes(model_name, **overrides)
    if not info.has_decoder:
        expected = {k: v for k, v in expected.items() if k.startswith(ENCODER_ONLY_PREFIXES)}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if sd[k].shape != expected[k])
    if missing or unexpected or wrong:
        parts = [f"does not match {model_name}"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes ({k}: {tuple(sd[k].shape)} vs {tuple(expected[k])}"
                         f"{', ...' if len(wrong) > 1 else ''})")
        raise VerificationError("checkpoint " + "; ".join(parts))
    for k, t in sd.items():
        if not t.is_floating_point():
            raise VerificationError(f"tensor {k} has dtype {t.dtype}, expected floating point")
        # one reduction pass; NaN/inf anywhere makes the sum non-finite (then confirm exactly)
        if not torch.isfinite(t.sum(dtype=torch.float32)) and not torch.isfinite(t).all():
            raise VerificationError(f"tensor {k} holds NaN or infinite values")
    info.model = model_name
    return info
