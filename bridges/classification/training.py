"""MAE fine-tuning and linear probing on timm 1.x: :func:`finetune` and :func:`linprobe`.

``lsmae finetune`` (under torchrun: ``-m bridges finetune``) runs MAE's
``main_finetune.py`` recipe, ``lsmae linprobe`` its ``main_linprobe.py`` recipe, on a timm
``VisionTransformer`` built from a zoo id or an MAE checkpoint file by
:func:`bridges.classification.convert.create_timm_model`. ``lsmae eval`` measures a run's checkpoint
(:mod:`bridges.classification.evaluation`).

Checkpoints (``OUTPUT_DIR/best.pth``, ``OUTPUT_DIR/last.pth``) hold a plain timm state dict under
``'model'`` (for a linear probe, the BatchNorm is folded into the head) with what rebuilds the
model: ``timm.create_model(ckpt['timm_model'], **ckpt['timm_kwargs'], num_classes=ckpt['num_classes'],
global_pool=ckpt['global_pool'], img_size=ckpt['img_size'])``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader

from bridges.classification.config import (
    BestEpoch,
    ClassificationResult,
    ClassifierConfig,
    FinetuneConfig,
    LinprobeConfig,
)
from bridges.classification.data import eval_transform, load_splits, train_transform, val_loader
from bridges.classification.evaluation import accuracy
from bridges.classification.model import build_model, load_classifier_checkpoint, make_optimizer, plain_state_dict
from bridges.classification.recipes import (
    AUTO_BATCH_CAP,
    FINETUNE_BY_WIDTH,
    FINETUNE_COMMON,
    LINPROBE,
    resolve_recipe,
    source_width,
)
from pretrain.configs import as_dict, configure
from pretrain.engine.backends import TorchBackend, make_backend
from pretrain.engine.resume import resume_run, run_identity
from pretrain.engine.run_logging import setup_logging
from pretrain.engine.run_plan import precision_name, resolve_batch, resolve_precision
from pretrain.engine.trainer import LoopConfig, Progress, Trainer
from pretrain.errors import CheckpointError, LsmaeError, OptionError

log = logging.getLogger("bridges.classification.finetune")



# --------------------------------------------------------------------------- resume
def _load_resumable(path: Path) -> dict[str, Any]:
    """A ``last.pth``: a classifier checkpoint with its optimizer state."""
    ckpt = load_classifier_checkpoint(path)
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path}: holds no optimizer state (best.pth is weights only): resume from last.pth")
    return ckpt


def _trained_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The trained model's state in a ``last.pth``: a linear probe's head unfolded from ``probe_head``."""
    if "probe_head" not in ckpt:
        return ckpt["model"]
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}
    state.update({f"head.{k}": v for k, v in ckpt["probe_head"].items()})
    return state


def _run_identity(config: ClassifierConfig, meta: dict[str, Any], train_set: Any) -> dict[str, Any]:
    """This run's identity (:func:`pretrain.engine.resume.run_identity`): the classifier, the digest of its
    source, the resolved recipe (the lr, not the blr it came from; not the epochs: a rerun with more
    continues the run) and the data (folder, classes, image count). Not how the steps run (``--compile``,
    gradient checkpointing): a run resumes with or without them."""
    mode = config.mode
    defaults = {**FINETUNE_COMMON, **FINETUNE_BY_WIDTH[None]} if mode == "finetune" else LINPROBE
    keys = sorted(defaults.keys() - {"epochs", "blr"})
    return run_identity(
        mode, input_size=meta["img_size"], source=meta["source"].get("source_sha256"),
        model={k: meta[k] for k in ("timm_model", "timm_kwargs", "num_classes", "global_pool")},
        recipe={**{k: getattr(config, k) for k in keys}, "lr": config.lr, "seed": config.seed,
                "min_crop_scale": config.min_crop_scale, "hflip": config.hflip, "init": meta["init"]},
        data={"path": str(Path(config.data_path).expanduser().resolve()), "classes": meta["classes"],
              "images": len(train_set)})


# --------------------------------------------------------------------------- training
def _uses_mixup(config: ClassifierConfig) -> bool:
    return config.mode == "finetune" and (config.mixup > 0 or config.cutmix > 0)


