"""MAE checkpoint -> UperNet semantic segmentation on transformers' BEiT pieces (``lsmae convert --to upernet``).

The model is transformers' ``BeitForSemanticSegmentation`` (absolute position embeddings from
the checkpoint, per-layer relative position bias initialised to zero, layer scale initialised
to 1, four-scale pyramid, UperNet head, FCN auxiliary head) under a forward of ours: the stock
forward reads ``hidden_states[i - 1]`` per ``out_indices`` entry, which taps zero-based blocks
1, 3, 5, 9 for ``[3, 5, 7, 11]`` and cannot reach the last block. The model's class
(:func:`model_class`) taps the blocks in ``config.lsmae_block_taps`` (zero-based, the recipe's); it
lives in :mod:`bridges.segmentation.modeling_upernet`, which :func:`save_upernet` copies into each
folder, so that transformers' Auto classes load the folder as this model (``trust_remote_code=True``).
:func:`stock_upernet` is the model as built before its step ran without host work (the reference).

The conversion is exact: with the pretraining grid (no resampling) every block's output equals
the MAE encoder's. The MAE key bias is dropped: it adds the same ``q . b_k`` to every logit of a
query, which softmax ignores.
"""
from __future__ import annotations

import copy
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from bridges.conversion import ConversionReport
from bridges.errors import ConversionError
from bridges.hf.support import card_license, encoder_config, layer_tensors, provenance_record, zoo_entry_of
from bridges.mae_weights import (
    ENCODER_KEYS,
    Provenance,
    load_mae_weights,
    resample_pos_embed,
    split_qkv_bias,
    untrained_mae_weights,
)
from bridges.segmentation.data_spec import IGNORE_INDEX
from bridges.segmentation.recipes import ADE20K_CLASSES
from pretrain.atomic import write_folder
from pretrain.optional import require
from zoo.checkpoint import CheckpointInfo, check_structure

HEAD_DROPOUT = 0.1  # mmsegmentation's decode heads (UPerHead and FCNHead): ``dropout_ratio=0.1``


def modeling() -> ModuleType:
    """:mod:`bridges.segmentation.modeling_upernet`, imported on first use: it imports transformers, which
    importing this module does not."""
    require("transformers.models.beit.modeling_beit", "lsmae segment (UperNet)")
    return importlib.import_module("bridges.segmentation.modeling_upernet")


def model_class() -> type:
    """:class:`~bridges.segmentation.modeling_upernet.MaeUperNetForSemanticSegmentation`."""
    return modeling().MaeUperNetForSemanticSegmentation


def stock_upernet(model: nn.Module) -> nn.Module:
    """The segmentation model as lsmae built it before its step ran without host work: transformers'
    unmodified ``BeitRelativePositionBias`` in every layer (the table resampled and a host index copied
    to the device in every layer, every call), the blocks' outputs recorded by ``BeitModel.forward``
    (``output_hidden_states``) and transformers' loss on the logits in their own precision, with our taps
    and heads, on a copy of the weights of ``model`` (a plain model, not a
    ``torch.compile`` or DDP wrapper), in its dtype, device and mode. The baseline of ``lsmae bench
    segment`` and the reference of the equality tests."""
    with torch.device("meta"):
        stock = _stock_class()(copy.deepcopy(model.config))
    stock.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, assign=True)
    return stock.train(model.training)


