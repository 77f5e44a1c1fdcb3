"""MAE's classification recipes (FINETUNE.md's ViT-B and ViT-L columns, main_linprobe.py) as data, and
how a run's options left unset take them. No torch: the ``lsmae`` parser shows them as defaults."""
from __future__ import annotations

import dataclasses
from typing import TypeVar

from bridges.classification.config import ClassifierConfig

C = TypeVar("C", bound=ClassifierConfig)
# MAE's FINETUNE.md, by encoder width: ViT-L (1024) has its own column, every other width the ViT-B one
FINETUNE_BY_WIDTH = {
    1024: dict(epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2),
    None: dict(epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1),
}
FINETUNE_COMMON = dict(
    effective_batch_size=1024, weight_decay=0.05, warmup_epochs=5, min_lr=1e-6, smoothing=0.1,
    aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
)
LINPROBE = dict(epochs=90, blr=0.1, effective_batch_size=16384, warmup_epochs=10, weight_decay=0.0, min_lr=0.0)
# the per-device batch when only the effective batch is given (the rest is gradient accumulation)
AUTO_BATCH_CAP = {"finetune": 64, "linprobe": 512}


def source_width(source: str) -> int | None:
    """The encoder width of SOURCE, cheaply (None if it cannot be told: the conversion then reports the problem)."""
    from zoo.registry import encoder_size

    try:
        return encoder_size(source)[0]
    except Exception:  # noqa: BLE001 - create_timm_model gives the real error
        return None


def resolve_recipe(config: C, width: int | None) -> C:
    """A new config: the options left at None take the recipe's values for this architecture, ``aa`` 'none'
    becomes None (off), and ``lr`` comes from ``blr`` unless given."""
    if config.mode == "finetune":
        recipe = {**FINETUNE_COMMON, **FINETUNE_BY_WIDTH.get(width, FINETUNE_BY_WIDTH[None])}
    else:
        recipe = dict(LINPROBE)
    filled = {key: value for key, value in recipe.items() if getattr(config, key) is None}
    resolved = dataclasses.replace(config, **filled)
    if config.mode == "finetune" and str(resolved.aa).lower() in ("none", ""):
        resolved = dataclasses.replace(resolved, aa=None)
    if resolved.lr is None:
        resolved = dataclasses.replace(resolved, lr=resolved.blr * resolved.effective_batch_size / 256)
    return resolved
