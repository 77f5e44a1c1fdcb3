"""``lsmae segment``: its options (argparse only: registering them imports no torch) and its run."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bridges.cli.intermixed import IntermixedParser
from bridges.segmentation.recipes import RECIPES, overridable_keys
from pretrain.configs import from_namespace
from pretrain.errors import LsmaeError
from pretrain.shared_options import TASKS, add_shared

DESCRIPTION = ("Fine-tune a long-seq MAE encoder as UperNet semantic segmentation on ADE20K (transformers' BEiT "
               "pieces, the recipe's block taps), evaluating mIoU/mAcc/aAcc as mmsegmentation does (sliding window, "
               "logits at the annotation's resolution). Progress counts iterations; evaluation and checkpoints "
               "every N iterations; runs resume where they stopped. The result is an ordinary transformers folder.")
EXAMPLES = """examples:
  lsmae segment vit_base/coco/4000 --config upernet_vit_b_ade20k_160k --data-path /data/ADEChallengeData2016
  torchrun --nproc_per_node 8 -m bridges segment vit_base/coco/4000 --config upernet_vit_b_ade20k_160k \\
      --data-path /data/ADEChallengeData2016 --output-dir runs/seg_vitb
  lsmae segment vit_large/coco/4000 --config upernet_vit_l_ade20k_160k --data-path ... --batch-size 8 \\
      --grad-checkpointing --dry-run          # the plan (lr, iterations, periods) for 8 images per step
  lsmae segment vit_large/coco/4000 --dry-run lr=5e-5 layer_decay=0.85      (overrides, shown in the plan)
  lsmae segment --eval-only runs/seg_vitb/model_final --data-path /data/ADEChallengeData2016 [--aug-test]

DATA is the ADE20K scene-parsing layout: images/{training,validation}/*.jpg and
annotations/{training,validation}/*.png (150 classes; annotation 0 = "other" is ignored).
--batch-size N scales the recipe to N images per step: lr x N/16, iterations, warmup and periods x 16/N.
KEY=VALUE overrides set any other recipe value, e.g. lr=1e-4 layer_decay=0.9 drop_path=0.3; the ViT-L
recipe is an estimate (no published values for an MAE ViT-L): --dry-run shows each value's source.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.__class__ = IntermixedParser
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="zoo id (e.g. vit_base/coco/4000), demo, or an MAE checkpoint file (not with --eval-only)")
    p.add_argument("--config", dest="recipe", choices=sorted(RECIPES), default=None,
                   help="recipe (default: by the encoder width, upernet_vit_b/l_ade20k_160k; demo for the demo model)")
    p.add_argument("--data-path", metavar="DATA", default=None,
                   help="a folder in the ADE20K layout: images/{training,validation} and "
                        "annotations/{training,validation}")
    p.add_argument("--train", metavar="IMAGES:MASKS", default=None,
                   help="training images and their PNG masks (same file names), instead of --data-path")
    p.add_argument("--val", metavar="IMAGES:MASKS", default=None, help="evaluation images and masks, with --train")
    p.add_argument("--num-labels", type=int, default=None, metavar="N",
                   help="classes after the reduction (ADE20K: 150); sizes the heads. Data of your own: give it")
    p.add_argument("--ignore-index", type=int, default=None, metavar="VALUE",
                   help="the mask value that is not scored (default 255)")
    p.add_argument("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
                   help="mask value 0 is ignored and k becomes class k-1, as ADE20K (default: on without --num-labels, "
                        "i.e. for the recipe's benchmark; off with it)")
    p.add_argument("--class-names", metavar="FILE", default=None,
                   help="one class name a line: per-class IoU is printed and logged under these names")
    p.add_argument("--output-dir", default=None,
                   help=f"checkpoints, logs, model_final, pictures (default {TASKS['segment'].output_dir}); with "
                        "--eval-only, where --save-pictures draws (default: MODEL_DIR)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="total images per step (default: the recipe's 16); lr and iteration counts are scaled")
    p.add_argument("--max-iter", type=int, default=None, help="override the (scaled) number of iterations")
    p.add_argument("--eval-period", type=int, default=None, help="override the (scaled) evaluation period")
    p.add_argument("--checkpoint-period", type=int, default=None, help="override the (scaled) checkpoint period")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations to save memory")
    add_shared(p, "segment", "compile", "Compiles the UperNet model; --eval-only refuses it")
    p.add_argument("--from-scratch", action="store_true",
                   help="the untrained MAE initialisation of SOURCE's architecture: the baseline for the same budget")
    p.add_argument("--eval-only", metavar="MODEL_DIR", default=None,
                   help="evaluate a folder written by `lsmae segment` or `lsmae convert --to upernet`")
    p.add_argument("--aug-test", action="store_true",
                   help="evaluate at the recipe's scales (0.5..1.75) with flips, averaging softmax probabilities")
    p.add_argument("--save-pictures", type=int, default=0, metavar="N",
                   help="after the final evaluation (and with --eval-only), draw the first N validation images as "
                        "image | ground truth | prediction (a colour per class, a legend of the classes present) into "
                        "OUTPUT_DIR/pictures (--eval-only without --output-dir: MODEL_DIR/pictures) as STEM.png, with "
                        "the prediction as a label PNG in the masks' values, STEM_pred.png (default 0: none)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit (no data, no weights)")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    for name in ("device", "precision", "workers"):
        add_shared(p, "segment", name)
    add_shared(p, "segment", "resume", "'auto' takes OUTPUT_DIR/last.pth")
    p.add_argument("--print-freq", type=int, default=50, help="progress line every N iterations (default %(default)s)")
    add_shared(p, "segment", "seed")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe values, applied last (after --batch-size scaling and --max-iter & co.), shown in the "
                        "plan and part of the run's identity: " + ", ".join(overridable_keys())
                        + "; tuples as comma lists, e.g. lr=1e-4 layer_decay=0.9 aug_test_scales=1,1.5")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsmae segment", description=DESCRIPTION, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog, p.formatter_class = DESCRIPTION, EXAMPLES, argparse.RawDescriptionHelpFormatter
    add_arguments(p)


def split_positionals(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """SOURCE and the KEY=VALUE overrides in any order: argparse gives the first positional to SOURCE, also
    when it is an override (or there is no SOURCE, as with --eval-only)."""
    given = ([args.source] if args.source is not None else []) + list(args.overrides)
    sources = [p for p in given if "=" not in p or Path(p).exists()]
    if len(sources) > 1:
        raise LsmaeError(f"one SOURCE, got {', '.join(sources)} (overrides are KEY=VALUE)")
    return (sources[0] if sources else None), [p for p in given if p not in sources]


def run_segment(args: argparse.Namespace) -> Any:
    """Training, the plan (--dry-run) or the evaluation of a model folder (--eval-only), by the API."""
    from bridges.segmentation.command import print_plan
    from bridges.segmentation.config import SegmentConfig, SegmentEvalConfig

    args.source, args.overrides = split_positionals(args)
    if args.eval_only:
        if args.train:
            raise LsmaeError("--eval-only reads only --val IMAGES:MASKS (or --data-path), not --train")
        if args.compile:
            raise LsmaeError("--compile compiles training steps: --eval-only runs the model uncompiled (its windows "
                             "take other sizes, each one a compilation)")
        from bridges.segmentation import evaluate_segmentation

        return evaluate_segmentation(from_namespace(SegmentEvalConfig, args))
    config = from_namespace(SegmentConfig, args)
    if args.dry_run:
        from bridges.segmentation import segment_plan

        return print_plan(segment_plan(config), args.json)
    from bridges.segmentation import segment

    return segment(config)
