"""``lsmae detect``: its options (standard library only: the ``lsmae`` parser registers them without
importing torch or detectron2) and its run, which calls :func:`bridges.detection.detect`."""
from __future__ import annotations

import argparse
import json
from typing import Any

from bridges.cli.intermixed import IntermixedParser
from bridges.detection.configs import config_names
from pretrain.configs import from_namespace
from pretrain.errors import LsmaeError
from pretrain.shared_options import add_shared

DESCRIPTION = ("Fine-tune a long-seq MAE encoder as a ViTDet (Cascade) Mask R-CNN on COCO, or on a COCO-format set of "
               "your own (--train, --val), with Detectron2. SOURCE "
               "is fetched, verified and converted; train.init_checkpoint and model.backbone.net.pretrain_img_size "
               "are set from it; the checkpoint must load into the model without gaps (load contract) before "
               "anything is launched.")
EXAMPLES = """examples:
  lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --num-gpus 8 \\
      train.output_dir=out/vitl
  lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --num-gpus 4 --batch-size 16 \\
      --grad-checkpointing train.output_dir=out/vitl-b16 --dry-run      (the plan: lr, schedule, devices)
  lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --eval-only \\
      train.init_checkpoint=out/vitl/model_final.pth
  lsmae detect vit_base/coco/4000 --config mask_rcnn_vitdet_b_100ep train.device=cpu train.max_iter=2 \\
      dataloader.train.total_batch_size=1 train.output_dir=out/smoke      (CPU: for testing only)
  lsmae detect vit_base/coco/4000 --config mask_rcnn_vitdet_b_100ep --batch-size 16 \\
      --train shapes/train.json:shapes/train --val shapes/val.json:shapes/val train.output_dir=out/shapes

COCO is read from $DETECTRON2_DATASETS/coco/{train2017,val2017,annotations} (Detectron2's builtin
coco_2017_train / coco_2017_val). --train/--val replace it by COCO-format sets of your own: the heads
get their classes (any category ids), AP is reported per category name, and the plan (--dry-run)
shows the sets, their classes and how many passes over the training images max_iter makes.
Overrides are KEY=VALUE on the LazyConfig (prefix + to add a key the config does not have), applied
after the --batch-size scaling. In a LazyConfig of your own, train.init_checkpoint = "lsmae://ID"
loads a zoo entry converted for ViTDet.
"""


# --------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.__class__ = IntermixedParser
    p.add_argument("source", metavar="SOURCE",
                   help="zoo id (e.g. vit_large/coco/4000), demo, an MAE checkpoint file, or a file written by "
                        "`lsmae convert --to vitdet`")
    p.add_argument("--config", required=True, metavar="NAME|PATH",
                   help="a shipped config (" + (", ".join(config_names()) or "see detection_configs/")
                        + ") or a LazyConfig .py file")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="processes per machine (default: the visible GPUs; 1 on CPU)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num-machines-1)")
    p.add_argument("--dist-url", default=None,
                   help="rendezvous URL, e.g. tcp://HOST:PORT (needed with several machines; default: a free "
                        "local port)")
    p.add_argument("--train", metavar="JSON:IMAGE_DIR",
                   help="train on this COCO-format instance set (annotation file and the folder of its images; "
                        "its own classes, any category ids) instead of COCO train2017; needs --val")
    p.add_argument("--val", metavar="JSON:IMAGE_DIR",
                   help="evaluate on this COCO-format set (the classes of --train) instead of COCO val2017: AP per "
                        "category name")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="total images per step over all GPUs and machines (the shipped recipes: 64): lr x N/recipe; "
                        "max_iter, lr steps, eval and checkpoint periods x recipe/N (the warmup, a fraction of "
                        "max_iter, follows)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="activation checkpointing in the ViT blocks (model.backbone.net.use_act_checkpoint=True): "
                        "recomputed in the backward pass, less GPU memory, slower steps; needs fairscale")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (batch, lr, schedule, devices; the --train/--val sets) and exit: "
                        "nothing is fetched or converted; of the data, only the --train/--val annotation files are "
                        "read (and their images looked for)")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as one JSON object")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate train.init_checkpoint (e.g. OUTPUT/model_final.pth) on the test set (--val when "
                        "given)")
    p.add_argument("--save-pictures", type=int, default=0, metavar="N",
                   help="after the (final) evaluation, draw the predictions scoring at least --score-thresh (boxes, "
                        "masks, class names; Detectron2's Visualizer) on the first N validation images, one PNG "
                        "each named after its image, in train.output_dir/pictures (default: 0, none)")
    p.add_argument("--score-thresh", type=float, default=0.5, metavar="S",
                   help="the lowest score --save-pictures draws, 0..1 (default: 0.5)")
    add_shared(p, "detect", "resume", "The output folder is train.output_dir")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="LazyConfig overrides, applied last, e.g. train.output_dir=out/vitl train.eval_period=10000")


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = DESCRIPTION, EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(p)


def run_detect(args: argparse.Namespace) -> Any:
    """The plan (--dry-run, --json) or the run, by the API."""
    from bridges.detection.config import DetectConfig

    if args.json and not args.dry_run:
        raise LsmaeError("--json prints the plan of --dry-run: add --dry-run")
    config = from_namespace(DetectConfig, args)
    if args.dry_run:
        from bridges.detection import detect_plan
        from bridges.detection.plan import plan_lines

        report = detect_plan(config)
        print(json.dumps(report) if args.json else "\n".join(plan_lines(report)))
        return report
    from bridges.detection import detect

    return detect(config)
