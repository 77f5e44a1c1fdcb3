"""Classification bridge: MAE fine-tuning and linear probing on timm 1.x, and evaluation.

``lsmae finetune`` / ``python -m bridges.finetune`` (also under torchrun) runs MAE's
``main_finetune.py`` recipe, ``lsmae linprobe`` its ``main_linprobe.py`` recipe, on a timm
``VisionTransformer`` built from a zoo id or an MAE checkpoint file by
:func:`bridges.timm_convert.create_timm_model`. ``lsmae eval`` measures a run's checkpoint.

Checkpoints (``OUTPUT_DIR/best.pth``, ``OUTPUT_DIR/last.pth``) hold a plain timm state dict under
``'model'`` (for a linear probe, the BatchNorm is folded into the head) with what rebuilds the
model: ``timm.create_model(ckpt['timm_model'], **ckpt['timm_kwargs'], num_classes=ckpt['num_classes'],
global_pool=ckpt['global_pool'], img_size=ckpt['img_size'])``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import Lars, create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader

from pretrain.backends import TorchBackend, make_backend
from pretrain.checkpoints import json_safe_args
from pretrain.errors import CheckpointError, DataError, LsmaeError, MissingDataError, report_errors
from pretrain.run_logging import setup_logging
from pretrain.serialization import load_checkpoint
from pretrain.trainer import LoopConfig, Progress, Trainer, precision_name, resolve_batch, resolve_precision

from .finetune_args import AUTO_BATCH_CAP, FINETUNE_BY_WIDTH, FINETUNE_COMMON, LINPROBE, build_parser

log = logging.getLogger("bridges.finetune")

CKPT_FORMAT = "lsmae classifier"
LINPROBE_HEAD_INIT_STD = 0.01  # main_linprobe.py


# --------------------------------------------------------------------------- recipe
def _source_width(source: str) -> int | None:
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


def eval_crop_pct(input_size: int) -> float:
    """MAE's evaluation crop: resize to size/0.875 then centre-crop up to 224px, no crop above."""
    return 224 / 256 if input_size <= 224 else 1.0