@functools.cache
def _stock_class() -> type:
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    class StockMaeUperNetForSemanticSegmentation(model_class()):  # type: ignore[misc, valid-type]
        """:func:`stock_upernet`'s class (the name keeps the suffix transformers picks the loss by)."""

        relative_position_bias_class = BeitRelativePositionBias
        loss_dtype = None
        _auto_class = None  # a reference: its module is not a folder's code

        def block_outputs(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
            """The blocks' outputs as ``BeitModel.forward`` records them (``output_hidden_states``)."""
            return list(self.beit(pixel_values, output_hidden_states=True).hidden_states[1:])  # [0]: embeddings

    return StockMaeUperNetForSemanticSegmentation


def upernet_config(info: CheckpointInfo, img_size: int, num_labels: int, block_taps: list[int],
                   drop_path: float = 0.0, provenance: dict[str, Any] | None = None,
                   head_dropout: float = HEAD_DROPOUT) -> Any:
    """The model's config (a ``BeitConfig`` of our model type) for the MAE encoder ``info`` describes, with the
    recipe's options."""
    if len(block_taps) != 4 or not all(0 <= k < info.depth for k in block_taps):
        raise ConversionError(f"block taps {block_taps}: need 4 zero-based blocks of the {info.depth}")
    # use_mean_pooling: BEiT's switch for "no final LayerNorm"; the tapped blocks do not pass through one, and
    # a parameter without a gradient stops DDP at its second step
    return modeling().MaeUperNetConfig(
        **encoder_config(info), image_size=img_size, use_absolute_position_embeddings=True,
        use_relative_position_bias=True, layer_scale_init_value=1.0, use_mean_pooling=True,
        drop_path_rate=drop_path, out_indices=list(block_taps), pool_scales=[1, 2, 3, 6], use_auxiliary_head=True,
        auxiliary_loss_weight=0.4, auxiliary_channels=256, auxiliary_num_convs=1, auxiliary_concat_input=False,
        semantic_loss_ignore_index=IGNORE_INDEX, num_labels=num_labels, lsmae_block_taps=list(block_taps),
        lsmae_head_dropout=head_dropout,
        architectures=["MaeUperNetForSemanticSegmentation"], lsmae=provenance or {},
    )


@dataclass
class UperNetConversion:
    """A segmentation model initialised from an MAE encoder, and what the conversion did."""

    model: nn.Module
    info: CheckpointInfo
    provenance: Provenance
    report: ConversionReport


def _new_groups(keys: list[str]) -> str:
    groups = {"relative position tables" if "relative_position" in k else "layer scale" if ".lambda_" in k
              else k.split(".")[0] for k in keys}
    return ", ".join(sorted(groups)) or "nothing"


def _beit_state(model: nn.Module, encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MAE encoder's tensors under the BEiT state-dict names, read off the model's modules
    (so they follow the installed transformers). ``encoder`` has q/v biases (no key bias)."""
    names = {module: name for name, module in model.named_modules()}
    out: dict[str, torch.Tensor] = {}

    def put(module: nn.Module, param: str, value: torch.Tensor) -> None:
        out[f"{names[module]}.{param}"] = value.reshape(getattr(module, param).shape)

    emb = model.beit.embeddings
    put(emb, "cls_token", encoder["cls_token"])
    put(emb, "position_embeddings", encoder["pos_embed"])
    put(emb.patch_embeddings.projection, "weight", encoder["patch_embed.proj.weight"])
    put(emb.patch_embeddings.projection, "bias", encoder["patch_embed.proj.bias"])
    for i, layer in enumerate(model.beit.layers):
        prefix = f"blocks.{i}."
        (q, _, v), tensors = layer_tensors(layer, encoder, prefix)
        for module, param, value in tensors:
            put(module, param, value)
        put(q, "bias", encoder[prefix + "attn.q_bias"])
        put(v, "bias", encoder[prefix + "attn.v_bias"])
    return out


def to_upernet(sd: dict[str, torch.Tensor], info: CheckpointInfo, img_size: int = 512,
               num_labels: int = ADE20K_CLASSES, block_taps: list[int] | None = None
               ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The MAE encoder's tensors under the names of the UperNet model these options make, pos_embed
    resampled bicubically to the ``img_size`` grid (cls slot kept); the report's ``new`` are the
    model's tensors left to their initialisation (heads, relative position tables, layer scale).
    The model is built on the meta device, for its names only (no I/O, no weights allocated)."""
    pos_embed, resampled = resample_pos_embed(sd["pos_embed"], info, img_size)
    taps = upernet_taps(info, block_taps)
    with torch.device("meta"):
        model = model_class()(upernet_config(info, img_size, num_labels, taps))
    kept = sorted(k for k in sd if k.startswith(ENCODER_KEYS))
    state = _beit_state(model, {**split_qkv_bias({k: sd[k] for k in kept}), "pos_embed": pos_embed})
    # names and shapes checked, nothing copied (assign: into a throwaway meta model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ConversionError(f"the segmentation model does not take {unexpected[:3]}")
    new = sorted(missing)
    return state, ConversionReport(kept, sorted(set(sd) - set(kept)), new=new, resampled=resampled,
                                   notes=[f"taps after blocks {taps} (zero-based)"], kept_as="kept {n} encoder tensors",
                                   new_groups=_new_groups(new))


def upernet_taps(info: CheckpointInfo, block_taps: list[int] | None) -> list[int]:
    """``block_taps``, or the recipe's default taps for this depth."""
    from bridges.segmentation.recipes import default_taps

    return list(block_taps) if block_taps is not None else default_taps(info.depth)


def convert_to_upernet(source: str | Path | dict[str, torch.Tensor], img_size: int = 512,
                       num_labels: int = ADE20K_CLASSES, block_taps: list[int] | None = None,
                       drop_path: float = 0.0, pretrained: bool = True,
                       head_dropout: float = HEAD_DROPOUT) -> UperNetConversion:
    """An UperNet segmentation model whose backbone is the MAE encoder of ``source`` (:func:`to_upernet`,
    heads newly initialised). ``pretrained=False``: the untrained MAE of the source's architecture
    instead (a from-scratch baseline), recorded with the source's provenance."""
    sd, provenance = load_mae_weights(source) if pretrained else untrained_mae_weights(source)
    info = check_structure(sd)
    state, report = to_upernet(sd, info, img_size, num_labels, block_taps)
    record = {**provenance_record(provenance, info), "pretrain_img_size": info.img_size,
              **({} if pretrained else {"init": "untrained (from scratch)"})}
    model = model_class()(upernet_config(info, img_size, num_labels, upernet_taps(info, block_taps), drop_path, record,
                                         head_dropout))
    model.load_state_dict(state, strict=False)
    return UperNetConversion(model, info, provenance, report)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Inverse of ``nn.SyncBatchNorm.convert_sync_batchnorm``: plain BatchNorm2d for ``save_pretrained``."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        plain.load_state_dict(module.state_dict())
        return plain
    for name, child in module.named_children():
        setattr(module, name, revert_sync_batchnorm(child))
    return module


MODEL_CARD = """---
license: {license_id}
library_name: transformers
tags: [semantic-segmentation, upernet, beit, mae, long-seq-mae]
---
# {title}

UperNet semantic segmentation with a ViT backbone initialised from a long-sequence MAE checkpoint
("Exploring Long-Sequence Masked Autoencoders", Hu et al. 2022). Converted by long-seq-mae
{version} from `{source}`{sha}.

- backbone: `{arch}` pretrained at {pretrain_px}px ({pretrain_grid}x{pretrain_grid} tokens), here at {img_size}px
  (position embeddings resampled bicubically), {dataset}{epochs}
- features after blocks {taps} (zero-based), x4 / x2 / x1 / x0.5 pyramid, UperNet head (pool scales 1,2,3,6),
  FCN auxiliary head (loss weight 0.4), dropout {dropout} before both classifiers, {num_labels} classes,
  ignore index {ignore}
- heads: {state}

## Load

The model's code is in this folder (`modeling_upernet.py`, which imports only torch and transformers);
`trust_remote_code=True` lets transformers run it:

```python
from transformers import AutoModelForSemanticSegmentation, pipeline
model = AutoModelForSemanticSegmentation.from_pretrained("{folder}", trust_remote_code=True)
logits = model(pixel_values).logits        # ImageNet-normalised images, [B, {num_labels}, H/4, W/4]

segmenter = pipeline("image-segmentation", model="{folder}", trust_remote_code=True)
segments = segmenter(image)                # a PIL image: one mask per class found ("label", "mask")
```

The pipeline resizes the image to {img_size}x{img_size} (bilinear) and the logits back to the image;
`lsmae segment --eval-only {folder}` evaluates as the recipe does (sliding windows at the test scale).
With long-seq-mae installed, `bridges.segmentation.model.model_class().from_pretrained("{folder}")`
builds the same model from the package. Without `trust_remote_code=True` transformers refuses the
folder: transformers' own `BeitForSemanticSegmentation` would tap other blocks (`hidden_states[i - 1]`)
than the recipe's.

## License

The weights derive from `{source}`; {license_text}.
"""


def load_upernet(folder: str | Path) -> nn.Module:
    """A model folder of :func:`save_upernet` as the package's model, also one written before the model had a
    model type of its own (``"beit"``, no ``auto_map``, no code in the folder)."""
    config_class = modeling().MaeUperNetConfig
    values = config_class.get_config_dict(str(folder))[0]
    if "lsmae_block_taps" not in values:
        raise ConversionError(f"{folder}: a {values.get('model_type', 'transformers')} model without "
                              "lsmae_block_taps: not written by lsmae")
    values.pop("model_type", None)  # the class's own ("beit" in older folders)
    return model_class().from_pretrained(str(folder), config=config_class.from_dict(values))


def image_processor(crop_size: int) -> Any:
    """The folder's image processor, for transformers' image-segmentation pipeline: the image resized to the
    crop (bilinear, the interpolation of our data's resizes), ImageNet-normalised as our data; its
    post-processing resizes the logits to the image and takes each pixel's argmax."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers import BeitImageProcessor

    square = {"height": crop_size, "width": crop_size}
    return BeitImageProcessor(do_resize=True, size=square, resample=2,  # PIL's bilinear
                              do_center_crop=False, crop_size=square, do_rescale=True, do_normalize=True,
                              image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD))


def save_conversion(converted: UperNetConversion, folder: str | Path) -> Path:
    """The saver of ``lsmae convert --to upernet``: the converted model's folder, heads as initialised."""
    return save_upernet(converted.model, folder, "initialised here (train them with lsmae segment)")


def save_upernet(model: nn.Module, folder: str | Path, state: str) -> Path:
    """``save_pretrained`` (safetensors, the model's code and its ``auto_map``), the image processor and a
    README.md model card, written atomically (a run killed while saving ``model_best`` leaves the previous
    folder whole)."""
    folder = Path(folder)
    model = revert_sync_batchnorm(model)
    record = dict(model.config.lsmae)
    source = record.get("source", "an MAE checkpoint")
    license_id, license_text = card_license(zoo_entry_of(source))
    cfg = model.config
    pretrain_px = int(record.get("pretrain_img_size", 0))
    card = MODEL_CARD.format(
        license_id=license_id, title=f"UperNet from {source}", version=record.get("lsmae_version", ""),
        source=source, sha=f" (SHA-256 {record['source_sha256']})" if record.get("source_sha256") else "",
        arch=record.get("arch", ""), pretrain_px=pretrain_px, pretrain_grid=pretrain_px // cfg.patch_size,
        img_size=cfg.image_size, dataset=record.get("dataset", "data of its own"),
        epochs=f", {record['epochs']} epochs" if record.get("epochs") else "", taps=cfg.lsmae_block_taps,
        num_labels=cfg.num_labels, ignore=cfg.semantic_loss_ignore_index,
        dropout=getattr(cfg, "lsmae_head_dropout", 0.0), state=state, folder=folder,
        license_text=license_text)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)  # with modeling_upernet.py and the config's auto_map (the model's auto class)
        image_processor(cfg.image_size).save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    write_folder(folder, write)
    return folder
