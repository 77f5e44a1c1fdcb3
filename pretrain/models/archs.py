"""The long-seq MAE architectures as data: one table of variants, names, aliases and sizes.

Standard library only: ``lsmae list`` and argument parsers read it without importing torch;
:mod:`pretrain.models.mae` builds the modules from it.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from pretrain.errors import UnknownModelError

# width, depth, heads
ENCODERS: dict[str, tuple[int, int, int]] = {
    "micro": (96, 4, 3),  # tests and the embedded demo checkpoint
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
# name suffix -> decoder width, depth, heads ("dec384d12h8b" = 384 wide, 12 heads, 8 blocks)
DECODERS: dict[str, tuple[int, int, int]] = {
    "dec64d4h2b": (64, 2, 4),
    "dec384d12h8b": (384, 8, 12),
    "dec512d16h8b": (512, 8, 16),
    "dec512d8b": (512, 8, 16),  # the original MAE decoder
}
# encoder, patch sizes, decoder, default image size
_FAMILY: list[tuple[str, tuple[int, ...], str, int]] = [
    ("micro", (8,), "dec64d4h2b", 64),
    ("base", (4, 8, 16, 24, 32, 64), "dec384d12h8b", 224),
    ("large", (4, 8, 16, 24, 32, 64), "dec512d16h8b", 224),
    ("base", (16,), "dec512d8b", 224),
    ("large", (16,), "dec512d8b", 224),
    ("huge", (14,), "dec512d8b", 224),
]
ALIASES: dict[str, str] = {
    "mae_vit_base_patch16": "mae_vit_base_patch16_dec512d8b",
    "mae_vit_large_patch16": "mae_vit_large_patch16_dec512d8b",
    "mae_vit_huge_patch14": "mae_vit_huge_patch14_dec512d8b",
}
MLP_RATIO = 4


def _architectures() -> dict[str, dict[str, Any]]:
    table = {}
    for encoder, patch_sizes, decoder, img_size in _FAMILY:
        width, depth, heads = ENCODERS[encoder]
        dec_width, dec_depth, dec_heads = DECODERS[decoder]
        for patch in patch_sizes:
            table[f"mae_vit_{encoder}_patch{patch}_{decoder}"] = dict(
                img_size=img_size, patch_size=patch,
                embed_dim=width, depth=depth, num_heads=heads,
                decoder_embed_dim=dec_width, decoder_depth=dec_depth, decoder_num_heads=dec_heads,
            )
    return table


ARCHITECTURES: dict[str, dict[str, Any]] = _architectures()


def resolve_model_name(name: str) -> str:
    """Canonical architecture name for ``name`` (which may be an alias)."""
    name = ALIASES.get(name, name)
    if name not in ARCHITECTURES:
        raise UnknownModelError(
            f"unknown model {name!r}; known: {', '.join(list_models())} (aliases: {', '.join(ALIASES)})"
        )
    return name


def list_models(pattern: str = "*") -> list[str]:
    """Names of the defined architectures matching a shell-style ``pattern``."""
    return sorted(n for n in ARCHITECTURES if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> dict[str, Any]:
    """The constructor arguments of architecture ``name``."""
    return dict(ARCHITECTURES[resolve_model_name(name)])


def _blocks_numel(width: int, depth: int) -> int:
    hidden = MLP_RATIO * width
    per_block = (2 * 2 * width              # two LayerNorms
                 + 3 * width * width + 3 * width  # qkv with bias (q/v-bias blocks hold as many values minus k)
                 + width * width + width    # output projection
                 + width * hidden + hidden + hidden * width + width)  # MLP
    return depth * per_block


def num_weights(name: str, img_size: int | None = None, in_chans: int = 3) -> int:
    """Values in the state dict of ``create_model(name, img_size=...)`` (encoder and decoder, the
    fixed position embeddings included): the size of a release file, counted without building it."""
    cfg = model_config(name)
    d, p, dd = cfg["embed_dim"], cfg["patch_size"], cfg["decoder_embed_dim"]
    tokens = ((img_size or cfg["img_size"]) // p) ** 2 + 1
    encoder = (p * p * in_chans * d + d  # patch embedding
               + d + tokens * d            # cls token, pos_embed
               + _blocks_numel(d, cfg["depth"]) + 2 * d)  # blocks, final norm
    decoder = (d * dd + dd + dd + tokens * dd  # decoder_embed, mask_token, decoder_pos_embed
               + _blocks_numel(dd, cfg["decoder_depth"]) + 2 * dd
               + dd * p * p * in_chans + p * p * in_chans)  # decoder_norm, decoder_pred
    return encoder + decoder
