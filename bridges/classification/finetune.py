"""Classification bridge: MAE fine-tuning and linear probing on timm 1.x, and evaluation.

``lsmae finetune`` (under torchrun: ``-m bridges finetune``) runs MAE's
``main_finetune.py`` recipe, ``lsmae linprobe`` its ``main_linprobe.py`` recipe, on a timm
``VisionTransformer`` built from a zoo id or an MAE checkpoint file by
:func:`bridges.classification.convert.create_timm_model`. ``lsmae eval`` measures a run's checkpoint.

Checkpoints (``OUTPUT_DIR/best.pth``, ``OUTPUT_DIR/last.pth``) hold a plain timm state dict under
``'model'`` (for a linear probe, the BatchNorm is folded into the head) with what rebuilds the
model: ``timm.create_model(ckpt['timm_model'], **ckpt['timm_kwargs'], num_classes=ckpt['num_classes'],
global_pool=ckpt['global_pool'], img_size=ckpt['img_size'])``.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader

from pretrain.engine.backends import TorchBackend, make_backend
from pretrain.engine.checkpoints import json_safe_args
from pretrain.errors import CheckpointError, DataError, LsmaeError
from pretrain.engine.resume import resume_run, run_identity
from pretrain.engine.run_logging import setup_logging
from pretrain.engine.run_plan import precision_name, resolve_batch, resolve_precision
from pretrain.engine.trainer import LoopConfig, Progress, Trainer

from bridges.classification.recipes import (AUTO_BATCH_CAP, FINETUNE_BY_WIDTH, FINETUNE_COMMON, LINPROBE, resolve_recipe,
                                            source_width)
from bridges.classification.data import differing, image_folder, eval_transform, load_splits, train_transform, val_loader
from bridges.classification.model import (build_model, create_from_checkpoint, load_classifier_checkpoint,
                                          make_optimizer, plain_state_dict)

log = logging.getLogger("bridges.classification.finetune")



# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, backend: TorchBackend, dtype: torch.dtype | None,
             num_classes: int) -> dict[str, float]:
    """Top-1, top-5 (top-k with k = min(5, classes)) and mean cross-entropy over the whole val set,
    each image counted once across all devices."""
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    stats = torch.zeros(4, dtype=torch.float64, device=backend.device)  # correct1, correct5, loss sum, count
    for images, target in backend.device_loader(loader):
        with backend.autocast(dtype):
            logits = model(images)
        logits = logits.float()
        topk = logits.topk(k, dim=1).indices
        hit = topk == target[:, None]
        stats[0] += hit[:, 0].sum()
        stats[1] += hit.any(dim=1).sum()
        stats[2] += nn.functional.cross_entropy(logits, target, reduction="sum").double()
        stats[3] += target.numel()
    stats = backend.all_reduce_sum(stats)
    model.train(was_training)
    c1, c5, loss, n = stats.tolist()
    n = max(n, 1)
    return {"top1": c1 / n, "top5": c5 / n, "val_loss": loss / n, "images": int(n)}


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


def _run_identity(args: argparse.Namespace, mode: str, meta: dict[str, Any], train_set: Any) -> dict[str, Any]:
    """This run's identity (:func:`pretrain.engine.resume.run_identity`): the classifier, the digest of its
    source, the resolved recipe (the lr, not the blr it came from; not the epochs: a rerun with more
    continues the run) and the data (folder, classes, image count). Not how the steps run (``--compile``,
    gradient checkpointing): a run resumes with or without them."""
    defaults = {**FINETUNE_COMMON, **FINETUNE_BY_WIDTH[None]} if mode == "finetune" else LINPROBE
    keys = sorted(defaults.keys() - {"epochs", "blr"})
    return run_identity(
        mode, input_size=meta["img_size"], source=meta["source"].get("source_sha256"),
        model={k: meta[k] for k in ("timm_model", "timm_kwargs", "num_classes", "global_pool")},
        recipe={**{k: getattr(args, k) for k in keys}, "lr": args.lr, "seed": args.seed,
                "min_crop_scale": args.min_crop_scale, "hflip": args.hflip, "init": meta["init"]},
        data={"path": str(Path(args.data_path).expanduser().resolve()), "classes": meta["classes"],
              "images": len(train_set)})


# --------------------------------------------------------------------------- training
def _uses_mixup(args: argparse.Namespace, mode: str) -> bool:
    return mode == "finetune" and (args.mixup > 0 or args.cutmix > 0)


class Classification:
    """The classifier's cross-entropy (mixup/cutmix and label smoothing as the recipe says; a linear
    probe computes the frozen features without autograd and trains, and all-reduces, the head only).
    Each epoch ends with top-1/top-5 on the validation set, ``best.pth`` when top-1 improved, and the
    resume checkpoint ``last.pth``.

    ``--compile`` compiles what the steps spend their time in, the model (fine-tuning) or the frozen
    encoder's features (probing), beside the plain modules: the checkpoints hold the plain state dict, and
    evaluation runs the plain model (eval mode and its last batch would be compilations of their own)."""

    def __init__(self, model: nn.Module, mode: str, args: argparse.Namespace, backend: TorchBackend,
                 dtype: torch.dtype | None, vloader: DataLoader, base: dict[str, Any], best: dict[str, Any]) -> None:
        self.classifier, self.mode, self.args, self.backend, self.dtype = model, mode, args, backend, dtype
        probe = mode == "linprobe"
        trained = model.head if probe else model
        self.model = backend.wrap_model(torch.compile(trained) if args.compile and not probe else trained)
        self.features = torch.compile(self._pre_logits) if probe and args.compile else self._pre_logits
        self.vloader, self.num_classes, self.base, self.best = vloader, base["num_classes"], base, best
        self.output_dir = Path(args.output_dir)
        self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                           num_classes=self.num_classes) if _uses_mixup(args, mode) else None
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif mode == "finetune" and args.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
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
        stats = evaluate(self.classifier, self.vloader, self.backend, self.dtype, self.num_classes)
        improved = stats["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": stats["top1"], "top5": stats["top5"], "epoch": epoch}
        log.info("epoch %d/%d done: train loss %.4f, val top-1 %.2f%% top-5 %.2f%% loss %.4f (%d images); "
                 "best top-1 %.2f%% (epoch %d)", at.epoch, self.args.epochs, train_loss, 100 * stats["top1"],
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


def train(args: argparse.Namespace, backend: TorchBackend, mode: str = "finetune") -> dict[str, Any]:
    """Fine-tune or linear-probe (``mode``), resuming from ``OUTPUT_DIR/last.pth``; returns
    ``{'best_top1', 'best_top5', 'best_epoch', 'best', 'last', 'epochs'}``."""
    setup_logging(log, backend.is_main)
    output_dir = Path(args.output_dir)
    resolve_recipe(args, mode, source_width(args.source))
    dtype = resolve_precision(args.precision, backend)
    batch, accum = resolve_batch(args.effective_batch_size, args.batch_size, args.accum_iter, backend.world_size,
                                 cap=AUTO_BATCH_CAP[mode])
    if _uses_mixup(args, mode) and batch % 2:
        raise LsmaeError(f"mixup/cutmix need an even per-device batch, got {batch}: set --batch-size")

    train_set, val_set = load_splits(args.data_path, train_transform(args, mode), eval_transform(args.input_size))
    num_classes = len(train_set.classes)
    torch.manual_seed(args.seed)
    model, _, meta = build_model(args, mode, num_classes)  # the source's errors before the batch's
    meta["classes"] = list(train_set.classes)
    if getattr(args, "grad_checkpointing", False):
        model.set_grad_checkpointing(True)
    model.to(backend.device)
    trainer = Trainer(
        backend, make_optimizer(model, args, mode, backend), train_set, batch=batch, accum=accum,
        num_workers=args.num_workers, dtype=dtype,
        config=LoopConfig(seed=args.seed, min_lr=args.min_lr, print_freq=args.print_freq, epochs=args.epochs,
                          warmup=args.warmup_epochs),
        output_dir=output_dir, log=log,
        stop_hint=f"Resume from {output_dir / 'last.pth'} (the default) after lowering --blr or switching "
                  "--precision (fp16 overflows most)",
        identity=_run_identity(args, mode, meta, train_set))

    best = {"top1": -1.0, "top5": 0.0, "epoch": -1}
    resumed = resume_run(trainer, model, args.resume, [output_dir / "last.pth"], load=_load_resumable, log=log,
                         weights=_trained_state)
    if resumed is not None:
        path, ckpt = resumed
        best = dict(ckpt["best"])
        log.info("resumed from %s (epoch %d done, best top-1 %.2f%% at epoch %d)", path, ckpt["epoch"] + 1,
                 100 * best["top1"], best["epoch"] + 1)

    log.info("%s %s: %d classes, %d train / %d val images at %dpx; %d devices x batch %d x %d accumulation = %d "
             "per update, lr %.3g (blr %.3g), %d epochs (%d warmup), precision %s%s, %d updates/epoch",
             mode, meta["timm_model"], num_classes, len(train_set), len(val_set), args.input_size,
             backend.world_size, batch, accum, batch * accum * backend.world_size, args.lr, args.blr, args.epochs,
             args.warmup_epochs, precision_name(dtype), " (torch.compile'd steps)" if args.compile else "",
             trainer.updates_per_epoch)
    if mode == "finetune":
        log.info("recipe: layer decay %g, drop path %g, weight decay %g, label smoothing %g, mixup %g, cutmix %g, "
                 "auto-augment %s, random erasing %g, min lr %g", args.layer_decay, args.drop_path,
                 args.weight_decay, args.smoothing, args.mixup, args.cutmix, args.aa, args.reprob, args.min_lr)
    unused = len(train_set) - trainer.steps_per_epoch * batch * backend.world_size
    if unused:
        log.info("%d of %d training images are left out of each epoch (a different few each epoch): they do "
                 "not fill a whole batch on every device, or a whole accumulated update", unused, len(train_set))
    if args.warmup_epochs >= args.epochs:
        log.warning("warning: --warmup-epochs %d is not shorter than --epochs %d: the lr never reaches %.3g",
                    args.warmup_epochs, args.epochs, args.lr)
    if trainer.progress.epoch >= args.epochs:
        log.info("nothing to do: %s already holds epoch %d of %d", output_dir / "last.pth", trainer.progress.epoch,
                 args.epochs)

    base = {**meta, "args": json_safe_args(args), "batch_size": batch, "accum_iter": accum,
            "world_size": backend.world_size}
    task = Classification(model, mode, args, backend, dtype, val_loader(val_set, backend, batch, args.num_workers),
                          base, best)
    trainer.fit(task)
    best = task.best
    if best["epoch"] < 0:
        raise LsmaeError(f"{output_dir}: no epoch was run and there is no checkpoint to report")
    return {"best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best["epoch"],
            "best": output_dir / "best.pth", "last": output_dir / "last.pth", "epochs": args.epochs}


def evaluate_checkpoint(checkpoint: str | Path, data_path: str | Path, batch_size: int = 64, num_workers: int = 0,
                        device: str | None = None, precision: str = "auto") -> dict[str, Any]:
    """Top-1/top-5 of a finetune/linprobe checkpoint on ``DATA/val`` (the classes must match its own)."""
    ckpt = load_classifier_checkpoint(checkpoint)
    val_set = image_folder(Path(data_path).expanduser() / "val", eval_transform(ckpt["img_size"]))
    if ckpt.get("classes") and val_set.classes != ckpt["classes"]:
        raise DataError(f"{Path(data_path) / 'val'} has other classes than the checkpoint was trained on: only in "
                        f"the checkpoint: {differing(ckpt['classes'], val_set.classes)}; only in val: "
                        f"{differing(val_set.classes, ckpt['classes'])}")
    backend = make_backend(device)
    try:
        model = create_from_checkpoint(ckpt).to(backend.device)
        stats = evaluate(model, val_loader(val_set, backend, batch_size, num_workers), backend,
                         resolve_precision(precision, backend), ckpt["num_classes"])
    finally:
        backend.shutdown()
    return {**stats, "epoch": ckpt.get("epoch"), "logged_top1": ckpt.get("top1"), "is_main": backend.is_main}


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """``lsmae eval``: print and return top-1/top-5 (also under torchrun: each image counted once)."""
    r = evaluate_checkpoint(args.checkpoint, args.data_path, batch_size=args.batch_size,
                            num_workers=args.num_workers, device=args.device, precision=args.precision)
    if r["is_main"]:
        print(f"top-1 {100 * r['top1']:.2f}% top-5 {100 * r['top5']:.2f}% on {r['images']} images "
              f"(val loss {r['val_loss']:.4f})")
    return r


# --------------------------------------------------------------------------- entry points
def run(args: argparse.Namespace, mode: str = "finetune") -> dict[str, Any]:
    backend = make_backend(args.device)
    try:
        result = train(args, backend, mode)
    finally:
        backend.shutdown()
    if backend.is_main:
        print(f"best top-1 {100 * result['best_top1']:.2f}% top-5 {100 * result['best_top5']:.2f}% "
              f"(epoch {result['best_epoch'] + 1} of {result['epochs']}); weights load into plain timm, "
              f"see `lsmae eval {result['best']} --data-path DATA`")
        print(result["best"])
    return result
