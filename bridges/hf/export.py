"""MAE checkpoint -> transformers folders: ``ViTMAEForPreTraining`` (``hf-mae``: the encoder and the
long-seq decoder) or ``ViTModel`` (``hf-vit``: the encoder, the MAE's final norm as its ``layernorm``).

transformers' own classes are built on the meta device and each of our tensors is assigned to the
parameter of the installed model that walking its modules finds (a ViT layer holds its q, k, v,
output, fc1 and fc2 Linear modules and its two LayerNorms in this order in the 4.x and 5.x layouts
alike), so the key names are the installed version's and the weights stay in the memory-mapped
source: only ``save_pretrained`` copies the q, k, v slices of each ``qkv`` tensor (safetensors takes
no tensors that share memory). It writes the safetensors weights and ``config.json`` (our provenance
under ``lsmae``); beside them go the standard ``preprocessor_config.json`` and a README.md model card.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from bridges.conversion import ConversionReport
from bridges.errors import ConversionError
from bridges.hf.support import (
    card_license,
    encoder_config,
    layer_tensors,
    package_version,
    provenance_record,
    zoo_entry_of,
)
from bridges.mae_weights import Provenance, load_mae_weights, merge_qv_bias
from pretrain.atomic import write_folder
from pretrain.models.archs import MLP_RATIO, model_config
from pretrain.optional import require
from zoo.checkpoint import CheckpointInfo, check_structure
from zoo.hf_folder import PROVENANCE_KEY
from zoo.registry import Entry

HF_CLASSES = {"hf-mae": "ViTMAEForPreTraining", "hf-vit": "ViTModel"}
# how the released checkpoints and the demo were pretrained (a checkpoint file does not record it)
PRETRAIN_MASK_RATIO = 0.75
PRETRAIN_NORM_PIX_LOSS = True
PRETRAIN_MASK_DOWNSAMPLING = 2  # 2x2-patch blocks
PAPER = ('"Exploring Long-Sequence Masked Autoencoders", Ronghang Hu, Shoubhik Debnath, Saining Xie, Xinlei Chen '
         "(2022), https://arxiv.org/abs/2210.07224")


@dataclass
class HFExport:
    """An MAE checkpoint as a transformers model and its image processor (the weights assigned, not yet
    written: :func:`save_hf` writes the folder), and what was done to the tensors."""

    model: nn.Module
    processor: Any
    target: str
    info: CheckpointInfo
    provenance: Provenance
    report: ConversionReport


# --------------------------------------------------------------------------- configs
def hf_config(transformers: Any, info: CheckpointInfo, target: str, record: dict[str, str]) -> Any:
    """The ViTMAEConfig / ViTConfig of this checkpoint, our provenance under ``lsmae``."""
    arch = model_config(info.model)
    encoder = dict(**encoder_config(info), image_size=info.img_size, qkv_bias=True, **{PROVENANCE_KEY: record})
    if target == "hf-vit":
        return transformers.ViTConfig(**encoder)
    return transformers.ViTMAEConfig(
        **encoder, decoder_hidden_size=info.decoder_embed_dim, decoder_num_hidden_layers=info.decoder_depth,
        decoder_num_attention_heads=arch["decoder_num_heads"],
        decoder_intermediate_size=info.decoder_embed_dim * MLP_RATIO, mask_ratio=PRETRAIN_MASK_RATIO,
        norm_pix_loss=PRETRAIN_NORM_PIX_LOSS)


# --------------------------------------------------------------------------- our keys -> the installed model's
def _layer_list(module: nn.Module) -> nn.ModuleList:
    """The one list of layers in an encoder (``layers`` in 5.x, ``encoder.layer`` in 4.x)."""
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if len(lists) != 1:
        raise ConversionError(f"{type(module).__name__} holds {len(lists)} lists of layers (expected one)")
    return lists[0]


def _hf_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], target: str) -> dict[str, torch.Tensor]:
    """Our tensors under the names of the parameters of ``model`` they become (views, no copies)."""
    names = {module: name for name, module in model.named_modules()}
    out: dict[str, torch.Tensor] = {}

    def put(module: nn.Module, param: str, tensor: torch.Tensor) -> None:
        out[f"{names[module]}.{param}"] = tensor

    def put_linear_or_norm(module: nn.Module, ours: str) -> None:
        put(module, "weight", sd[ours + ".weight"])
        put(module, "bias", sd[ours + ".bias"])

    def put_layers(layers: nn.ModuleList, prefix: str) -> None:
        for i, layer in enumerate(layers):
            p = f"{prefix}.{i}."
            qkv, tensors = layer_tensors(layer, sd, p)
            for module, bias in zip(qkv, sd[p + "attn.qkv.bias"].chunk(3)):
                put(module, "bias", bias)
            for module, param, tensor in tensors:
                put(module, param, tensor)

    encoder = model.vit if target == "hf-mae" else model
    embeddings = encoder.embeddings
    put(embeddings, "cls_token", sd["cls_token"])
    put(embeddings, "position_embeddings", sd["pos_embed"])
    put_linear_or_norm(embeddings.patch_embeddings.projection, "patch_embed.proj")
    put_layers(_layer_list(encoder), "blocks")
    put_linear_or_norm(encoder.layernorm, "norm")
    if target == "hf-mae":
        decoder = model.decoder
        put(decoder, "mask_token", sd["mask_token"])
        put(decoder, "decoder_pos_embed", sd["decoder_pos_embed"])
        for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
            put_linear_or_norm(getattr(decoder, name), name)
        put_layers(decoder.decoder_layers, "decoder_blocks")
    return out


# --------------------------------------------------------------------------- the model card
def model_card(export: HFExport, folder: str, entry: Entry | None, command: str) -> str:
    """README.md of the ``folder`` (its name): what the model is, the paper, how it was pretrained, its
    license, how to load and mask it."""
    info, prov = export.info, export.provenance
    arch = model_config(info.model)
    license_id, license_text = card_license(entry)
    grid, tokens = info.grid_size, info.grid_size ** 2
    downsampling = entry.mask_downsampling if entry else PRETRAIN_MASK_DOWNSAMPLING
    blocks = f"{downsampling}x{downsampling}"
    encoder = (f"the encoder (width {info.embed_dim}, {info.depth} blocks, {arch['num_heads']} heads, patch "
               f"{info.patch_size})")
    if export.target == "hf-mae":
        what = (f"transformers' `ViTMAEForPreTraining`: {encoder} and the long-sequence decoder "
                f"({info.decoder_embed_dim} wide, {arch['decoder_num_heads']} heads, {info.decoder_depth} blocks)")
        load = [
            "from transformers import ViTImageProcessor, ViTMAEForPreTraining",
            "from pretrain.models.masking import block_mask_noise  # pip install long-seq-mae",
            f'model = ViTMAEForPreTraining.from_pretrained("{folder}")',
            f'pixel_values = ViTImageProcessor.from_pretrained("{folder}")(images, return_tensors="pt").pixel_values',
            f"noise = block_mask_noise(len(pixel_values), {grid}, model.config.mask_ratio, {downsampling})",
            "loss = model(pixel_values, noise=noise).loss  # the masks lsmae uses, in transformers",
        ]
        masking = (f"`noise` decides which patches stay visible (transformers keeps the patches of smallest noise): "
                   f"`block_mask_noise` (long-seq-mae) gives the noise that keeps whole {blocks}-patch blocks, exactly "
                   "the patches `pretrain.models.masking.block_mask_indices` keeps for the same generator state, in "
                   "the same order; without it transformers masks single patches at random.")
    else:
        what = (f"transformers' `ViTModel`: {encoder}, with the MAE encoder's final norm as `layernorm`. No pooler "
                "was pretrained: load it with `add_pooling_layer=False`")
        load = [
            "from transformers import ViTImageProcessor, ViTModel",
            f'processor = ViTImageProcessor.from_pretrained("{folder}")',
            f'model = ViTModel.from_pretrained("{folder}", add_pooling_layer=False)',
            f'features = model(**processor(images, return_tensors="pt")).last_hidden_state  # 1 + {tokens} tokens',
            "features = model(pixel_values, interpolate_pos_encoding=True).last_hidden_state  # other sizes (224 px)",
        ]
        masking = ("The encoder of a masked autoencoder: fine-tune it, or probe its features; the pretrained decoder "
                   "is in the `--to hf-mae` export.")
    data = f"{prov.dataset}, {prov.epochs} epochs" if prov.dataset else "not recorded in the source file"
    return "\n".join([
        "---", f"license: {license_id}", "library_name: transformers", "tags:", "- vit_mae", "- masked-autoencoder",
        "- long-seq-mae", "---", "",
        f"# Long-sequence MAE {info.model} ({HF_CLASSES[export.target]})", "",
        f"A masked autoencoder ViT from {PAPER}, as {what}.", "",
        "## Pretraining", "",
        f"- data: {data}",
        f"- input {info.img_size}x{info.img_size} px, patch {info.patch_size}: L = {grid}x{grid} = {tokens} tokens "
        "(the long sequence: the original MAE saw 14x14 = 196)",
        f"- mask ratio {PRETRAIN_MASK_RATIO} in {blocks}-patch blocks (block masking), "
        f"{'norm-pix' if PRETRAIN_NORM_PIX_LOSS else 'pixel'} loss", "",
        "## Source and license", "",
        f"Converted by long-seq-mae {package_version()} (`{command}`) from {prov.source_url or prov.source}"
        + (f" (SHA-256 `{prov.source_sha256}`)" if prov.source_sha256 else "") + "; the tensors are the source's "
        "(config.json records this provenance under `lsmae`).", "",
        f"License of the weights: {license_text}.", "",
        "## Use", "", "```python", *load, "```", "", masking, "",
    ])


# --------------------------------------------------------------------------- export
def _hf_model(transformers: Any, info: CheckpointInfo, target: str, record: dict[str, str]) -> nn.Module:
    """transformers' model for ``target`` on the meta device: no weights allocated, ours are assigned."""
    config = hf_config(transformers, info, target, record)
    with torch.device("meta"):
        return (transformers.ViTMAEForPreTraining(config) if target == "hf-mae"
                else transformers.ViTModel(config, add_pooling_layer=False))


