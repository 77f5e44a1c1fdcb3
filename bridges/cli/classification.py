"""``lsmae finetune``, ``lsmae linprobe`` and ``lsmae eval``: their options (argparse only, no torch;
defaults from :mod:`bridges.classification.recipes`) and runs, which import the training code
(:mod:`bridges.classification.finetune`) when they start."""
from __future__ import annotations

import argparse
import textwrap
from typing import Any

from bridges.classification.recipes import AUTO_BATCH_CAP, FINETUNE_BY_WIDTH, FINETUNE_COMMON, LINPROBE
from pretrain.configs import from_namespace
from pretrain.shared_options import TASKS, add_shared

EXAMPLES = """\
examples:
  # ViT-B from the zoo on 8 GPUs (MAE recipe: 100 epochs, effective batch 1024, blr 5e-4, layer decay 0.65)
  torchrun --nproc_per_node 8 -m bridges finetune vit_base/in1k/1600 --data-path /data/imagenet \\
      --output-dir runs/ft_vitb
  # one GPU, ViT-L at 448px: the 1024 images of an update as 16 per step x 64 accumulation steps
  lsmae finetune vit_large/in1k/1600 --data-path /data/imagenet --input-size 448 --batch-size 16 \
      --grad-checkpointing --output-dir runs/ft_vitl
  # a checkpoint of your own (release format or `lsmae export`), fewer epochs
  lsmae finetune vitb_mine.pth --data-path /data/imagenet --epochs 50 --output-dir runs/ft_mine
  # linear probing (LARS, effective batch 16384, 90 epochs); under torchrun use `-m bridges linprobe`
  lsmae linprobe vit_large/in1k/1600 --data-path /data/imagenet --output-dir runs/lin_vitl
  # top-1/top-5 of a run's best checkpoint on DATA/val
  lsmae eval runs/ft_vitb/best.pth --data-path /data/imagenet
DATA holds ImageFolder splits DATA/train/CLASS/*.jpg and DATA/val/CLASS/*.jpg.
Runs resume by default (--resume auto) from OUTPUT_DIR/last.pth: rerun the same command.
"""


