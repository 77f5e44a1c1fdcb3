"""``lsmae pretrain``'s (``python -m pretrain``'s) options as the Python API's frozen config, and what a run
returns. Standard library only: the command line builds the config before importing torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrain.configs import check_choices, option, shared
from pretrain.errors import OptionError
from pretrain.shared_options import TASKS, check_compile


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """The model and its masking, the data, the optimisation (MAE's recipe with the release's 448 px and
    2x2-patch blocks), and the run."""

    model: str = "mae_vit_base_patch16_dec384d12h8b"
    input_size: int = 448
    mask_ratio: float = 0.75
    mask_downsampling: int = 2  # mask k x k blocks of patches
    decoder_downsampling: int = 1
    norm_pix_loss: bool = option(True, flag="--no-norm-pix-loss", negated=True)
    no_k_bias: bool = False
    grad_checkpointing: bool = False
    compile: bool = shared("pretrain", "compile")
    data_path: tuple[str, ...]  # ImageFolder roots (DIR/train if present) or flat image folders
    repeat: int = 1
    min_crop_scale: float = 0.2
    num_workers: int = shared("pretrain", "workers")
    epochs: int = 800
    warmup_epochs: int = 40
    effective_batch_size: int = 4096
    batch_size: int | None = None
    accum_iter: int | None = None
    blr: float = 1.5e-4
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    precision: str = shared("pretrain", "precision")
    seed: int = shared("pretrain", "seed")
    device: str | None = shared("pretrain", "device")
    output_dir: str = TASKS["pretrain"].output_dir
    resume: str = shared("pretrain", "resume")
    ckpt_interval: int = 20
    print_freq: int = 20

    def __post_init__(self) -> None:
        check_choices(self)
        if isinstance(self.data_path, str):
            raise OptionError("{data_path} takes a list of folders, not one string")
        check_compile(self.device, self.compile)


@dataclass(frozen=True)
class PretrainResult:
    """A pretraining run: its newest checkpoint, the folder, the epochs it holds, the last epoch's mean loss
    (None when nothing was left to train) and the checkpoint it resumed from (None: a fresh run)."""

    checkpoint: Path
    output_dir: Path
    epochs: int
    loss: float | None = None
    resumed_from: Path | None = None