def to_hf(sd: dict[str, torch.Tensor], info: CheckpointInfo, target: str
          ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """An MAE state dict under the installed transformers' names for ``hf-mae`` (ViTMAEForPreTraining)
    or ``hf-vit`` (ViTModel), q/v biases with a zero key bias (views of ``sd``, no I/O)."""
    if target not in HF_CLASSES:
        raise ConversionError(f"target must be one of {', '.join(HF_CLASSES)}, got {target!r}")
    transformers = require("transformers", f"lsmae convert --to {target}")
    if target == "hf-mae" and not info.has_decoder:
        raise ConversionError("the checkpoint is encoder-only: --to hf-mae needs the decoder; export the "
                              "encoder with --to hf-vit")
    if target == "hf-mae" and (info.decoder_downsampling, info.pred_downsampling) != (1, 1):
        raise ConversionError("transformers' ViTMAE decoder has no decoder/prediction downsampling: export the "
                              "encoder with --to hf-vit")
    merged_sd, merged = merge_qv_bias(sd)
    hf_sd = _hf_state_dict(_hf_model(transformers, info, target, {}), merged_sd, target)
    dropped = sorted(k for k in merged_sd if k.startswith(("decoder", "mask_token"))) if target == "hf-vit" else []
    return hf_sd, ConversionReport(
        sorted(hf_sd), dropped, merged_k_bias=merged,
        kept_as=f"wrote {{n}} tensors as transformers {HF_CLASSES[target]} (transformers {transformers.__version__})",
        merged_as="q_bias/v_bias exported with a zero key bias in {n} blocks (layout recorded in config.json: "
                  "converting the folder back restores q_bias/v_bias)")


def convert_to_hf(source: str | Path | dict[str, torch.Tensor], target: str) -> HFExport:
    """``source`` (zoo id, local source or state dict) as transformers' model for ``hf-mae`` or ``hf-vit``
    (:func:`to_hf`, the weights assigned to the model built on the meta device) and its image processor."""
    sd, provenance = load_mae_weights(source)
    info = check_structure(sd)
    hf_sd, report = to_hf(sd, info, target)
    transformers = require("transformers", f"lsmae convert --to {target}")
    model = _hf_model(transformers, info, target, provenance_record(provenance, info))
    model.load_state_dict(hf_sd, strict=True, assign=True)
    processor = transformers.ViTImageProcessor(
        do_resize=True, size={"height": info.img_size, "width": info.img_size}, resample=3,  # PIL bicubic
        do_rescale=True, do_normalize=True, image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD))
    return HFExport(model, processor, target, info, provenance, report)


