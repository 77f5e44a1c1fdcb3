"""FLOPs of the UperNet segmentation model (:mod:`bridges.segmentation.model`), counted from its config
(2 FLOPs per multiply-add; training = 3 x forward), for the segmentation bench's TFLOP/s and MFU.

Counted: the ViT on all its tokens (the cls token included), attention products included; the neck
(two 2x2 stride-2 transposed convolutions to 4x the grid, one to 2x; the identity; a max-pool to 1/2);
the UperNet head (the pyramid pooling's 1x1 convolutions and its 3x3 bottleneck, the 1x1 laterals, the 3x3
FPN convolutions and the 3x3 ``fpn_bottleneck`` on the four levels concatenated, at 4x the grid; the
classifier) and the FCN auxiliary head (its 3x3 convolutions on the grid, the classifier). Not counted:
the relative position bias (an addition to the attention logits), normalisations, activations,
pooling, the bilinear resizes in the head and in the loss, the loss itself, convolution biases.
Standard library only.
"""
from __future__ import annotations

from typing import Any

from pretrain.models.flops import ModelFlops, vit_parts


def _conv(c_in: int, c_out: int, side: int, kernel: int = 1) -> float:
    """A ``kernel`` x ``kernel`` convolution (or a transposed one, per output pixel) to a ``side`` x ``side`` map."""
    return 2 * kernel * kernel * c_in * c_out * side * side


def upernet_flops(config: Any) -> ModelFlops:
    """FLOPs of one image through the model ``config`` (a ``BeitConfig`` of :func:`upernet_config`) describes."""
    width, grid = config.hidden_size, config.image_size // config.patch_size
    channels, labels = config.hidden_size, config.num_labels  # transformers' UperHead: as wide as the ViT
    parts, attention, patch_embed = vit_parts(grid * grid + 1, width, config.num_hidden_layers, config.patch_size,
                                              config.num_channels, config.intermediate_size / width)
    sides = (4 * grid, 2 * grid, grid, grid // 2)  # the pyramid's levels
    neck = _conv(width, width, 2 * grid) + _conv(width, width, 4 * grid) + _conv(width, width, 2 * grid)
    scales = config.pool_scales
    head = (sum(_conv(width, channels, s) for s in scales)  # pyramid pooling, 1x1 at each pooled size
            + _conv(width + len(scales) * channels, channels, sides[3], 3)  # its bottleneck
            + sum(_conv(width, channels, s) + _conv(channels, channels, s, 3) for s in sides[:3])  # laterals, FPN
            + _conv(len(sides) * channels, channels, sides[0], 3)  # fpn_bottleneck
            + _conv(channels, labels, sides[0]))
    parts = (*parts, ("neck", neck), ("UperNet head", head))
    if config.use_auxiliary_head:  # FCN on the grid-sized level
        aux = config.auxiliary_channels
        fcn = sum(_conv(width if k == 0 else aux, aux, grid, 3) for k in range(config.auxiliary_num_convs))
        if config.auxiliary_concat_input:
            fcn += _conv(width + aux, aux, grid, 3)
        parts = (*parts, ("FCN head", fcn + _conv(aux, labels, grid)))
    return ModelFlops(parts=parts, attention=attention, patch_embed=patch_embed)
