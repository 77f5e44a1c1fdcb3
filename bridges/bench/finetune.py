"""Fine-tuning benchmark: ``lsmae finetune``'s training step, its input pipeline and both together.

    lsmae bench finetune                          # ViT-B at 224 px, batch 128 on a GPU (8 on a CPU)
    lsmae bench finetune --data synthetic --compile
    lsmae bench finetune --model mae_vit_large_patch16_dec512d16h8b --compile --data /data/imagenet --workers 16
    lsmae bench finetune --model demo --input-size 64    # the demo architecture

1. The step, on synthetic device tensors, each configuration in its own process, taking turns:
   ``release``: MAE's fine-tuning step as its main_finetune.py runs it (timm's ViT with the release's
   naive attention, ``fused_attn = False`` on every block; fp16 autocast with a GradScaler on GPUs,
   unscaled and its gradient norm computed each step as MAE's NativeScaler does, ``loss.item()`` and
   ``torch.cuda.synchronize()`` each step; foreach AdamW; on a CPU fp32, as MAE's CUDA autocast and
   scaler do nothing there); ``fp32``/``bf16``/``fp16``: ``lsmae finetune``'s step (the timm ViT the
   bridge builds, SDPA, autocast at that precision, fused AdamW with layer decay, mixup/cutmix and label
   smoothing as the recipe has them; a GradScaler for fp16); ``+compile``: as ``lsmae finetune --compile``.
   Both take the same mixup/cutmix and loss. Not timed: the lr schedule and the loss bookkeeping.
   TFLOP/s and MFU use the analytic FLOP count (:func:`pretrain.models.flops.vit_flops`).
2. The input pipeline alone: images per second of one data-loader worker (one thread) through
   ``lsmae finetune``'s training transform (RandAugment, random erasing) at the input size, on
   generated ImageNet-like JPEGs (500x375, a third portrait) or ``--data``'s ``train/``.
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
from bridges.classification.config import FinetuneConfig
from pretrain.bench import driver
from pretrain.errors import LsmaeError, report_errors
from pretrain.models.archs import model_config
from pretrain.shared_options import TASKS

GPU_BATCH, CPU_BATCH = 128, 8
COMMAND_WORKERS = TASKS["finetune"].default_workers()  # lsmae finetune's default


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The bench's options; each configuration's process parses the same ones (and its CONFIG)."""
    p = argparse.ArgumentParser(prog="lsmae bench finetune", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=training_bench.DEFAULT_MODEL, help=training_bench.MODEL_HELP)
    p.add_argument("--input-size", type=int, default=224, help="image size (default %(default)s, lsmae finetune's)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the head (default %(default)s)")
    training_bench.add_options(
        p, "release", GPU_BATCH, CPU_BATCH, f"lsmae finetune's --num-workers default ({COMMAND_WORKERS} here)",
        "an ImageFolder root with train/ for the pipeline and end-to-end parts (default: generated ImageNet-like "
        "JPEGs); 'synthetic': the step only", images=64)
    return p


def finetune_run(model: str, input_size: int) -> FinetuneConfig:
    """``lsmae finetune MODEL``'s config at this input size with every default, the recipe resolved for
    the architecture's width: what the command's functions take (the caller sets the source's weights)."""
    from bridges.classification.recipes import resolve_recipe

    return resolve_recipe(FinetuneConfig(source=model, data_path="unused", input_size=input_size),
                          model_config(model)["embed_dim"])


def training_images(run: FinetuneConfig, folder: Path) -> Any:
    """``folder/train`` through ``lsmae finetune``'s training transform."""
    from bridges.classification.data import image_folder, train_transform

    return image_folder(folder / "train", train_transform(run))


class FinetuneBench(TrainingBench):
    prog, step_module, baseline = "lsmae bench finetune", "bridges.bench.finetune_step", "release"

    def data(self, args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
        from bridges.bench.sample_sets import IMAGENET_SIZE, write_imagenet_like

        if args.data is None:
            width, height = IMAGENET_SIZE
            return write_imagenet_like(tmp, args.images), \
                f"{args.images} generated ImageNet-like JPEGs ({width}x{height} and {height}x{width})"
        return Path(args.data), f"up to {args.images} images from {Path(args.data) / 'train'}"

    def pipeline(self, args: argparse.Namespace, folder: Path, what: str) -> driver.Pipeline:
        from torch.utils.data import Subset, default_collate

        from pretrain.bench.data import worker_rates

        images = training_images(finetune_run(args.model, args.input_size), folder)
        if len(images) > args.images:  # evenly spread over the classes
            images = Subset(images, range(0, len(images), len(images) // args.images)[:args.images])
        rates = worker_rates({"ours": (images, default_collate)}, args.batch_size, args.rounds)
        return self.one_worker(rates, f"{what} -> {args.input_size}px crops (RandAugment, random erasing)")


def main(argv: list[str] | None = None) -> None:
    args = build_parser(__doc__).parse_args(argv)
    args.model = training_bench.architecture(args.model)
    training_bench.resolve_defaults(args, FinetuneBench.baseline, GPU_BATCH, CPU_BATCH, COMMAND_WORKERS)
    if args.batch_size % 2:
        raise LsmaeError(f"--batch-size {args.batch_size}: mixup/cutmix (the recipe's) need an even batch")
    run = finetune_run(args.model, args.input_size)
    grid = args.input_size // model_config(args.model)["patch_size"]
    header = (f"lsmae finetune's model, {args.model}'s encoder as a timm ViT at {args.input_size}px "
              f"({grid * grid + 1} tokens), {args.num_classes} classes, batch {args.batch_size}, {args.device_name}; "
              f"recipe: mixup {run.mixup:g}, cutmix {run.cutmix:g}, label smoothing {run.smoothing:g}, layer decay "
              f"{run.layer_decay:g}, drop path {run.drop_path:g}; {args.rounds} rounds of {args.steps} timed steps per "
              "configuration, in turns")
    own = ["--model", args.model, "--input-size", str(args.input_size), "--num-classes", str(args.num_classes)]
    driver.run(FinetuneBench(), args, training_bench.worker_argv(args, own), header)


if __name__ == "__main__":
    raise SystemExit(report_errors("lsmae bench finetune", main))
