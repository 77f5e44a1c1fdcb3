"""Semantic segmentation recipes as data (UperNet on ADE20K), and the plan a run resolves to.

Standard library only: ``lsmae segment --dry-run`` prints a plan without importing torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from pretrain.errors import LsmaeError

from bridges.batch_scaling import scale_iterations

ADE20K_CLASSES = 150  # SceneParse150


@dataclass(frozen=True)
class SegRecipe:
    """One fine-tuning recipe; iterations count optimizer steps of ``batch_size`` images in all."""

    name: str
    source: str  # where the numbers come from
    lr: float
    layer_decay: float
    drop_path: float
    out_indices: tuple[int, ...]  # zero-based blocks whose outputs feed the pyramid
    batch_size: int = 16
    max_iter: int = 160_000
    warmup_iters: int = 1500  # linear from lr * warmup_ratio, then poly decay
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)  # (long, short) sides before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    eval_stride: int = 341
    eval_period: int = 16_000
    checkpoint_period: int = 16_000
    num_labels: int = ADE20K_CLASSES
    aug_test_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


RECIPES: dict[str, SegRecipe] = {r.name: r for r in (
    SegRecipe("upernet_vit_b_ade20k_160k",
              "long_seq_mae#1, first author: ViT-B as BEiT/ConvNeXt ADE20K, 160k iterations, batch 16, lr 8e-5, "
              "layer decay 0.8, drop path 0.1, 512x512; the rest from BEiT's UperNet ADE20K 512 config",
              lr=8e-5, layer_decay=0.8, drop_path=0.1, out_indices=(3, 5, 7, 11)),
    SegRecipe("upernet_vit_l_ade20k_160k",
              "BEiT (microsoft/unilm beit/semantic_segmentation/configs/beit/upernet/"
              "upernet_beit_large_24_512_slide_160k_ade20k.py): lr 2e-5, layer decay 0.95, drop path 0.2, "
              "batch 8x2, 1500 warmup iterations, poly 1.0",
              lr=2e-5, layer_decay=0.95, drop_path=0.2, out_indices=(7, 11, 15, 23)),
    SegRecipe("demo", "lsmae demo: the embedded micro checkpoint (4 blocks) on a generated 64 px set",
              lr=2e-3, layer_decay=0.8, drop_path=0.0, out_indices=(0, 1, 2, 3), batch_size=8, max_iter=120,
              warmup_iters=10, crop_size=64, scale=(128, 64), eval_stride=43, eval_period=60, checkpoint_period=60,
              num_labels=4, aug_test_scales=(0.75, 1.0, 1.25)),
)}


def default_taps(depth: int) -> list[int]:
    """The recipe's taps for a depth: after a third, a half, two thirds and all of the blocks
    (3,5,7,11 for 12 blocks; 7,11,15,23 for 24; 0,1,2,3 for 4)."""
    return [round(depth * f) - 1 for f in (1 / 3, 1 / 2, 2 / 3, 1)]


def recipe_for_depth(depth: int) -> str | None:
    """The recipe of an encoder depth: ViT-B (12 blocks), ViT-L (24), the demo model (4)."""
    return {12: "upernet_vit_b_ade20k_160k", 24: "upernet_vit_l_ade20k_160k", 4: "demo"}.get(depth)


def get_recipe(name: str) -> SegRecipe:
    if name not in RECIPES:
        raise LsmaeError(f"unknown segmentation config {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def scale_to_batch(recipe: SegRecipe, batch_size: int | None) -> SegRecipe:
    """The recipe at another total batch: lr scaled linearly, iteration counts by the inverse ratio
    (detectron2's auto_scale_workers rule)."""
    if batch_size is None or batch_size == recipe.batch_size:
        return recipe
    if batch_size < 1:
        raise LsmaeError(f"--batch-size must be at least 1, got {batch_size}")
    ratio = recipe.batch_size / batch_size

    def iters(n: int) -> int:
        return scale_iterations(n, recipe.batch_size, batch_size)

    return replace(recipe, batch_size=batch_size, lr=recipe.lr / ratio, max_iter=iters(recipe.max_iter),
                   warmup_iters=iters(recipe.warmup_iters), eval_period=iters(recipe.eval_period),
                   checkpoint_period=iters(recipe.checkpoint_period))


def plan(recipe: SegRecipe, devices: int, source: str | None, **extra: Any) -> dict[str, Any]:
    """What a run will do, as one JSON-ready record (``--dry-run --json``)."""
    if recipe.batch_size % devices:
        raise LsmaeError(f"batch size {recipe.batch_size} is not divisible by {devices} devices: set --batch-size")
    record = asdict(recipe)
    record.update(config=record.pop("name"), out_indices=list(recipe.out_indices), devices=devices,
                  batch_per_device=recipe.batch_size // devices, source=source, **extra)
    return record
