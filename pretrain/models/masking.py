"""Block masking decoupled from the patch size: k x k patches are masked or kept together."""
from __future__ import annotations

import functools

import torch


@functools.cache
def _block_patch_table(grid_size: int, downsampling: int, device: torch.device | None) -> torch.Tensor:
    """[n_blocks, k*k] patch indices of each mask block, -1 where a block overhangs the grid; built
    once per device (not copied to it at every step)."""
    k = downsampling
    blocks_per_side = -(-grid_size // k)
    rows = torch.arange(blocks_per_side).repeat_interleave(blocks_per_side)
    cols = torch.arange(blocks_per_side).repeat(blocks_per_side)
    # within a block the release lists patches column by column: (0,0), (1,0), (0,1), (1,1)
    dr, dc = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="xy")
    r = rows[:, None] * k + dr.reshape(1, -1)
    c = cols[:, None] * k + dc.reshape(1, -1)
    table = r * grid_size + c
    return torch.where((r < grid_size) & (c < grid_size), table, torch.full_like(table, -1)).to(device)


def block_mask_indices(
    batch_size: int,
    grid_size: int,
    mask_ratio: float,
    downsampling: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``(ids_keep [B, n_visible], ids_restore [B, L])`` as the release's loader does.

    Each image's mask blocks are randomly permuted and expanded to their patches (patches of
    blocks overhanging a non-divisible grid are dropped); the first ``int(L * (1 - mask_ratio))``
    patches of that order are visible, and ``ids_restore`` is the inverse permutation. Sampling
    runs batched on ``device`` (the generator must live there too), in tensors of fixed sizes: no
    step waits for the device.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if downsampling < 1 or grid_size < 1:
        raise ValueError(f"grid_size and downsampling must be >= 1, got {grid_size} and {downsampling}")
    num_patches = grid_size * grid_size
    device = None if device is None else torch.device(device)
    table = _block_patch_table(grid_size, downsampling, device)
    noise = torch.rand(batch_size, table.shape[0], generator=generator, device=device)
    order = torch.argsort(noise, dim=1)
    ids_shuffle = table[order].reshape(batch_size, -1)
    if grid_size % downsampling:  # drop the overhang's -1s: every row has as many, keep the order
        in_grid_first = torch.argsort((ids_shuffle < 0).to(torch.uint8), dim=1, stable=True)
        ids_shuffle = torch.gather(ids_shuffle, 1, in_grid_first[:, :num_patches])
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    n_visible = int(num_patches * (1 - mask_ratio))
    return ids_shuffle[:, :n_visible].contiguous(), ids_restore


def block_mask_noise(
    batch_size: int,
    grid_size: int,
    mask_ratio: float,
    downsampling: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``noise`` [B, L] with which transformers' ViTMAE masks as :func:`block_mask_indices` does.

    ViTMAE orders the patches by ascending noise and keeps the first ``int(L * (1 - mask_ratio))``;
    giving each patch its rank in our shuffle order (scaled to [0, 1)) makes it keep exactly the
    patches ``block_mask_indices`` keeps for the same generator state, in the same order. Pass the
    same ``mask_ratio`` as the model's ``config.mask_ratio``.
    """
    _, ids_restore = block_mask_indices(batch_size, grid_size, mask_ratio, downsampling, generator, device)
    return ids_restore.to(torch.float32) / ids_restore.shape[1]


def host_block_masks(
    rows: int,
    processes: int,
    process_index: int,
    grid_size: int,
    mask_ratio: float,
    downsampling: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One process's rows of a global batch's masks, drawn on the host from ``seed`` alone.

    Every process draws the masks of all ``rows x processes`` images and keeps its own ``rows``
    (process ``i`` holds global rows ``i * rows`` on), so the masks of an image depend on its place
    in the global batch and on ``seed``, not on how many hosts or devices share the batch.
    """
    generator = torch.Generator().manual_seed(seed)
    ids_keep, ids_restore = block_mask_indices(rows * processes, grid_size, mask_ratio, downsampling, generator)
    mine = slice(process_index * rows, (process_index + 1) * rows)
    return ids_keep[mine], ids_restore[mine]
