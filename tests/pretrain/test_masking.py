"""Block masking (``pretrain.block_mask_indices``) against the release loader's contract."""
from __future__ import annotations

import pytest
import torch

from pretrain import block_mask_indices
from pretrain.models.masking import block_mask_noise, host_block_masks


def _shuffle_from_restore(ids_restore: torch.Tensor) -> torch.Tensor:
    return torch.argsort(ids_restore, dim=1)


def _block_id(patch: torch.Tensor, grid: int, k: int) -> torch.Tensor:
    """Index of the k x k mask block (row-major over the block grid) holding each patch."""
    blocks_per_side = -(-grid // k)
    return (patch // grid // k) * blocks_per_side + (patch % grid) // k


def _block_members(grid: int, k: int) -> dict[int, set[int]]:
    members: dict[int, set[int]] = {}
    for patch in range(grid * grid):
        members.setdefault(int(_block_id(torch.tensor(patch), grid, k)), set()).add(patch)
    return members


@pytest.mark.parametrize(
    "batch, grid, ratio, ds, n_visible",
    [(3, 28, 0.75, 2, 196), (2, 28, 0.75, 1, 196), (4, 14, 0.5, 2, 98), (2, 7, 0.75, 2, 12), (1, 8, 0.0, 2, 64)],
)
def test_shapes_and_dtypes(batch, grid, ratio, ds, n_visible):
    ids_keep, ids_restore = block_mask_indices(batch, grid, ratio, ds, generator=torch.Generator().manual_seed(0))
    assert n_visible == int(grid * grid * (1 - ratio))
    assert ids_keep.shape == (batch, n_visible)
    assert ids_restore.shape == (batch, grid * grid)
    assert ids_keep.dtype == ids_restore.dtype == torch.long


@pytest.mark.parametrize("grid, ds", [(28, 2), (28, 1), (7, 2), (9, 3), (5, 4)])
def test_restore_is_inverse_permutation_and_unshuffles(grid, ds):
    batch, ratio = 4, 0.75
    num = grid * grid
    ids_keep, ids_restore = block_mask_indices(batch, grid, ratio, ds, generator=torch.Generator().manual_seed(1))
    arange = torch.arange(num).expand(batch, -1)
    # every row of ids_restore is a permutation of 0..L-1
    assert torch.equal(torch.sort(ids_restore, dim=1).values, arange)
    ids_shuffle = _shuffle_from_restore(ids_restore)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), arange)
    assert torch.equal(torch.gather(ids_restore, 1, ids_shuffle), arange)
    # ids_keep is the visible prefix of the shuffle order
    assert torch.equal(ids_keep, ids_shuffle[:, : ids_keep.shape[1]])
    # visible patches are distinct and in range
    assert all(len(set(row.tolist())) == ids_keep.shape[1] for row in ids_keep)
    assert int(ids_keep.min()) >= 0 and int(ids_keep.max()) < num

    # The decoder's unshuffle: cat(visible tokens, mask tokens) gathered by ids_restore puts
    # each visible token back at its ids_keep position, and only mask tokens elsewhere.
    n_vis = ids_keep.shape[1]
    visible_tokens = ids_keep.float()  # token value = the patch it came from
    mask_tokens = torch.full((batch, num - n_vis), -1.0)
    unshuffled = torch.gather(torch.cat([visible_tokens, mask_tokens], dim=1), 1, ids_restore)
    expected = torch.full((batch, num), -1.0)
    expected.scatter_(1, ids_keep, ids_keep.float())
    assert torch.equal(unshuffled, expected)


def test_grid28_ds2_visible_set_is_union_of_complete_blocks():
    grid, k = 28, 2
    members = _block_members(grid, k)
    ids_keep, ids_restore = block_mask_indices(16, grid, 0.75, k, generator=torch.Generator().manual_seed(2))
    assert ids_keep.shape[1] == 196  # 49 whole blocks of 4
    for row in ids_keep.tolist():
        visible = set(row)
        for patch in visible:
            block = members[int(_block_id(torch.tensor(patch), grid, k))]
            assert len(block) == 4
            assert block <= visible, f"patch {patch} visible but its block-mates {block - visible} are not"
    # the masked set is then a union of complete blocks too
    masked = set(range(grid * grid)) - set(ids_keep[0].tolist())
    assert len(masked) == 588
    assert all(members[int(_block_id(torch.tensor(p), grid, k))] <= masked for p in masked)