def save_hf(export: HFExport, output: str | Path) -> Path:
    """Write the folder: the model's ``save_pretrained``, the image processor and a model card."""
    output = Path(output)
    command = f"lsmae convert {export.provenance.source} --to {export.target} -o {output.name}"
    card = model_card(export, output.name, zoo_entry_of(export.provenance.source), command)

    def write(folder: Path) -> None:
        export.model.save_pretrained(folder, save_original_format=False)  # the installed version's key names
        export.processor.save_pretrained(folder)
        (folder / "README.md").write_text(card, encoding="utf-8")

    write_folder(output, write)
    return output


def export_hf(source: str | Path | dict[str, torch.Tensor], target: str, output: str | Path) -> Path:
    """Write ``source`` as a transformers folder (:func:`convert_to_hf`, then :func:`save_hf`)."""
    return save_hf(convert_to_hf(source, target), output)


@torch.no_grad()
def hf_mae_loss(folder: str | Path, images: list[str | Path], mask_downsampling: int = 2, seed: int = 0) -> float:
    """transformers' loss of an ``hf-mae`` folder on the images and block masks that ``lsmae visualize`` uses
    (same preprocessing, same blocks for the same seed, the folder's mask ratio)."""
    from pretrain.models.masking import block_mask_noise
    from pretrain.visualize import load_images

    model = require("transformers", "the hf-mae loss check").ViTMAEForPreTraining.from_pretrained(str(folder)).eval()
    pixel_values = load_images(images, model.config.image_size)
    noise = block_mask_noise(len(pixel_values), model.config.image_size // model.config.patch_size,
                             model.config.mask_ratio, mask_downsampling, generator=torch.Generator().manual_seed(seed))
    return float(model(pixel_values=pixel_values, noise=noise).loss)
