"""Semantic segmentation recipes as data (UperNet on ADE20K), and the plan a run resolves to.

Standard library only: ``lsmae segment --dry-run`` prints a plan without importing torch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from bridges.batch_scaling import scale_iterations
from pretrain.errors import LsmaeError, OptionError

ADE20K_CLASSES = 150  # SceneParse150


BEIT_B = "BEiT semantic_segmentation/configs/beit/upernet/upernet_beit_base_12_512_slide_160k_ade20k.py"
BEIT_L = "BEiT semantic_segmentation/configs/beit/upernet/upernet_beit_large_24_512_slide_160k_ade20k.py"
ANSWER = "long_seq_mae#1, the first author's answer (ViT-B)"


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
    head_dropout: float = 0.1  # Dropout2d before the UperNet and FCN classifiers
    auxiliary_weight: float = 0.4  # the FCN head's share of the loss
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)  # (long, short) sides before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    eval_stride: int = 341
    eval_period: int = 16_000
    checkpoint_period: int = 16_000
    num_labels: int = ADE20K_CLASSES
    aug_test_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    estimated: bool = False  # True: values not published for this model, chosen by us (see CITATIONS)


RECIPES: dict[str, SegRecipe] = {r.name: r for r in (
    SegRecipe("upernet_vit_b_ade20k_160k",
              f"{ANSWER}: 160k iterations, batch 16, lr 8e-5, layer decay 0.8, drop path 0.1, 512x512, "
              f"'the setting in BEiT and ConvNeXt'; the rest from {BEIT_B}",
              lr=8e-5, layer_decay=0.8, drop_path=0.1, out_indices=(3, 5, 7, 11)),
    SegRecipe("upernet_vit_l_ade20k_160k",
              "ESTIMATE: no ViT-L values are published for a self-supervised-only (MAE) ViT-L; lr, layer decay "
              f"and drop path extrapolated from the ViT-B recipe (see the sources per value); the rest from {BEIT_L}",
              lr=8e-5, layer_decay=0.9, drop_path=0.2, out_indices=(7, 11, 15, 23), estimated=True),
    SegRecipe("demo", "lsmae demo: the embedded micro checkpoint (4 blocks) on a generated 64 px set",
              lr=2e-3, layer_decay=0.8, drop_path=0.0, out_indices=(0, 1, 2, 3), batch_size=8, max_iter=120,
              warmup_iters=10, crop_size=64, scale=(128, 64), eval_stride=43, eval_period=60, checkpoint_period=60,
              num_labels=4, aug_test_scales=(0.75, 1.0, 1.25)),
)}

# Where each value of a recipe comes from; a value not listed comes from the recipe's ``source``.
CITATIONS: dict[str, dict[str, str]] = {
    "upernet_vit_b_ade20k_160k": {
        "lr": ANSWER, "layer_decay": ANSWER, "drop_path": ANSWER, "batch_size": ANSWER, "max_iter": ANSWER,
        "crop_size": ANSWER,
        "out_indices": f"{BEIT_B} (out_indices=[3, 5, 7, 11]); mmsegmentation configs/mae",
        "head_dropout": "mmsegmentation configs/_base_/models/upernet_beit.py (dropout_ratio=0.1, both heads)",
    },
    "upernet_vit_l_ade20k_160k": {
        "lr": "estimate: the authors' ViT-B lr (8e-5) kept, as ViTDet keeps one lr (1e-4) for ViT-B/L/H and "
              "raises only the layer decay; BEiT's 2e-5 (" + BEIT_L + ") is for models self-supervised "
              "pretrained and then intermediate fine-tuned (header of its _pt2ft twin), and BEiT's "
              "self-supervised-only _pt config (ViT-B: 7e-4 at layer decay 0.65) is ViT-B only",
        "layer_decay": "estimate: the ViT-B embeddings' lr scale kept at twice the depth (0.8^13 = 0.055; "
                       "0.9^25 = 0.072, 0.8^(13/25) = 0.89), and the +0.1 step from ViT-B to ViT-L of MAE's "
                       "fine-tuning (0.65 -> 0.75) and ViTDet (0.7 -> 0.8)",
        "drop_path": "estimate: ViT-B's 0.1 doubled, as MAE's fine-tuning (0.1 -> 0.2) and BEiT's ADE20K configs "
                     f"(0.1 -> 0.2, {BEIT_L}) do from ViT-B to ViT-L (ViTDet's 0.4 is for 100-epoch detection)",
        "out_indices": f"{BEIT_L} (out_indices=[7, 11, 15, 23])",
        "batch_size": f"{BEIT_L} (8 GPUs x 2), as the authors' ViT-B",
        "max_iter": f"{BEIT_L}, as the authors' ViT-B",
        "head_dropout": "mmsegmentation configs/_base_/models/upernet_beit.py (dropout_ratio=0.1, both heads)",
    },
}

# Fields a KEY=VALUE override may set: not the recipe's name and citation, not the batch (--batch-size scales
# the recipe) and not the estimate flag.
NOT_OVERRIDABLE = ("name", "source", "batch_size", "estimated")
EVAL_KEYS = ("crop_size", "eval_stride", "scale", "aug_test_scales")  # what --eval-only may override
OVERRIDE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"), "layer_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "drop_path": (lambda v: 0 <= v < 1, "in [0, 1)"), "head_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"), "auxiliary_weight": (lambda v: v >= 0, ">= 0"),
    "warmup_iters": (lambda v: v >= 0, ">= 0"), "warmup_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "min_lr": (lambda v: v >= 0, ">= 0"), "poly_power": (lambda v: v > 0, "> 0"),
    "betas": (lambda v: all(0 <= b < 1 for b in v), "each in [0, 1)"),
    "out_indices": (lambda v: len(v) == 4 and all(k >= 0 for k in v), "4 zero-based blocks"),
    "cat_max_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ratio_range": (lambda v: 0 < v[0] <= v[1], "low <= high, both > 0"),
    "aug_test_scales": (lambda v: len(v) > 0 and all(r > 0 for r in v), "> 0 each"),
}


def overridable_keys() -> list[str]:
    return [f.name for f in fields(SegRecipe) if f.name not in NOT_OVERRIDABLE]


def _parse_value(text: str, current: Any, annotation: str) -> Any:
    """``text`` as the type of the field's current value (tuples as comma lists); ValueError names what
    was expected."""
    if isinstance(current, tuple):
        kind = int if "int" in annotation else float
        try:
            items = tuple(kind(t) for t in text.split(","))
        except ValueError:
            raise ValueError(f"a comma-separated list of {kind.__name__}s like {','.join(map(str, current))}") from None
        if "..." not in annotation and len(items) != len(current):
            raise ValueError(f"{len(current)} comma-separated values")
        return items
    kind = int if isinstance(current, int) else float
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"a number ({kind.__name__})") from None


def _positive(value: Any) -> bool:
    return all(v > 0 for v in value) if isinstance(value, tuple) else value > 0


def apply_overrides(recipe: SegRecipe, overrides: list[str]) -> tuple[SegRecipe, dict[str, Any]]:
    """``KEY=VALUE`` items applied to ``recipe``, each checked (one-line errors naming the valid keys);
    returns the new recipe and the parsed overrides."""
    keys = overridable_keys()
    annotations = {f.name: str(f.type) for f in fields(SegRecipe)}
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise LsmaeError(f"segment override {item!r} is not KEY=VALUE; valid keys: {', '.join(keys)}")
        if key not in keys:
            why = "batch_size is not a key: use --batch-size" if key == "batch_size" else f"unknown key {key!r}"
            raise LsmaeError(f"segment override: {why}; valid keys: {', '.join(keys)}")
        try:
            value = _parse_value(text, getattr(recipe, key), annotations[key])
        except ValueError as e:
            raise LsmaeError(f"segment override {key}={text}: expected {e}") from None
        check, rule = OVERRIDE_CHECKS.get(key, (_positive, "> 0"))
        if not check(value):
            raise LsmaeError(f"segment override {key}={text}: must be {rule}")
        parsed[key] = value
    return replace(recipe, **parsed), parsed


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
        raise OptionError(f"{{batch_size}} must be at least 1, got {batch_size}")
    ratio = recipe.batch_size / batch_size

    def iters(n: int) -> int:
        return scale_iterations(n, recipe.batch_size, batch_size)

    return replace(recipe, batch_size=batch_size, lr=recipe.lr / ratio, max_iter=iters(recipe.max_iter),
                   warmup_iters=iters(recipe.warmup_iters), eval_period=iters(recipe.eval_period),
                   checkpoint_period=iters(recipe.checkpoint_period))


def plan(recipe: SegRecipe, devices: int, source: str | None, overrides: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    """What a run will do, as one JSON-ready record (``--dry-run --json``): the recipe's values, the
    sources of its values, the overrides applied."""
    if recipe.batch_size % devices:
        raise OptionError(f"batch size {recipe.batch_size} is not divisible by {devices} devices: set {{batch_size}}")
    record = asdict(recipe)
    record.update(config=record.pop("name"), out_indices=list(recipe.out_indices), devices=devices,
                  batch_per_device=recipe.batch_size // devices, source=source,
                  citations=CITATIONS.get(recipe.name, {}), overrides=dict(overrides or {}), **extra)
    return record