class Classification:
    """The classifier's cross-entropy (mixup/cutmix and label smoothing as the recipe says; a linear
    probe computes the frozen features without autograd and trains, and all-reduces, the head only).
    Each epoch ends with top-1/top-5 on the validation set, ``best.pth`` when top-1 improved, and the
    resume checkpoint ``last.pth``.

    ``--compile`` compiles what the steps spend their time in, the model (fine-tuning) or the frozen
    encoder's features (probing), beside the plain modules: the checkpoints hold the plain state dict, and
    evaluation runs the plain model (eval mode and its last batch would be compilations of their own)."""

    def __init__(self, model: nn.Module, config: ClassifierConfig, backend: TorchBackend,
                 dtype: torch.dtype | None, vloader: DataLoader, base: dict[str, Any], best: dict[str, Any]) -> None:
        mode = config.mode
        self.classifier, self.mode, self.config, self.backend, self.dtype = model, mode, config, backend, dtype
        probe = mode == "linprobe"
        trained = model.head if probe else model
        self.model = backend.wrap_model(torch.compile(trained) if config.compile and not probe else trained)
        self.features = torch.compile(self._pre_logits) if probe and config.compile else self._pre_logits
        self.vloader, self.num_classes, self.base, self.best = vloader, base["num_classes"], base, best
        self.output_dir = Path(config.output_dir)
        self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                           num_classes=self.num_classes) if _uses_mixup(config) else None
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif mode == "finetune" and config.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.result: dict[str, Any] = {}
        self._weights_at: Progress | None = None
        self._weights_cpu: dict[str, torch.Tensor] = {}

    def forward_loss(self, batch: Sequence[Any], generator: torch.Generator) -> torch.Tensor:
        images, target = batch
        if self.mixup is not None:
            images, target = self.mixup(images, target)
        if self.mode == "linprobe":
            with torch.no_grad(), self.backend.autocast(self.dtype):
                features = self.features(images)
            return self.criterion(self.model(features.float()), target)
        with self.backend.autocast(self.dtype):
            return self.criterion(self.model(images), target)

    def _pre_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's features, the head's input: what ``--compile`` compiles when probing."""
        return self.classifier.forward_head(self.classifier.forward_features(images), pre_logits=True)

    def evaluate(self, at: Progress, train_loss: float) -> dict[str, Any]:
        epoch = at.epoch - 1
        stats = accuracy(self.classifier, self.vloader, self.backend, self.dtype, self.num_classes)
        improved = stats["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": stats["top1"], "top5": stats["top5"], "epoch": epoch}
        log.info("epoch %d/%d done: train loss %.4f, val top-1 %.2f%% top-5 %.2f%% loss %.4f (%d images); "
                 "best top-1 %.2f%% (epoch %d)", at.epoch, self.config.epochs, train_loss, 100 * stats["top1"],
                 100 * stats["top5"], stats["val_loss"], stats["images"], 100 * self.best["top1"],
                 self.best["epoch"] + 1)
        self.result = {"top1": stats["top1"], "top5": stats["top5"], "best": self.best}
        if improved:  # the main process writes; every process waits for it
            self.backend.save({**self.base, **self.result, "epoch": epoch, "model": self._weights(at)}
                              if self.backend.is_main else None, self.output_dir / "best.pth")
        return {"kind": "epoch", "epoch": epoch, "train_loss": train_loss, "top1": stats["top1"],
                "top5": stats["top5"], "val_loss": stats["val_loss"], "best_top1": self.best["top1"]}

    def checkpoint_path(self, at: Progress) -> Path:
        return self.output_dir / "last.pth"

    def _weights(self, at: Progress) -> dict[str, torch.Tensor]:
        """The classifier's weights on the CPU, copied once per point (``best.pth`` and ``last.pth``
        are written at the same point)."""
        if self._weights_at != at:
            self._weights_at, self._weights_cpu = at, plain_state_dict(self.classifier, self.mode)
        return self._weights_cpu

    def checkpoint_extra(self, at: Progress) -> dict[str, Any]:
        extra = {**self.base, **self.result, "model": self._weights(at)}
        if self.mode == "linprobe":
            extra["probe_head"] = {k: v.detach().cpu() for k, v in self.classifier.head.state_dict().items()}
        return extra


def train(config: ClassifierConfig, backend: TorchBackend) -> ClassificationResult:
    """Fine-tune or linear-probe (the config's ``mode``), resuming from ``OUTPUT_DIR/last.pth``."""
    setup_logging(log, backend.is_main)
    output_dir = Path(config.output_dir)
    mode = config.mode
    config = resolve_recipe(config, source_width(config.source))
    dtype = resolve_precision(config.precision, backend)
    batch, accum = resolve_batch(config.effective_batch_size, config.batch_size, config.accum_iter,
                                 backend.world_size, cap=AUTO_BATCH_CAP[mode])
    if _uses_mixup(config) and batch % 2:
        raise OptionError(f"mixup/cutmix need an even per-device batch, got {batch}: set {{batch_size}}")

    train_set, val_set = load_splits(config.data_path, train_transform(config), eval_transform(config.input_size))
    num_classes = len(train_set.classes)
    torch.manual_seed(config.seed)
    model, _, meta = build_model(config, num_classes)  # the source's errors before the batch's
    meta["classes"] = list(train_set.classes)
    if mode == "finetune" and config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(backend.device)
    trainer = Trainer(
        backend, make_optimizer(model, config, backend), train_set, batch=batch, accum=accum,
        num_workers=config.num_workers, dtype=dtype,
        config=LoopConfig(seed=config.seed, min_lr=config.min_lr, print_freq=config.print_freq, epochs=config.epochs,
                          warmup=config.warmup_epochs),
        output_dir=output_dir, log=log,
        stop_hint=f"Resume from {output_dir / 'last.pth'} (the default) after lowering --blr or switching "
                  "--precision (fp16 overflows most)",
        identity=_run_identity(config, meta, train_set))

    best, last, resumed_from = {"top1": -1.0, "top5": 0.0, "epoch": -1}, {}, None
    resumed = resume_run(trainer, model, config.resume, [output_dir / "last.pth"], load=_load_resumable, log=log,
                         weights=_trained_state)
    if resumed is not None:
        resumed_from, ckpt = resumed
        best, last = dict(ckpt["best"]), {"top1": ckpt["top1"], "top5": ckpt["top5"]}
        log.info("resumed from %s (epoch %d done, best top-1 %.2f%% at epoch %d)", resumed_from, ckpt["epoch"] + 1,
                 100 * best["top1"], best["epoch"] + 1)
    _log_plan(config, backend, trainer, meta, len(train_set), len(val_set), batch, accum, dtype)

    base = {**meta, "args": as_dict(config), "batch_size": batch, "accum_iter": accum,
            "world_size": backend.world_size}
    task = Classification(model, config, backend, dtype, val_loader(val_set, backend, batch, config.num_workers),
                          base, best)
    trainer.fit(task)
    best, last = task.best, task.result or last
    if best["epoch"] < 0:
        raise LsmaeError(f"{output_dir}: no epoch was run and there is no checkpoint to report")
    return ClassificationResult(
        top1=last["top1"], top5=last["top5"], best=BestEpoch(best["top1"], best["top5"], best["epoch"]),
        epochs=config.epochs, output_dir=output_dir, best_path=output_dir / "best.pth",
        last_path=output_dir / "last.pth", resumed_from=resumed_from)


def _log_plan(config: ClassifierConfig, backend: TorchBackend, trainer: Trainer, meta: dict[str, Any],
              train_images: int, val_images: int, batch: int, accum: int, dtype: torch.dtype | None) -> None:
    """The run's plan in the log: model, data, batch, schedule and recipe, and what the schedule leaves out."""
    log.info("%s %s: %d classes, %d train / %d val images at %dpx; %d devices x batch %d x %d accumulation = %d "
             "per update, lr %.3g (blr %.3g), %d epochs (%d warmup), precision %s%s, %d updates/epoch",
             config.mode, meta["timm_model"], meta["num_classes"], train_images, val_images, config.input_size,
             backend.world_size, batch, accum, batch * accum * backend.world_size, config.lr, config.blr,
             config.epochs, config.warmup_epochs, precision_name(dtype),
             " (torch.compile'd steps)" if config.compile else "", trainer.updates_per_epoch)
    if config.mode == "finetune":
        log.info("recipe: layer decay %g, drop path %g, weight decay %g, label smoothing %g, mixup %g, cutmix %g, "
                 "auto-augment %s, random erasing %g, min lr %g", config.layer_decay, config.drop_path,
                 config.weight_decay, config.smoothing, config.mixup, config.cutmix, config.aa, config.reprob,
                 config.min_lr)
    unused = train_images - trainer.steps_per_epoch * batch * backend.world_size
    if unused:
        log.info("%d of %d training images are left out of each epoch (a different few each epoch): they do "
                 "not fill a whole batch on every device, or a whole accumulated update", unused, train_images)
    if config.warmup_epochs >= config.epochs:
        log.warning("warning: --warmup-epochs %d is not shorter than --epochs %d: the lr never reaches %.3g",
                    config.warmup_epochs, config.epochs, config.lr)
    if trainer.progress.epoch >= config.epochs:
        log.info("nothing to do: %s already holds epoch %d of %d", Path(config.output_dir) / "last.pth",
                 trainer.progress.epoch, config.epochs)


# --------------------------------------------------------------------------- the API
def finetune(config: FinetuneConfig | None = None, /, **options: Any) -> ClassificationResult:
    """``lsmae finetune`` as a function: MAE's fine-tuning recipe on a timm classifier (see
    :class:`FinetuneConfig` for the options; ``finetune(config, epochs=50)`` changes a copy)."""
    return _run(configure(FinetuneConfig, config, options))


def linprobe(config: LinprobeConfig | None = None, /, **options: Any) -> ClassificationResult:
    """``lsmae linprobe`` as a function: MAE's linear probing of a frozen encoder (:class:`LinprobeConfig`)."""
    return _run(configure(LinprobeConfig, config, options))


def _run(config: ClassifierConfig) -> ClassificationResult:
    backend = make_backend(config.device)
    try:
        result = train(config, backend)
    finally:
        backend.shutdown()
    if backend.is_main:  # under torchrun, one process says it
        best = result.best
        print(f"top-1 {100 * result.top1:.2f}% top-5 {100 * result.top5:.2f}% after epoch {result.epochs} "
              f"(last.pth); best top-1 {100 * best.top1:.2f}% top-5 {100 * best.top5:.2f}% (epoch {best.epoch + 1}, "
              f"best.pth); weights load into plain timm, see `lsmae eval {result.best_path} --data-path DATA`")
        print(result.best_path)
    return result
