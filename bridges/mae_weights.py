"""MAE weights as the converters take them: from a zoo id, a file or a dict, with provenance;
and the two attention-bias layouts (``qkv.bias`` vs BEiT-style ``q_bias``/``v_bias``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bridges.errors import ConversionError
from zoo.cache import expected_digest, fetch, sha256_file
from zoo.checkpoint import CheckpointInfo, load_checkpoint, model_state_dict, read_checkpoint, weights_file
from zoo.errors import UnknownSourceError
from zoo.registry import resolve_source


@dataclass
class Provenance:
    """Where converted weights came from; empty fields are unknown (e.g. an in-memory state dict)."""

    source: str
    source_url: str = ""
    source_sha256: str = ""
    dataset: str = ""
    epochs: int | None = None

    def as_strings(self) -> dict[str, str]:
        """The known fields as text (safetensors metadata and checkpoint records hold str -> str)."""
        return {k: str(v) for k, v in asdict(self).items() if v not in ("", None)}


# the encoder's tensors, as the timm and UperNet converters take them (the final norm aside)
ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.")


def resample_pos_embed(pos_embed: torch.Tensor, info: CheckpointInfo, img_size: int) -> tuple[torch.Tensor, str]:
    """``pos_embed`` for the ``img_size`` grid, resampled bicubically (cls slot kept) in float32 when
    the grid differs, and the report line saying so ('' when unchanged)."""
    from timm.layers import resample_abs_pos_embed

    if img_size % info.patch_size:
        raise ConversionError(f"img_size {img_size} is not a multiple of the patch size {info.patch_size}")
    grid = img_size // info.patch_size
    if grid == info.grid_size:
        return pos_embed, ""
    resampled = resample_abs_pos_embed(pos_embed.float(), new_size=[grid, grid], num_prefix_tokens=1,
                                       interpolation="bicubic")
    return resampled, (f"resampled pos_embed {info.grid_size}x{info.grid_size} -> {grid}x{grid} (bicubic, cls slot "
                       f"kept) for {img_size}px")


def key_groups(keys: list[str]) -> str:
    """The top-level modules of ``keys`` (``decoder_blocks, mask_token``), for conversion reports."""
    groups = sorted({k.split(".")[0] for k in keys})
    return ", ".join(groups) if groups else "nothing"


def merge_qv_bias(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """``attn.q_bias``/``attn.v_bias`` -> ``attn.qkv.bias = cat(q, 0, v)`` (exact: BEiT style)."""
    out, merged = {}, 0
    for k, v in sd.items():
        if k.endswith(".attn.q_bias"):
            prefix = k[: -len("q_bias")]
            out[prefix + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), sd[prefix + "v_bias"]])
            merged += 1
        elif not k.endswith(".attn.v_bias"):
            out[k] = v
    return out, merged


def split_qkv_bias(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``attn.qkv.bias`` -> ``attn.q_bias`` + ``attn.v_bias``, dropping the key bias.

    Exact: a key bias adds q.b_k to every logit of a query, which softmax ignores. (The
    release's tool sliced the wrong tensor here.)
    """
    out = {}
    for k, v in sd.items():
        if k.endswith(".attn.qkv.bias"):
            prefix = k[: -len("qkv.bias")]
            q, _, value = v.chunk(3)
            out[prefix + "q_bias"], out[prefix + "v_bias"] = q.clone(), value.clone()
        else:
            out[k] = v
    return out


def load_mae_weights(source: str | Path | dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Provenance]:
    """Weights and provenance of a zoo id, a local source (checkpoint file, transformers ViTMAE/ViT folder)
    or an in-memory state dict.

    Torch files are memory-mapped privately (copy-on-write), so converters can write their tensors
    without copying them; an in-memory dict is copied so results never alias the caller's.
    """
    if isinstance(source, dict):  # copies: the converted dict must not alias the caller's tensors
        return {k: v.clone() for k, v in model_state_dict(source).items()}, Provenance("in-memory state dict")
    try:
        src = resolve_source(source)
    except UnknownSourceError as e:
        raise ConversionError(str(e)) from None
    if src.path is not None:
        sha = sha256_file(weights_file(src.path))  # streamed: a ViT-L file is 1.2 GB
        return model_state_dict(read_checkpoint(src.path)), Provenance(str(src.path.resolve()), source_sha256=sha)
    entry = src.entry

    fetched = fetch(entry.id)  # returns only a file whose digest matches expected_digest (no second hash)
    provenance = Provenance(entry.id, entry.url(), expected_digest(entry)[0] or "", entry.dataset_name, entry.epochs)
    return model_state_dict(load_checkpoint(fetched)), provenance


def untrained_mae_weights(source: str | Path | dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Provenance]:
    """The MAE code's own initialisation of ``source``'s architecture (seeded by the caller), with the
    source's provenance: the from-scratch baseline differs from the pretrained run only in the weights."""
    from pretrain.models.mae import create_model
    from zoo.checkpoint import check_structure

    sd, provenance = load_mae_weights(source)
    info = check_structure(sd)
    return create_model(info.model, **info.model_overrides()).state_dict(), provenance
