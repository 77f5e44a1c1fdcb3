"""transformers model folders as MAE weights: key renaming guided by ``config.json``, no transformers needed.

A ViTMAE folder (``model_type`` "vit_mae": ``ViTMAEForPreTraining``, or ``ViTMAEModel`` without a
decoder) or a ViT folder ("vit": the encoder), or its ``model.safetensors``, becomes a state dict
with the release's keys; our segmentation folders and other kinds are one-line errors. Both key
generations are read: 4.x (``vit.encoder.layer.N.attention.attention.query``, ``intermediate.dense``...),
5.x (``vit.layers.N.attention.q_proj``, ``mlp.fc1``...), and what 5.x's ``save_pretrained`` writes by
default (4.x names, the decoder's layers as ``decoder.decoder_encoder.layer.N``). q, k and v are stacked
into ``attn.qkv``; a folder that ``lsmae convert --to hf-*`` wrote from a q/v-bias checkpoint says so in
its config, and gets its ``attn.q_bias``/``attn.v_bias`` back (the exported key bias is zero).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import HFFolderError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_KEY = "lsmae"  # our provenance block in config.json (bridges.hf.export writes it)
Q_V_BIAS = "q_bias/v_bias"  # CheckpointInfo.k_bias of the no-k-bias layout, recorded as provenance "attention"
MODEL_TYPES = {"vit_mae": "ViTMAE", "vit": "ViT"}
SEGMENTATION_KEY = "lsmae_block_taps"  # in the config of our UperNet folders (bridges.segmentation.model)

_LAYER = re.compile(r"^(encoder\.layer|layers|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\."
                    r"(.+)\.(weight|bias)$")
# a layer's modules in both generations -> ours; q, k and v are stacked into attn.qkv afterwards
_IN_LAYER = {
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
}
_OUTSIDE_LAYERS = {
    "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}
_DECODER = ("decoder_embed.", "mask_token", "decoder_pos_embed", "decoder_norm.", "decoder_pred.")  # ours too
_NOT_PRETRAINED = ("pooler.",)  # ViTModel's pooler: no part of MAE pretraining


def _read_config(path: Path, source: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HFFolderError(f"{path}: unreadable transformers config ({e})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind == "beit" and SEGMENTATION_KEY in config:
        raise HFFolderError(f"{source}: an lsmae segmentation model (UperNet), not an MAE checkpoint; evaluate it "
                            "with `lsmae segment --eval-only`")
    if kind not in MODEL_TYPES:
        raise HFFolderError(f"{source}: a transformers {kind!r} model; lsmae reads ViTMAE ('vit_mae') and ViT "
                            "('vit') folders")
    return config


def _locate(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The weights file of ``path`` and the transformers config beside it (None for a bare safetensors file)."""
    config_path = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if not config_path.is_file():
        if path.is_dir():
            raise HFFolderError(f"{path}: a folder without {CONFIG_FILE}, not a transformers model folder")
        return path, None
    config = _read_config(config_path, path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise HFFolderError(f"{path}: no {WEIGHTS_FILE} in this transformers folder (lsmae reads safetensors)")
    return weights, config


def weights_file(path: str | Path) -> Path:
    """The file that holds a local source's weights (a folder's ``model.safetensors``), e.g. to hash it."""
    path = Path(path)
    return _locate(path)[0] if path.is_dir() else path


def read_safetensors_source(path: str | Path) -> dict[str, torch.Tensor]:
    """Release-key weights of a transformers folder, its ``model.safetensors``, or a safetensors file
    of release keys (no ``config.json`` beside it)."""
    path = Path(path)
    weights, config = _locate(path)
    try:
        tensors = load_file(weights)
    except (OSError, SafetensorError) as e:
        raise HFFolderError(f"{weights}: damaged or not a safetensors file ({e})") from None
    if config is None:
        return tensors
    provenance = config.get(PROVENANCE_KEY)
    q_v_bias = isinstance(provenance, dict) and provenance.get("attention") == Q_V_BIAS
    return from_hf_keys(tensors, q_v_bias, path)


def from_hf_keys(tensors: dict[str, torch.Tensor], q_v_bias: bool, source: str | Path) -> dict[str, torch.Tensor]:
    """Rename a ViTMAE/ViT state dict (either key generation) to the release's keys."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unplaced = []
    for key, tensor in tensors.items():
        name = key.removeprefix("vit.")
        layer = _LAYER.match(name)
        if name in _OUTSIDE_LAYERS:
            out[_OUTSIDE_LAYERS[name]] = tensor
        elif name.startswith("decoder.") and name[len("decoder."):].startswith(_DECODER):
            out[name[len("decoder."):]] = tensor
        elif layer and layer[3] in _IN_LAYER:
            prefix = f"{'decoder_blocks' if layer[1].startswith('decoder') else 'blocks'}.{layer[2]}."
            target = _IN_LAYER[layer[3]]
            if target in ("q", "k", "v"):
                qkv.setdefault((prefix, layer[4]), {})[target] = tensor
            else:
                out[f"{prefix}{target}.{layer[4]}"] = tensor
        elif not name.startswith(_NOT_PRETRAINED):
            unplaced.append(key)
    if unplaced:
        raise HFFolderError(f"{source}: {len(unplaced)} tensors have no place in an MAE "
                            f"({', '.join(unplaced[:4])}{', ...' if len(unplaced) > 4 else ''})")
    for (prefix, kind), parts in qkv.items():
        if len(parts) != 3:
            raise HFFolderError(f"{source}: layer {prefix[:-1]} has only the {'/'.join(sorted(parts))} {kind}")
        if kind == "bias" and q_v_bias:  # the exported key bias is zero: the release layout has none
            out[prefix + "attn.q_bias"], out[prefix + "attn.v_bias"] = parts["q"], parts["v"]
        else:
            out[f"{prefix}attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