def test_ds1_is_not_block_structured():
    """With ds=1 patches are masked independently: some visible patch has a masked 2x2 block-mate."""
    grid = 28
    members = _block_members(grid, 2)
    ids_keep, _ = block_mask_indices(4, grid, 0.75, 1, generator=torch.Generator().manual_seed(3))
    broken = 0
    for row in ids_keep.tolist():
        visible = set(row)
        broken += sum(not members[int(_block_id(torch.tensor(p), grid, 2))] <= visible for p in visible)
    assert broken > 0


@pytest.mark.parametrize("grid, ds, ratio", [(7, 2, 0.75), (7, 2, 0.6), (13, 4, 0.8), (28, 2, 0.7)])
def test_at_most_one_block_is_partially_visible(grid, ds, ratio):
    """Blocks are kept whole, in a random order; only the block at the visible/masked cut may split."""
    members = _block_members(grid, ds)
    ids_keep, _ = block_mask_indices(8, grid, ratio, ds, generator=torch.Generator().manual_seed(4))
    for row in ids_keep.tolist():
        visible = set(row)
        touched = {int(_block_id(torch.tensor(p), grid, ds)) for p in visible}
        partial = [b for b in touched if not members[b] <= visible]
        assert len(partial) <= 1


def test_non_divisible_grid():
    grid, ds, ratio, batch = 7, 2, 0.75, 32
    ids_keep, ids_restore = block_mask_indices(batch, grid, ratio, ds, generator=torch.Generator().manual_seed(5))
    assert ids_keep.shape == (batch, int(49 * (1 - ratio))) == (batch, 12)
    assert ids_restore.shape == (batch, 49)
    assert int(ids_keep.min()) >= 0 and int(ids_keep.max()) <= 48
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(49).expand(batch, -1))
    # the overhanging blocks (right column, bottom row, corner) are sampled too
    seen = set(ids_keep.flatten().tolist())
    assert {6, 13, 42, 48} <= seen