def eval_transform(input_size: int) -> Any:
    return create_transform(input_size, is_training=False, interpolation="bicubic", crop_pct=eval_crop_pct(input_size),
                            mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def train_transform(args: argparse.Namespace, mode: str) -> Any:
    if mode == "linprobe":  # RandomResizedCrop + flip only
        return create_transform(args.input_size, is_training=True, scale=(args.min_crop_scale, 1.0),
                                hflip=args.hflip, interpolation="bicubic", color_jitter=None, auto_augment=None, re_prob=0.0,
                                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    return _posterize_zero_bits(create_transform(
        args.input_size, is_training=True, scale=(args.min_crop_scale, 1.0), hflip=args.hflip, interpolation="bicubic",
        color_jitter=None, auto_augment=args.aa,
        re_prob=args.reprob, re_mode="pixel", re_count=1, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD))


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize with Pillow < 13's meaning of 0 bits (a black image) instead of Pillow 13's error."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_zero_bits(transform: Any) -> Any:
    """RandAugment 'inc1' asks timm's posterize for 0 bits at magnitude >= 10 (m9 +- 0.5 reaches it), which
    Pillow >= 13 refuses: give those ops of this transform the old behaviour (timm itself is left alone)."""
    from timm.data import auto_augment

    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


# --------------------------------------------------------------------------- data
def _image_folder(root: Path, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        expected = " (expected ImageFolder splits DATA/train/CLASS/* and DATA/val/CLASS/*)"
        if root.exists():
            raise DataError(f"data folder {root} is a file, not a folder{expected}")
        raise MissingDataError(f"data folder {root} does not exist{expected}")
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"data folder {root}: {e}") from None


def _differing(a: list[str], b: list[str]) -> str:
    only = sorted(set(a) - set(b))
    return f"{', '.join(only[:10])}{', ...' if len(only) > 10 else ''}" if only else "none"


def load_splits(data_path: str | Path, train_tf: Any, val_tf: Any) -> tuple[Any, Any]:
    """``DATA/train`` and ``DATA/val`` as ImageFolders with the same classes (or a clear error)."""
    root = Path(data_path).expanduser()
    train_set = _image_folder(root / "train", train_tf)
    val_set = _image_folder(root / "val", val_tf)
    if train_set.classes != val_set.classes:
        raise DataError(
            f"{root / 'val'} has other classes than {root / 'train'}: only in train: "
            f"{_differing(train_set.classes, val_set.classes)}; only in val: "
            f"{_differing(val_set.classes, train_set.classes)}")
    return train_set, val_set


def val_loader(dataset: Any, backend: TorchBackend, batch: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, sampler=backend.eval_sampler(dataset),
                      num_workers=workers, pin_memory=backend.name == "cuda", drop_last=False)


# --------------------------------------------------------------------------- model
def fold_probe_head(state: dict[str, torch.Tensor], eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """``head = Sequential(BatchNorm1d(affine=False), Linear)`` -> one plain ``head`` Linear (exact in eval mode)."""
    out = {k: v for k, v in state.items() if not k.startswith("head.")}
    mean, var = state["head.0.running_mean"].double(), state["head.0.running_var"].double()
    weight, bias = state["head.1.weight"].double(), state["head.1.bias"].double()
    inv_std = (var + eps).rsqrt()
    out["head.weight"] = (weight * inv_std).to(state["head.1.weight"].dtype)
    out["head.bias"] = (bias - weight @ (mean * inv_std)).to(state["head.1.bias"].dtype)
    return out


def build_model(args: argparse.Namespace, mode: str, num_classes: int) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The timm classifier from the source, and the checkpoint metadata that rebuilds it."""
    from .timm_convert import create_timm_model

    global_pool = args.global_pool if mode == "finetune" else "token"
    drop_path = args.drop_path if mode == "finetune" else 0.0
    scratch = mode == "finetune" and args.from_scratch
    model, converted, missing = create_timm_model(args.source, num_classes, global_pool=global_pool,
                                                  img_size=args.input_size, pretrained=not scratch,
                                                  drop_path_rate=drop_path)
    name, arch_kwargs = converted.timm_model, converted.timm_kwargs
    if mode == "linprobe":
        nn.init.trunc_normal_(model.head.weight, std=LINPROBE_HEAD_INIT_STD)
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
        for n, p in model.named_parameters():
            p.requires_grad = n.startswith("head.")
        counts = [sum(p.numel() for p in model.parameters() if p.requires_grad is trained) for trained in (True, False)]
        log.info("linear probe: training %d head parameters, %d encoder parameters frozen", *counts)
    meta = {"format": CKPT_FORMAT, "mode": mode, "timm_model": name, "timm_kwargs": arch_kwargs,
            "num_classes": num_classes, "img_size": args.input_size, "global_pool": global_pool,
            "crop_pct": eval_crop_pct(args.input_size), "source": dict(converted.metadata),
            "init": "scratch" if scratch else "pretrained"}
    if scratch:
        log.info("%s with the architecture of %s, randomly initialised (--from-scratch)", name, args.source)
    else:
        log.info("%s from %s: %s; initialised here: %s", name, args.source,
                 converted.report().replace("\n", "; "), ", ".join(missing) or "nothing")
    return model, converted, meta


def plain_state_dict(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return fold_probe_head(state) if mode == "linprobe" else state


def make_optimizer(model: nn.Module, args: argparse.Namespace, mode: str, backend: TorchBackend) -> torch.optim.Optimizer:
    if mode == "finetune":
        return create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay,
                                   layer_decay=args.layer_decay,
                                   **backend.optimizer_options())
    # MAE's LARS: trust ratio (and weight decay) on the weight, always; plain momentum SGD on the bias
    head = model.head[1]
    return Lars([{"params": [head.weight], "always_adapt": True},
                 {"params": [head.bias], "always_adapt": False, "weight_decay": 0.0}],
                lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, trust_coeff=0.001)


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


# --------------------------------------------------------------------------- checkpoints
def load_classifier_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ``lsmae finetune``/``lsmae linprobe`` (of a run folder: its ``best.pth``), read by
    the one safe loader; anything else is a :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pth"
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of `lsmae finetune`/`lsmae linprobe` (for an MAE "
                              "checkpoint, fine-tune it first)")
    return ckpt


def create_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The plain timm model of a finetune/linprobe checkpoint, weights loaded strictly."""
    import timm

    model = timm.create_model(ckpt["timm_model"], pretrained=False, num_classes=ckpt["num_classes"],
                              global_pool=ckpt["global_pool"], img_size=ckpt["img_size"], **ckpt["timm_kwargs"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model


def _resume_state(args: argparse.Namespace, output_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    if args.resume == "auto":
        path = output_dir / "last.pth"
        if not path.exists():
            return None
    elif args.resume:
        path = Path(args.resume)
    else:
        return None
    ckpt = load_classifier_checkpoint(path)
    if "optimizer" not in ckpt:
        raise LsmaeError(f"{path}: holds no optimizer state (best.pth is weights only): resume from last.pth")
    return path, ckpt


def _check_resumable(path: Path, ckpt: dict[str, Any], meta: dict[str, Any], classes: list[str]) -> None:
    for key in ("mode", "timm_model", "timm_kwargs", "num_classes", "img_size", "global_pool", "init"):
        if ckpt.get(key, "pretrained" if key == "init" else None) != meta[key]:
            raise LsmaeError(f"{path} was written by another run ({key} {ckpt.get(key)!r}, this run {meta[key]!r}): "
                             "use another --output-dir, or --resume '' to start over there")
    old, new = ckpt.get("source", {}).get("source_sha256"), meta["source"].get("source_sha256")
    if old and new and old != new:
        raise LsmaeError(f"{path} was fine-tuned from {ckpt['source'].get('source')} (sha256 {old[:12]}), not from "
                         f"{meta['source'].get('source')} (sha256 {new[:12]}): use another --output-dir")
    if ckpt.get("classes") != classes:
        raise LsmaeError(f"{path} was trained on other classes than this data set: use another --output-dir")


# --------------------------------------------------------------------------- training
def _uses_mixup(args: argparse.Namespace, mode: str) -> bool:
    return mode == "finetune" and (args.mixup > 0 or args.cutmix > 0)


class Classification:
    """The classifier's cross-entropy (mixup/cutmix and label smoothing as the recipe says; a linear
    probe computes the frozen features without autograd and trains, and all-reduces, the head only).
    Each epoch ends with top-1/top-5 on the validation set, ``best.pth`` when top-1 improved, and the
    resume checkpoint ``last.pth``."""

    def __init__(self, model: nn.Module, mode: str, args: argparse.Namespace, backend: TorchBackend,
                 dtype: torch.dtype | None, vloader: DataLoader, base: dict[str, Any], best: dict[str, Any]) -> None:
        self.classifier, self.mode, self.args, self.backend, self.dtype = model, mode, args, backend, dtype
        self.model = backend.wrap_model(model.head if mode == "linprobe" else model)
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
                features = self.classifier.forward_head(self.classifier.forward_features(images), pre_logits=True)
            return self.criterion(self.model(features.float()), target)
        with self.backend.autocast(self.dtype):
            return self.criterion(self.model(images), target)

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
    resolve_recipe(args, mode, _source_width(args.source))
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
                  "--precision (fp16 overflows most)")

    best = {"top1": -1.0, "top5": 0.0, "epoch": -1}
    resume = _resume_state(args, output_dir)
    if resume is not None:
        path, ckpt = resume
        _check_resumable(path, ckpt, meta, meta["classes"])
        if mode == "linprobe":
            state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}
            state.update({f"head.{k}": v for k, v in ckpt["probe_head"].items()})
        else:
            state = ckpt["model"]
        model.load_state_dict(state, strict=True)
        trainer.resume(ckpt)
        best = dict(ckpt["best"])
        log.info("resumed from %s (epoch %d done, best top-1 %.2f%% at epoch %d)", path, ckpt["epoch"] + 1,
                 100 * best["top1"], best["epoch"] + 1)

    log.info("%s %s: %d classes, %d train / %d val images at %dpx; %d devices x batch %d x %d accumulation = %d "
             "per update, lr %.3g (blr %.3g), %d epochs (%d warmup), precision %s, %d updates/epoch",
             mode, meta["timm_model"], num_classes, len(train_set), len(val_set), args.input_size,
             backend.world_size, batch, accum, batch * accum * backend.world_size, args.lr, args.blr, args.epochs,
             args.warmup_epochs, precision_name(dtype), trainer.updates_per_epoch)
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
    val_set = _image_folder(Path(data_path).expanduser() / "val", eval_transform(ckpt["img_size"]))
    if ckpt.get("classes") and val_set.classes != ckpt["classes"]:
        raise DataError(f"{Path(data_path) / 'val'} has other classes than the checkpoint was trained on: only in "
                        f"the checkpoint: {_differing(ckpt['classes'], val_set.classes)}; only in val: "
                        f"{_differing(val_set.classes, ckpt['classes'])}")
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


def main(argv: list[str] | None = None) -> int:
    return report_errors("finetune", run, build_parser("finetune").parse_args(argv), "finetune")


if __name__ == "__main__":
    sys.exit(main())
