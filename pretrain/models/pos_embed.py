"""Fixed 2D sine-cosine position embeddings, laid out exactly as the MAE release stores them."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1).to(torch.float64) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Return [grid_size**2 (+1), dim] float32 embeddings; the cls slot (first row) is zero.

    The first half of each vector encodes the column, the second half the row, and
    rows are enumerated row-major: the order of the released checkpoints' ``pos_embed``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def grid_size_of(pos_embed_shape: Sequence[int], prefix_tokens: int = 1) -> int:
    """The side of the square grid a ``[1, prefix + g*g, D]`` position table is laid out for."""
    tokens = pos_embed_shape[-2] - prefix_tokens
    side = math.isqrt(max(tokens, 0))
    if side * side != tokens:
        raise ValueError(f"a position table of {pos_embed_shape[-2]} tokens is no square grid plus "
                         f"{prefix_tokens} prefix token(s)")
    return side