def test_within_block_order_is_column_major_as_in_release():
    """The release loader lists a block's patches (dy, dx) = (0,0), (1,0), (0,1), (1,1); with two
    visible patches on a 4x4 grid they are the two left patches of one block (vertical pair)."""
    grid = 4
    ids_keep, _ = block_mask_indices(64, grid, 0.875, 2, generator=torch.Generator().manual_seed(6))
    assert ids_keep.shape == (64, 2)
    top_left = ids_keep[:, 0]
    assert torch.all((top_left // grid) % 2 == 0) and torch.all((top_left % grid) % 2 == 0)
    assert torch.equal(ids_keep[:, 1], top_left + grid)


def test_determinism_and_variation():
    def sample(seed, batch=4):
        return block_mask_indices(batch, 28, 0.75, 2, generator=torch.Generator().manual_seed(seed))

    a_keep, a_restore = sample(7)
    b_keep, b_restore = sample(7)
    assert torch.equal(a_keep, b_keep) and torch.equal(a_restore, b_restore)
    c_keep, c_restore = sample(8)
    assert not torch.equal(a_keep, c_keep)
    assert not torch.equal(a_restore, c_restore)
    # rows within a batch are sampled independently
    sets = [frozenset(row.tolist()) for row in a_keep]
    assert len(set(sets)) == len(sets)
    # the global RNG drives sampling when no generator is given
    torch.manual_seed(11)
    d = block_mask_indices(2, 28, 0.75, 2)
    torch.manual_seed(11)
    e = block_mask_indices(2, 28, 0.75, 2)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


@pytest.mark.parametrize("grid, ds, ratio", [(8, 2, 0.75), (8, 1, 0.75), (12, 3, 0.5)])
def test_every_patch_visible_with_frequency_near_one_minus_ratio(grid, ds, ratio):
    n = 4000
    ids_keep, _ = block_mask_indices(n, grid, ratio, ds, generator=torch.Generator().manual_seed(9))
    counts = torch.bincount(ids_keep.flatten(), minlength=grid * grid).float() / n
    expected = int(grid * grid * (1 - ratio)) / (grid * grid)
    assert torch.all((counts - expected).abs() < 0.05), counts


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_mask_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        block_mask_indices(2, 8, ratio, 2)


@pytest.mark.parametrize("ds", [0, -2])
def test_invalid_downsampling(ds):
    with pytest.raises(ValueError, match="downsampling"):
        block_mask_indices(2, 8, 0.75, ds)


@pytest.mark.parametrize("grid, ds, ratio", [(28, 2, 0.75), (8, 2, 0.75), (7, 2, 0.6), (12, 3, 0.5)])
def test_vitmae_keeps_the_block_mask_with_block_mask_noise(grid, ds, ratio):
    """transformers' ViTMAE masking, given ``block_mask_noise``, keeps exactly ``block_mask_indices``'s
    patches in the same order and restores them with the same ``ids_restore`` (same generator state)."""
    modeling = pytest.importorskip("transformers.models.vit_mae.modeling_vit_mae")
    config = modeling.ViTMAEConfig(hidden_size=8, num_attention_heads=2, image_size=grid * 4, patch_size=4,
                                   mask_ratio=ratio)
    ids_keep, ids_restore = block_mask_indices(5, grid, ratio, ds, generator=torch.Generator().manual_seed(12))
    noise = block_mask_noise(5, grid, ratio, ds, generator=torch.Generator().manual_seed(12))
    assert noise.shape == (5, grid * grid) and noise.dtype == torch.float32 and 0 <= noise.min() <= noise.max() < 1
    tokens = torch.arange(grid * grid, dtype=torch.float32).expand(5, -1).unsqueeze(-1)  # token value = its patch
    kept, mask, hf_restore = modeling.ViTMAEEmbeddings(config).random_masking(tokens, noise)
    assert torch.equal(kept.squeeze(-1).long(), ids_keep)
    assert torch.equal(hf_restore, ids_restore)
    expected_mask = torch.ones(5, grid * grid).scatter_(1, ids_keep, 0.0)
    assert torch.equal(mask, expected_mask)


def _release_block_mask(batch, grid, ratio, k, generator):
    """The earlier implementation (boolean-mask indexing: a host sync per call on a GPU)."""
    from pretrain.models.masking import _block_patch_table

    table = _block_patch_table(grid, k, None)
    order = torch.argsort(torch.rand(batch, table.shape[0], generator=generator), dim=1)
    ids_shuffle = table[order].reshape(batch, -1)
    ids_shuffle = ids_shuffle[ids_shuffle >= 0].reshape(batch, grid * grid)
    return ids_shuffle[:, : int(grid * grid * (1 - ratio))], torch.argsort(ids_shuffle, dim=1)


@pytest.mark.parametrize("grid, ds, ratio", [(28, 2, 0.75), (7, 2, 0.75), (9, 4, 0.6), (13, 3, 0.8), (5, 4, 0.5)])
def test_fixed_size_gather_gives_the_same_masks_as_boolean_indexing(grid, ds, ratio):
    for seed in range(5):
        keep, restore = block_mask_indices(6, grid, ratio, ds, generator=torch.Generator().manual_seed(seed))
        ref_keep, ref_restore = _release_block_mask(6, grid, ratio, ds, torch.Generator().manual_seed(seed))
        assert torch.equal(keep, ref_keep) and torch.equal(restore, ref_restore)


def test_host_masks_of_a_global_batch_do_not_depend_on_the_number_of_hosts():
    """On XLA every host draws the global batch's masks and keeps its rows: split over 1, 2 or 4
    hosts, the rows put back together are the same masks, drawn from the seed alone."""
    whole = host_block_masks(8, 1, 0, 28, 0.75, 2, seed=5)
    for hosts in (2, 4):
        parts = [host_block_masks(8 // hosts, hosts, i, 28, 0.75, 2, seed=5) for i in range(hosts)]
        for got, want in zip(map(torch.cat, zip(*parts)), whole):
            assert torch.equal(got, want)
    assert torch.equal(whole[0], block_mask_indices(8, 28, 0.75, 2, torch.Generator().manual_seed(5))[0])
    assert not torch.equal(whole[0], host_block_masks(8, 1, 0, 28, 0.75, 2, seed=6)[0])
