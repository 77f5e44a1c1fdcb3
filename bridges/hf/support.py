"""What the transformers bridges (Hugging Face export, UperNet segmentation) share: whether
transformers is installed, the encoder's config entries, where an MAE block's tensors go in a
transformers ViT/BEiT layer, the provenance record with this package's version, the source's
license for model cards."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bridges.errors import ConversionError
from bridges.mae_weights import Provenance
from pretrain.errors import LsmaeError
from pretrain.models.archs import MLP_RATIO, model_config
from zoo.checkpoint import CheckpointInfo
from zoo.registry import Entry, license_url, resolve_source

LAYER_NORM_EPS = 1e-6  # the MAE's (transformers' default is 1e-12)


def package_version() -> str:
    """long-seq-mae's installed version ("unknown" in a bare source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("long-seq-mae")
    except PackageNotFoundError:
        return "unknown"


def zoo_entry_of(source: str) -> Entry | None:
    """The zoo entry a source names; None for a local path, an in-memory state dict or another name."""
    try:
        return resolve_source(source).entry
    except LsmaeError:
        return None


def card_license(entry: Entry | None) -> tuple[str, str]:
    """(model card metadata id, sentence) of the source weights' license."""
    if entry is None:
        return "other", ("the license of the source file applies (the released long-seq MAE weights are "
                         "CC-BY-NC 4.0: non-commercial use)")
    return entry.license.lower(), f"{entry.license} ({license_url(entry.license)})" + (
        ": non-commercial use" if "NC" in entry.license else "")


def encoder_config(info: CheckpointInfo) -> dict[str, Any]:
    """The config entries (ViTConfig, BeitConfig) of the MAE encoder ``info`` describes."""
    return dict(hidden_size=info.embed_dim, num_hidden_layers=info.depth,
                num_attention_heads=model_config(info.model)["num_heads"], intermediate_size=info.embed_dim * MLP_RATIO,
                hidden_act="gelu", patch_size=info.patch_size, num_channels=info.in_chans,
                layer_norm_eps=LAYER_NORM_EPS)


def provenance_record(provenance: Provenance, info: CheckpointInfo) -> dict[str, Any]:
    """What a transformers folder records of its source (``config.lsmae``); the attention layout
    lets ``zoo.hf_folder`` restore q_bias/v_bias when the folder is read back."""
    return {**provenance.as_strings(), "arch": info.model, "attention": info.k_bias,
            "lsmae_version": package_version()}


def layer_tensors(layer: nn.Module, sd: dict[str, torch.Tensor], prefix: str
                  ) -> tuple[list[nn.Module], list[tuple[nn.Module, str, torch.Tensor]]]:
    """Where the MAE block ``prefix`` (``blocks.3.``) goes in a transformers ViT or BEiT layer, found
    by the layer's modules (six Linear: q, k, v, out, fc1, fc2; two LayerNorm: before and after
    attention), so that it follows the installed version: the q, k and v modules, and
    ``(module, parameter, tensor)`` of everything but their biases, whose layout differs (a
    ``qkv.bias`` for ViT, ``q_bias``/``v_bias`` for BEiT)."""
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in layer.modules() if isinstance(m, nn.LayerNorm)]
    if len(linears) != 6 or len(norms) != 2:
        import transformers

        raise ConversionError(f"transformers {transformers.__version__} builds a {type(layer).__name__} of "
                              f"{len(linears)} Linear and {len(norms)} LayerNorm modules (expected 6 and 2): this "
                              "transformers version is not supported")
    qkv = sd[prefix + "attn.qkv.weight"].chunk(3)
    tensors = [(module, "weight", weight) for module, weight in zip(linears[:3], qkv)]
    for module, ours in zip(linears[3:] + norms, ("attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")):
        tensors += [(module, "weight", sd[f"{prefix}{ours}.weight"]), (module, "bias", sd[f"{prefix}{ours}.bias"])]
    return linears[:3], tensors
