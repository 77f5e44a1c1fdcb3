"""long-seq-mae's UperNet segmentation model on transformers' BEiT pieces, self-contained (torch and
transformers only): ``save_pretrained`` copies this file into every model folder, so that
``AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)`` builds this model
where long-seq-mae is not installed. The package uses this same module (``model_class()``).

What differs from transformers' ``BeitForSemanticSegmentation`` on the same weights and file names:

- the features are the outputs of the blocks in ``config.lsmae_block_taps`` (zero-based, the recipe's):
  the stock forward reads ``hidden_states[i - 1]``, other blocks, and cannot reach the last one; the
  blocks run in a loop of ours, without transformers' output-recording hooks;
- ``Dropout2d(config.lsmae_head_dropout)`` before both classifiers (mmsegmentation's ``cls_seg``);
- each layer's relative position bias gathers its table on the table's device with an index made
  there once per window size, and resamples the table only for another window size: the stock module
  resamples it (also to its own size) and copies a host index to the device in every layer, forward
  and backward;
- the loss upsamples the logits in float32: under bf16 autocast the stock loss upsamples bf16 logits,
  whose backward accumulates with slow bf16 atomics on GPUs.

The config has a model type of its own: a folder saying ``"beit"`` would load, without
``trust_remote_code``, as the stock model, silently tapping other blocks.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import BeitConfig
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.beit.modeling_beit import BeitForSemanticSegmentation, BeitRelativePositionBias

MODEL_TYPE = "lsmae_upernet"


class MaeUperNetConfig(BeitConfig):
    """``BeitConfig`` under long-seq-mae's model type, so that transformers' Auto classes build this
    module's model (with ``trust_remote_code=True``), never the stock BEiT one."""

    model_type = MODEL_TYPE


def relative_position_index(window_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """transformers' BEiT relative position index for ``window_size`` (``BeitRelativePositionBias.
    generate_relative_position_index``: offsets between patches, then cls to token, token to cls, cls to
    cls), flattened, made on ``device``: no host-to-device copy, and traceable by ``torch.compile``."""
    height, width = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                        indexing="ij")).flatten(1)  # 2, Wh*Ww
    offsets = coords[:, :, None] - coords[:, None, :]  # 2, Wh*Ww, Wh*Ww
    distances = (2 * height - 1) * (2 * width - 1)
    index = torch.full((height * width + 1,) * 2, distances, dtype=torch.long, device=device)  # cls to token
    index[1:, 1:] = (offsets[0] + height - 1) * (2 * width - 1) + offsets[1] + width - 1
    index[1:, 0] = distances + 1  # token to cls
    index[0, 0] = distances + 2  # cls to cls
    return index.view(-1)


@functools.lru_cache(maxsize=10)  # transformers' own bound for its host copy: a few window sizes at a time
def cached_relative_position_index(window_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """:func:`relative_position_index`, made once per window size and device (eager runs)."""
    return relative_position_index(window_size, device)


class DeviceRelativePositionBias(BeitRelativePositionBias):
    """transformers' relative position bias (same table, same result) without host work: the index
    lives on the table's device, and the table is resampled only for a window size other than the
    configured one."""

    def forward(self, window_size: tuple[int, int], interpolate_pos_encoding: bool = False,
                dim_size: int | None = None) -> torch.Tensor:
        window_size = (window_size[0], window_size[1])
        table = self.relative_position_bias_table
        if window_size != tuple(self.window_size):
            table = self.resampled_table(window_size)
        if torch.compiler.is_compiling():  # made in the graph, on the device (dynamo would trace past the cache)
            index = relative_position_index(window_size, table.device)
        else:
            index = cached_relative_position_index(window_size, table.device)
        tokens = window_size[0] * window_size[1] + 1
        bias = table[index].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()  # heads, tokens, tokens
        if interpolate_pos_encoding:
            bias = nn.functional.interpolate(bias.unsqueeze(1), size=(dim_size, dim_size), mode="bilinear",
                                             align_corners=False).squeeze(1)
        return bias.unsqueeze(0)

    def resampled_table(self, window_size: tuple[int, int]) -> torch.Tensor:
        """The table bilinearly resampled to ``window_size``'s offsets, the 3 cls entries kept, as
        transformers does it (its reshape order included)."""
        old_height, old_width = 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1
        new_height, new_width = 2 * window_size[0] - 1, 2 * window_size[1] - 1
        table = self.relative_position_bias_table
        offsets = table[: self.num_relative_distance - 3].reshape(1, old_width, old_height, -1).permute(0, 3, 1, 2)
        offsets = nn.functional.interpolate(offsets, size=(new_height, new_width), mode="bilinear")
        return torch.cat([offsets.permute(0, 2, 3, 1).reshape(new_height * new_width, -1),
                          table[self.num_relative_distance - 3:]])


class DropoutConv2d(nn.Conv2d):
    """A classifier convolution with ``Dropout2d`` before it, as mmsegmentation's ``cls_seg``. A Conv2d
    subclass, so the weights keep transformers' names (``classifier.weight/bias``)."""

    def __init__(self, conv: nn.Conv2d, p: float) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, device="meta")
        self.weight, self.bias = conv.weight, conv.bias  # the initialised parameters, not new ones
        self.dropout = nn.Dropout2d(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(x))


