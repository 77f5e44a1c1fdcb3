"""MAE's classification recipes (FINETUNE.md's ViT-B and ViT-L columns, main_linprobe.py) as data, and
how a run's options left unset take them. No torch: the ``lsmae`` parser shows them as defaults."""
from __future__ import annotations

import argparse

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


def resolve_recipe(args: argparse.Namespace, mode: str, width: int | None) -> None:
    """Fill the options left at None with the recipe's values for this architecture (in place)."""
    if mode == "finetune":
        recipe = {**FINETUNE_COMMON, **FINETUNE_BY_WIDTH.get(width, FINETUNE_BY_WIDTH[None])}
    else:
        recipe = dict(LINPROBE)
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if mode == "finetune" and str(args.aa).lower() in ("none", ""):
        args.aa = None
    args.lr = args.blr * args.effective_batch_size / 256 if args.lr is None else args.lr
