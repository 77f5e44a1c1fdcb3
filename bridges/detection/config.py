"""``lsmae detect``'s options as the Python API's frozen config, and what a run returns. Standard library only:
the command line builds the config before importing torch or detectron2."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.configs import check_choices, option, shared


@dataclass(frozen=True, kw_only=True)
class DetectConfig:
    """SOURCE, the LazyConfig (a shipped name or a .py file), the processes, the data (COCO, or sets of one's
    own as ``JSON:IMAGE_DIR``), the batch and the Detectron2 ``KEY=VALUE`` overrides, applied last."""

    source: str = option(positional="SOURCE")
    config: str  # a name of detection_configs or a LazyConfig .py file
    num_gpus: int | None = None  # processes per machine (default: the visible GPUs; 1 on CPU)
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str | None = None
    train: str | None = None
    val: str | None = None
    batch_size: int | None = None
    grad_checkpointing: bool = False
    eval_only: bool = False
    save_pictures: int = 0
    score_thresh: float = 0.5
    resume: bool = shared("detect", "resume")
    overrides: tuple[str, ...] = option((), positional="KEY=VALUE")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class DetectResult:
    """A detection run (or ``eval_only``): its output folder, the final weights (None for an evaluation), the
    last evaluation's metrics and their ``eval_results.json`` (None when none ran), the pictures drawn, and
    whether it continued from the folder's last checkpoint."""

    output_dir: Path
    model_final: Path | None
    eval_results: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    pictures: tuple[Path, ...] = ()
    resumed: bool = False
