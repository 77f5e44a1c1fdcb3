"""Segmentation benchmark: ``lsmae segment``'s training step, its input pipeline and both together.

    lsmae bench segment                           # UperNet ViT-B, 512 crops, batch 8 on a GPU (2 on a CPU)
    lsmae bench segment --data synthetic --compile
    lsmae bench segment --model mae_vit_large_patch16_dec512d16h8b --compile --data /data/ADEChallengeData2016
    lsmae bench segment --model demo                  # the demo architecture (its recipe: 64 px crops)

1. The step, on synthetic device tensors (uint8 crops, labels), each configuration in its own
   process, taking turns: ``stock``: the model as transformers' unmodified BEiT modules build it (the
   same weights; relative position bias and loss as they compute them), at the precision ``lsmae
   segment`` runs by default (``--precision auto``); ``fp32``/``bf16``/``fp16``: ``lsmae segment``'s model
   (:func:`bridges.segmentation.model.convert_to_upernet`) at that precision. Both take the command's
   step: normalisation on the device, the loss with the FCN auxiliary head, fused AdamW over the
   recipe's layer-decay groups (:func:`bridges.segmentation.training.param_groups`), a GradScaler for
   fp16; ``+compile``: as ``lsmae segment --compile``. Not timed: the lr schedule and the loss
   bookkeeping. TFLOP/s and MFU use the analytic count of :mod:`bridges.segmentation.flops` (the ViT
   on every token, the neck, the UperNet and FCN heads).
2. The input pipeline alone: images per second of one data-loader worker (one thread) through
   ``lsmae segment``'s training pipeline (:class:`bridges.segmentation.data.TrainingCrops`: random
   resize, category-balanced crop, flip, photometric distortion, padding), on generated ADE20K-like
   JPEGs (683x512, a third portrait) with PNG masks, or ``--data``'s training split (ADE20K layout).
3. End to end: the fastest configuration fed by ``--workers`` loader processes (the command's loader:
   pinned memory on GPUs, torch's collate), next to its synthetic rate in the same process; and how many
   workers per device its step rate needs.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bridges.bench import training_bench
from bridges.bench.training_bench import TrainingBench
from bridges.segmentation.config import SegmentConfig
from bridges.segmentation.recipes import RECIPES, SegRecipe, get_recipe, recipe_for_depth
from pretrain.bench import driver
from pretrain.errors import LsmaeError, report_errors
from pretrain.models.archs import model_config
from pretrain.shared_options import TASKS

GPU_BATCH, CPU_BATCH = 8, 2
COMMAND_WORKERS = TASKS["segment"].default_workers()  # lsmae segment's default


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The bench's options; each configuration's process parses the same ones (and its CONFIG)."""
    p = argparse.ArgumentParser(prog="lsmae bench segment", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=training_bench.DEFAULT_MODEL, help=training_bench.MODEL_HELP)
    p.add_argument("--config", choices=sorted(RECIPES), default=None,
                   help="lsmae segment's recipe: its crop size and classes (default: the encoder depth's, as the "
                        "command chooses it)")
    training_bench.add_options(
        p, "stock", GPU_BATCH, CPU_BATCH, f"lsmae segment's --num-workers default ({COMMAND_WORKERS} here)",
        "a folder in the ADE20K layout for the pipeline and end-to-end parts, its images/training and "
        "annotations/training read (default: generated ADE20K-like JPEGs and PNG masks); 'synthetic': the step only",
        images=32)
    return p


def segment_recipe(model: str, config: str, batch_size: int) -> SegRecipe:
    """The recipe of ``lsmae segment MODEL --config CONFIG --batch-size N`` with every other default."""
    from bridges.segmentation.command import resolve_recipe

    return resolve_recipe(SegmentConfig(source=model, recipe=config, batch_size=batch_size))[0]


def training_crops(recipe: SegRecipe, folder: Path) -> Any:
    """The training split of the ADE20K layout under ``folder`` through ``lsmae segment``'s pipeline."""
    from bridges.segmentation.data import MaskFolder, TrainingCrops
    from bridges.segmentation.data_spec import LabelRule, layout_split

    return TrainingCrops(MaskFolder(layout_split(folder, "train"), LabelRule(recipe.num_labels)), recipe)


class SegmentBench(TrainingBench):
    prog, step_module, baseline = "lsmae bench segment", "bridges.bench.segment_step", "stock"

    def __init__(self, recipe: SegRecipe) -> None:
        self.recipe = recipe

    def data(self, args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
        from bridges.bench.sample_sets import ADE20K_SIZE, write_ade20k_like

        if args.data is None:
            write_ade20k_like(tmp, args.images, self.recipe.num_labels)
            width, height = ADE20K_SIZE
            return tmp, (f"{args.images} generated ADE20K-like JPEGs ({width}x{height} and {height}x{width}) with "
                         "PNG masks")
        return Path(args.data), f"up to {args.images} images from {Path(args.data) / 'images' / 'training'}"

    def pipeline(self, args: argparse.Namespace, folder: Path, what: str) -> driver.Pipeline:
        from torch.utils.data import Subset, default_collate

        from pretrain.bench.data import worker_rates

        crops = training_crops(self.recipe, folder)
        if len(crops) > args.images:
            crops = Subset(crops, range(0, len(crops), len(crops) // args.images)[:args.images])
        rates = worker_rates({"ours": (crops, default_collate)}, args.batch_size, args.rounds)
        return self.one_worker(rates, f"{what} -> {self.recipe.crop_size}px crops (resize, crop, flip, photometric "
                                      "distortion)")


def main(argv: list[str] | None = None) -> None:
    args = build_parser(__doc__).parse_args(argv)
    args.model = training_bench.architecture(args.model)
    cfg = model_config(args.model)
    args.config = args.config or recipe_for_depth(cfg["depth"])
    if args.config is None:
        raise LsmaeError(f"no recipe for a {cfg['depth']}-block encoder: name one with --config")
    training_bench.resolve_defaults(args, SegmentBench.baseline, GPU_BATCH, CPU_BATCH, COMMAND_WORKERS)
    if args.batch_size < 2:
        raise LsmaeError(f"--batch-size {args.batch_size}: the pyramid pooling's BatchNorm needs 2 images or more")
    recipe = get_recipe(args.config)
    grid = recipe.crop_size // cfg["patch_size"]
    header = (f"lsmae segment's model, UperNet ({recipe.name}) on {args.model}'s encoder at {recipe.crop_size}px crops "
              f"({grid * grid + 1} tokens), {recipe.num_labels} classes, batch {args.batch_size}, {args.device_name}; "
              f"{args.rounds} rounds of {args.steps} timed steps per configuration, in turns")
    own = ["--model", args.model, "--config", args.config]
    driver.run(SegmentBench(recipe), args, training_bench.worker_argv(args, own), header)


if __name__ == "__main__":
    raise SystemExit(report_errors("lsmae bench segment", main))
