"""The options of ``lsmae finetune``, ``lsmae linprobe`` and ``lsmae eval`` as the Python API's frozen configs,
and what their runs return. Standard library only: the command line builds these before importing torch.

A recipe field left at None takes MAE's value for the source's architecture when the run starts
(:func:`bridges.classification.recipes.resolve_recipe`, which returns a new config)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pretrain.configs import check_choices, option, shared
from pretrain.shared_options import TASKS


@dataclass(frozen=True, kw_only=True)
class _TrainingOptions:
    """What fine-tuning and linear probing share: the source, the data, the schedule, the run."""

    mode: ClassVar[str]
    source: str = option(positional="SOURCE")  # zoo id or MAE checkpoint file
    data_path: str  # ImageFolder root with train/ and val/
    input_size: int = 224
    num_workers: int = shared("finetune", "workers")
    min_crop_scale: float = 0.08
    hflip: float = 0.5
    epochs: int | None = None
    warmup_epochs: int | None = None
    effective_batch_size: int | None = None
    batch_size: int | None = None
    accum_iter: int | None = None
    blr: float | None = None
    lr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    precision: str = shared("finetune", "precision")
    seed: int = shared("finetune", "seed")
    device: str | None = shared("finetune", "device")
    resume: str = shared("finetune", "resume")
    print_freq: int = 20
    compile: bool = shared("finetune", "compile")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(_TrainingOptions):
    """``lsmae finetune``: MAE's fine-tuning recipe on a timm ViT classifier."""

    mode: ClassVar[str] = "finetune"
    layer_decay: float | None = None
    drop_path: float | None = None
    smoothing: float | None = None
    aa: str | None = None  # timm auto-augment policy; 'none' turns it off
    reprob: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    grad_checkpointing: bool = False
    from_scratch: bool = False
    global_pool: str = option("avg", choices=("avg", "token"))
    output_dir: str = TASKS["finetune"].output_dir


@dataclass(frozen=True, kw_only=True)
class LinprobeConfig(_TrainingOptions):
    """``lsmae linprobe``: MAE's linear probing (frozen encoder, BatchNorm + linear head, LARS)."""

    mode: ClassVar[str] = "linprobe"
    output_dir: str = TASKS["linprobe"].output_dir


ClassifierConfig = FinetuneConfig | LinprobeConfig


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """``lsmae eval``: top-1/top-5 of a finetune/linprobe checkpoint on ``DATA/val``."""

    checkpoint: str = option(positional="CHECKPOINT")  # best.pth/last.pth, or the run folder (its best.pth)
    data_path: str
    batch_size: int = 64
    num_workers: int = shared("eval", "workers")
    precision: str = shared("eval", "precision")
    device: str | None = shared("eval", "device")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class BestEpoch:
    """The epoch whose evaluation was best (0-based ``epoch``), kept in ``best.pth``."""

    top1: float
    top5: float
    epoch: int


@dataclass(frozen=True)
class ClassificationResult:
    """A fine-tuning or linear-probing run: the last evaluation's top-1/top-5 (the final model's, in
    ``last.pth``), the best epoch beside it (``best.pth``), and the checkpoint it resumed from (None: a
    fresh run)."""

    top1: float
    top5: float
    best: BestEpoch
    epochs: int
    output_dir: Path
    best_path: Path
    last_path: Path
    resumed_from: Path | None = None


@dataclass(frozen=True)
class EvalResult:
    """``lsmae eval``'s measurement: top-1/top-5 and mean cross-entropy over the validation images, beside
    the epoch the checkpoint holds and the top-1 its run logged for it."""

    top1: float
    top5: float
    val_loss: float
    images: int
    epoch: int | None
    logged_top1: float | None
    is_main: bool = True  # False in the other processes of a torchrun launch (they print nothing)
