"""``lsmae segment``'s options as the Python API's frozen configs (training, and ``--eval-only`` of a model
folder), and what their runs return. Standard library only: the plan (``--dry-run``) and the command line
build these before importing torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.segmentation.recipes import RECIPES
from pretrain.configs import check_choices, option, shared
from pretrain.errors import OptionError
from pretrain.shared_options import TASKS


@dataclass(frozen=True, kw_only=True)
class _Labels:
    """What the mask values mean (None: the recipe's benchmark rules, ADE20K's; see
    :func:`bridges.segmentation.data_spec.label_rule`), and the devices."""

    num_labels: int | None = None
    ignore_index: int | None = None
    reduce_zero_label: bool | None = None
    device: str | None = shared("segment", "device")
    precision: str = shared("segment", "precision")
    save_pictures: int = 0  # the first N validation images drawn from the final model

    def __post_init__(self) -> None:
        check_choices(self)
        if self.save_pictures < 0:
            raise OptionError(f"{{save_pictures}} {self.save_pictures}: the number of pictures must be 0 or more")


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(_Labels):
    """UperNet from SOURCE with a recipe (by ``recipe`` name, or by the encoder's depth), scaled to
    ``batch_size``, then ``max_iter`` & co., then the KEY=VALUE ``overrides``; the data by ``data_path``
    (the ADE20K layout) or ``train`` and ``val`` (``IMAGES:MASKS``)."""

    source: str | None = option(None, positional="SOURCE")
    recipe: str | None = option(None, flag="--config", choices=tuple(sorted(RECIPES)))
    data_path: str | None = None
    train: str | None = None
    val: str | None = None
    class_names: str | None = None  # a file, one class name a line
    output_dir: str = TASKS["segment"].output_dir
    batch_size: int | None = None
    max_iter: int | None = None
    eval_period: int | None = None
    checkpoint_period: int | None = None
    grad_checkpointing: bool = False
    compile: bool = shared("segment", "compile")
    from_scratch: bool = False
    num_workers: int = shared("segment", "workers")
    resume: str = shared("segment", "resume")
    print_freq: int = 50
    seed: int = shared("segment", "seed")
    overrides: tuple[str, ...] = option((), positional="KEY=VALUE")


@dataclass(frozen=True, kw_only=True)
class SegmentEvalConfig(_Labels):
    """``lsmae segment --eval-only MODEL_DIR``: a saved model folder evaluated with the settings stored in it
    (the evaluation's KEY=VALUE ``overrides`` aside); label options, where given, must match the stored ones."""

    eval_only: str = option(flag="--eval-only")  # the model folder
    data_path: str | None = None
    val: str | None = None
    aug_test: bool = False  # the recipe's scales with flips, softmax probabilities averaged
    output_dir: str | None = None  # where the pictures go (None: the model folder)
    overrides: tuple[str, ...] = option((), positional="KEY=VALUE")


@dataclass(frozen=True)
class SegmentResult:
    """A training run: the final model's mIoU/mAcc/aAcc (the result, as the reference reports it), the best
    periodic evaluation beside it, the model folders, the pictures and the checkpoint it resumed from."""

    mIoU: float
    mAcc: float
    aAcc: float
    best_mIoU: float
    best_step: int
    final: Path
    best: Path
    output_dir: Path
    pictures: tuple[Path, ...] = ()
    resumed_from: Path | None = None


@dataclass(frozen=True)
class SegmentEvaluation:
    """An evaluation of a model folder: mIoU/mAcc/aAcc, per-class IoU and accuracy, the images counted and
    the pictures drawn."""

    mIoU: float
    mAcc: float
    aAcc: float
    images: int
    per_class: dict[str, Any]
    pictures: tuple[Path, ...] = ()
