"""Command line of the pretraining engine: ``python -m pretrain`` / ``lsmae pretrain``.

The options are defined without importing torch; :func:`run` imports the engine.
"""
from __future__ import annotations

import argparse
from typing import Any

from pretrain.configs import from_namespace
from pretrain.errors import report_errors
from pretrain.models.archs import list_models
from pretrain.pretraining_config import PretrainConfig
from pretrain.shared_options import TASKS, add_shared

EXAMPLES = """\
examples:
  # the release recipe (ViT-B on ImageNet-1k, 448px, 2x2 mask blocks) on 8 GPUs per node
  torchrun --nproc_per_node 8 -m bridges pretrain --model mae_vit_base_patch16_dec384d12h8b \\
      --data-path /data/imagenet --input-size 448 --mask-downsampling 2 --epochs 800 \\
      --output-dir runs/vitb_in1k
  # COCO train2017 + unlabeled2017 repeated 5x ("dup5")
  torchrun --nproc_per_node 8 -m bridges pretrain --data-path /data/coco/train2017 /data/coco/unlabeled2017 \\
      --repeat 5 --epochs 800 --output-dir runs/vitb_coco
  # a TPU VM, or every host of a pod: one process per host drives all of its TPU devices (SPMD,
  # the batch sharded over them); --batch-size counts per device
  PJRT_DEVICE=TPU lsmae pretrain --device xla --data-path /data/imagenet ...
Runs resume with --resume auto (the default) from the newest checkpoint in --output-dir.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and masking")
    g.add_argument("--model", default="mae_vit_base_patch16_dec384d12h8b", metavar="NAME",
                   help=f"architecture (default %(default)s); one of {', '.join(list_models())}")
    g.add_argument("--input-size", type=int, default=448, help="image size (default %(default)s)")
    g.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of patches masked (default %(default)s)")
    g.add_argument("--mask-downsampling", type=int, default=2,
                   help="mask k x k blocks of patches (default %(default)s: 32x32-pixel units at patch 16)")
    g.add_argument("--decoder-downsampling", type=int, default=1, help="decoder token downsampling (default 1)")
    g.add_argument("--no-norm-pix-loss", dest="norm_pix_loss", action="store_false",
                   help="regress raw pixels instead of per-patch normalised ones")
    g.add_argument("--no-k-bias", action="store_true", help="BEiT-style attention without a key bias")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations to save memory")
    add_shared(g, "pretrain", "compile", "Compiles the model in place; not with --device xla, where the whole step "
                                         "is compiled already")

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", required=True, metavar="DIR",
                   help="ImageFolder roots (DIR/train is used if present) or flat image folders")
    g.add_argument("--repeat", type=int, default=1, help="repeat the data set N times per epoch (COCO: 5)")
    g.add_argument("--min-crop-scale", type=float, default=0.2, help="RandomResizedCrop lower scale (default 0.2)")
    add_shared(g, "pretrain", "workers", "On XLA a host's process runs this many per device it drives, up to its "
                                         "CPU count")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=800)
    g.add_argument("--warmup-epochs", type=int, default=40)
    g.add_argument("--effective-batch-size", type=int, default=4096,
                   help="images per optimizer update over all devices (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="per-device batch (effective = per-device x devices x accumulation); inferred from the "
                        "effective batch when omitted")
    g.add_argument("--accum-iter", type=int, default=None, help="gradient accumulation steps (inferred if omitted)")
    g.add_argument("--blr", type=float, default=1.5e-4, help="base lr: lr = blr * effective batch / 256")
    g.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    add_shared(g, "pretrain", "precision")
    add_shared(g, "pretrain", "seed")

    g = p.add_argument_group("run")
    add_shared(g, "pretrain", "device")
    g.add_argument("--output-dir", default=TASKS["pretrain"].output_dir,
                   help="checkpoints and logs (default %(default)s)")
    add_shared(g, "pretrain", "resume", "'auto' takes the newest checkpoint that loads")
    g.add_argument("--ckpt-interval", type=int, default=20, help="save every N epochs and at the end")
    g.add_argument("--print-freq", type=int, default=20, help="progress line every N steps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pretrain", description="Long-sequence MAE pretraining.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> Any:
    """The command line's edge: the parsed options as a :class:`PretrainConfig`, run by the API."""
    config = from_namespace(PretrainConfig, args)  # its checks before torch is imported
    from pretrain.pretraining import pretrain

    return pretrain(config)


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain``: exit status 0, or 1 with a one-line error."""
    return report_errors("pretrain", run, build_parser().parse_args(argv))