# --------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser, mode: str = "finetune") -> None:
    """Options of ``lsmae finetune`` (``mode='finetune'``) or ``lsmae linprobe``; recipe defaults
    left as None here are filled in by :func:`resolve_recipe` from the architecture."""
    ft = mode == "finetune"
    p.add_argument("source", help="zoo id (e.g. vit_base/in1k/1600) or MAE checkpoint file (release format or "
                                   "`lsmae export`)")
    g = p.add_argument_group("data")
    g.add_argument("--data-path", required=True, metavar="DATA", help="ImageFolder root with train/ and val/")
    g.add_argument("--input-size", type=int, default=224,
                   help="image size; the position embeddings are resampled to its grid (default %(default)s)")
    add_shared(g, mode, "workers")
    g.add_argument("--min-crop-scale", type=float, default=0.08,
                   help="RandomResizedCrop's smallest area fraction (default %(default)s, timm's and MAE's; "
                        "raise it for small or low-resolution images)")
    g.add_argument("--hflip", type=float, default=0.5,
                   help="horizontal flip probability of the training images (default %(default)s)")

    g = p.add_argument_group("recipe (defaults: MAE's " + ("FINETUNE.md, ViT-B column; ViT-L has its own)"
                                                           if ft else "main_linprobe.py)"))
    r = {**FINETUNE_COMMON, **FINETUNE_BY_WIDTH[None]} if ft else LINPROBE
    g.add_argument("--epochs", type=int, default=None,
                   help=f"default {r['epochs']}" + (" (ViT-L 50)" if ft else ""))
    g.add_argument("--warmup-epochs", type=int, default=None, help=f"default {r['warmup_epochs']}")
    g.add_argument("--effective-batch-size", type=int, default=None,
                   help=f"images per optimizer update over all devices (default {r['effective_batch_size']})")
    g.add_argument("--batch-size", type=int, default=None,
                   help="per-device batch (default: the largest divisor of the per-device share up to "
                        f"{AUTO_BATCH_CAP[mode]}; the rest is gradient accumulation)")
    g.add_argument("--accum-iter", type=int, default=None, help="gradient accumulation steps (inferred if omitted)")
    g.add_argument("--blr", type=float, default=None,
                   help=f"base lr: lr = blr * effective batch / 256 (default {r['blr']:g}" + (", ViT-L 1e-3)"
                                                                                            if ft else ")"))
    g.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=None, help=f"cosine floor (default {r['min_lr']:g})")
    g.add_argument("--weight-decay", type=float, default=None, help=f"default {r['weight_decay']:g}")
    if ft:
        g.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay (default 0.65, ViT-L 0.75)")
        g.add_argument("--drop-path", type=float, default=None, help="stochastic depth (default 0.1, ViT-L 0.2)")
        g.add_argument("--smoothing", type=float, default=None, help=f"label smoothing (default {r['smoothing']})")
        g.add_argument("--aa", default=None, metavar="POLICY",
                       help=f"timm auto-augment policy, 'none' to disable (default {r['aa']})")
        g.add_argument("--reprob", type=float, default=None, help=f"random erasing probability (default {r['reprob']})")
        g.add_argument("--mixup", type=float, default=None, help=f"mixup alpha, 0 = off (default {r['mixup']})")
        g.add_argument("--cutmix", type=float, default=None, help=f"cutmix alpha, 0 = off (default {r['cutmix']})")
        g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations to save memory")
        g.add_argument("--from-scratch", action="store_true",
                       help="random initialisation of SOURCE's architecture (timm's): the baseline that shows what "
                            "pretraining adds for the same budget")
        g.add_argument("--global-pool", choices=["avg", "token"], default="avg",
                       help="avg (MAE fine-tuning: patch-token average + fc_norm) or token (default %(default)s)")
    add_shared(g, mode, "precision")
    add_shared(g, mode, "seed")

    g = p.add_argument_group("run")
    add_shared(g, mode, "device")
    g.add_argument("--output-dir", default=TASKS[mode].output_dir, help="checkpoints and logs (default %(default)s)")
    add_shared(g, mode, "resume", "'auto' takes OUTPUT_DIR/last.pth")
    g.add_argument("--print-freq", type=int, default=20, help="progress line every N steps (default %(default)s)")
    add_shared(g, mode, "compile", "Compiles " + ("the classifier" if ft else "the frozen encoder"))


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="best.pth/last.pth of a finetune or linprobe run (or the run folder: best.pth)")
    p.add_argument("--data-path", required=True, metavar="DATA", help="ImageFolder root; DATA/val is measured")
    p.add_argument("--batch-size", type=int, default=64, help="per-device batch (default %(default)s)")
    for name in ("workers", "precision", "device"):
        add_shared(p, "eval", name)


def build_parser(mode: str = "finetune") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"lsmae {mode}",
        description=DESCRIPTIONS[mode], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, mode)
    return p


DESCRIPTIONS = {k: textwrap.fill(v, 100) for k, v in {
    "finetune": "Fine-tune an MAE encoder as a timm ViT classifier with MAE's recipe (RandAugment, mixup/cutmix, "
                "label smoothing, layer-wise lr decay, drop path, AdamW, cosine schedule), evaluating top-1/top-5 "
                "on DATA/val every epoch. Defaults follow the architecture (ViT-B or ViT-L column of MAE's "
                "FINETUNE.md); every one can be overridden.",
    "linprobe": "Linear probing of an MAE encoder (MAE's main_linprobe.py): frozen timm ViT, cls-token features, "
                "BatchNorm (no affine) + linear head trained with LARS, evaluated on DATA/val every epoch.",
    "eval": "Top-1/top-5 accuracy of a finetune/linprobe checkpoint on DATA/val.",
}.items()}


def _describe(p: argparse.ArgumentParser, mode: str) -> None:
    p.description, p.epilog, p.formatter_class = DESCRIPTIONS[mode], EXAMPLES, argparse.RawDescriptionHelpFormatter


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    _describe(p, "finetune")
    add_arguments(p, "finetune")


def add_linprobe_arguments(p: argparse.ArgumentParser) -> None:
    _describe(p, "linprobe")
    add_arguments(p, "linprobe")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    _describe(p, "eval")
    _eval_options(p)


def run_finetune(args: argparse.Namespace) -> Any:
    from bridges.classification import FinetuneConfig, finetune

    return finetune(from_namespace(FinetuneConfig, args))


def run_linprobe(args: argparse.Namespace) -> Any:
    from bridges.classification import LinprobeConfig, linprobe

    return linprobe(from_namespace(LinprobeConfig, args))


def run_eval(args: argparse.Namespace) -> Any:
    from bridges.classification import EvalConfig, evaluate

    return evaluate(from_namespace(EvalConfig, args))