class MaeUperNetForSemanticSegmentation(BeitForSemanticSegmentation):
    """BEiT UperNet that taps the blocks in ``config.lsmae_block_taps`` (zero-based). The class name
    ends like transformers' own: it picks the semantic-segmentation loss by that suffix. The stock
    reference (``bridges.segmentation.model.stock_upernet``) changes the two class settings and
    :meth:`block_outputs`."""

    config_class = MaeUperNetConfig
    relative_position_bias_class: type[nn.Module] = DeviceRelativePositionBias
    loss_dtype: torch.dtype | None = torch.float32  # None: the logits' own precision

    def __init__(self, config: MaeUperNetConfig) -> None:
        super().__init__(config)
        for layer in self.beit.layers:
            layer.relative_position_bias = self.relative_position_bias_class(config)
        p = getattr(config, "lsmae_head_dropout", 0.0)  # folders written before it was a setting: none
        for head in (self.decode_head, self.auxiliary_head):
            if head is not None and p > 0:
                head.classifier = DropoutConv2d(head.classifier, p)

    def block_outputs(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output [B, 1 + tokens, C], up to the last tapped block. The blocks run here, not in
        ``BeitModel.forward``: its ``output_hidden_states`` records them with hooks installed on the first
        call, which split a model compiled before that call into several graphs for good."""
        hidden = self.beit.embeddings(pixel_values)
        outputs = []
        for layer in self.beit.layers[: max(self.config.lsmae_block_taps) + 1]:
            hidden = layer(hidden, resolution=pixel_values.shape[2:])
            outputs.append(hidden)
        return outputs

    def block_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tapped blocks' outputs as [B, C, H/p, W/p] maps (cls token dropped)."""
        outputs = self.block_outputs(pixel_values)
        b, _, h, w = pixel_values.shape
        p = self.config.patch_size
        return tuple(outputs[k][:, 1:].transpose(1, 2).reshape(b, -1, h // p, w // p)
                     for k in self.config.lsmae_block_taps)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,  # type: ignore[override]
                **kwargs: Any) -> SemanticSegmenterOutput:
        features = self.fpn(self.block_features(pixel_values))
        logits = self.decode_head(features)
        auxiliary = self.auxiliary_head(features) if self.auxiliary_head is not None else None
        loss = None if labels is None else self.segmentation_loss(logits, auxiliary, labels)
        return SemanticSegmenterOutput(loss=loss, logits=logits)

    def segmentation_loss(self, logits: torch.Tensor, auxiliary: torch.Tensor | None,
                          labels: torch.Tensor) -> torch.Tensor:
        """transformers' loss (logits upsampled bilinearly to the labels, cross-entropy, the auxiliary
        head's weighted) on the logits in ``loss_dtype``."""
        if self.loss_dtype is not None:
            logits = logits.to(self.loss_dtype)
            auxiliary = None if auxiliary is None else auxiliary.to(self.loss_dtype)
        return self.loss_function(logits, labels, ignore_index=self.config.semantic_loss_ignore_index,
                                  auxiliary_logits=auxiliary, auxiliary_loss_weight=self.config.auxiliary_loss_weight)


MaeUperNetConfig.register_for_auto_class()
MaeUperNetForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
