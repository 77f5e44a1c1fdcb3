"""``lsmae`` subcommands that join the pretraining engine, the zoo and the converters.

Each command is an ``add_*_arguments`` function (argparse only: registering it imports no torch)
and a ``cmd_*`` function that imports its implementation when it runs; export, visualize and
convert print from the result objects of :mod:`bridges.operations`, which ``lsmae demo`` calls too.
"""
from __future__ import annotations

import argparse

from bridges.segmentation.recipes import ADE20K_CLASSES

CONVERT_TARGETS = ("timm", "vitdet", "upernet", "hf-mae", "hf-vit", "release")
BENCHMARKS = {"pretrain": "pretrain.bench.runner", "zoo": "bridges.bench.zoo", "cli": "bridges.bench.cli"}


# --------------------------------------------------------------------------- commands
def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def cmd_export(args: argparse.Namespace) -> None:
    from bridges.operations import export

    _print(export(args.run, args.output).lines())


def cmd_visualize(args: argparse.Namespace) -> None:
    from bridges.operations import visualize

    _print(visualize(args.checkpoint, args.images, args.output, args.mask_ratio, args.mask_downsampling, args.seed,
                     norm_pix=not args.raw_pixels).lines())


def cmd_convert(args: argparse.Namespace) -> None:
    from bridges.operations import convert

    _print(convert(args.source, args.to, args.output, args.img_size, args.global_pool, args.num_labels).lines())


def cmd_bench(args: argparse.Namespace) -> None:
    import importlib

    importlib.import_module(BENCHMARKS[args.target]).main(args.bench_args)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from pretrain.main_pretrain import run

    run(args)


def cmd_finetune(args: argparse.Namespace) -> None:
    from bridges.classification.finetune import run

    run(args, args.command)


def cmd_eval(args: argparse.Namespace) -> None:
    from bridges.classification.finetune import run_eval

    run_eval(args)


def cmd_detect(args: argparse.Namespace) -> None:
    from bridges.detection.detect import run

    run(args)


def cmd_segment(args: argparse.Namespace) -> None:
    from bridges.segmentation.command import run

    run(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from bridges.demo.chain import run

    run(args)


# --------------------------------------------------------------------------- arguments
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Strip optimizer, scaler and arguments from the newest checkpoint of a run folder (or from one "
                     "checkpoint file) and write {'model': state_dict}.")
    p.add_argument("run", help="run folder (its newest valid checkpoint) or a checkpoint file")
    p.add_argument("-o", "--output", required=True, help="output .pth")


def add_visualize_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Rows of: original | masked input | reconstruction | reconstruction with the visible patches "
                     "pasted, for a checkpoint with a decoder.")
    p.add_argument("checkpoint", help="a zoo id (e.g. demo) or a checkpoint file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--output", default="reconstruction.png")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--mask-downsampling", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw-pixels", action="store_true",
                   help="the model predicts raw pixels (trained without norm-pix loss)")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Convert a zoo id, an MAE checkpoint file (release format or `lsmae export`) or a transformers "
                     "ViTMAE/ViT folder into timm ViT weights (safetensors with provenance metadata), Detectron2 ViTDet "
                     "backbone weights (--to vitdet: a .pth that loads without matching heuristics), an UperNet "
                     "segmentation model (--to upernet: a transformers folder, heads initialised, load with "
                     "bridges.segmentation.model.model_class().from_pretrained), a plain transformers model (--to hf-mae: "
                     "ViTMAEForPreTraining with the decoder; --to hf-vit: ViTModel, the encoder) or a release-format "
                     "file (--to release).")
    p.add_argument("source", help="zoo id (e.g. vit_base/in1k/1600), checkpoint file or transformers ViTMAE/ViT folder "
                                  "(a path that exists wins over a zoo id)")
    p.add_argument("--to", choices=CONVERT_TARGETS, default="timm",
                   help="target: timm (ViT classifier), vitdet (Detectron2 ViTDet backbone, pos_embed kept whole: set "
                        "model.backbone.net.pretrain_img_size as printed), upernet, hf-mae / hf-vit (transformers "
                        "ViTMAEForPreTraining / ViTModel) or release ({'model': state_dict})")
    p.add_argument("-o", "--output", required=True,
                   help="output file (.safetensors for timm, .pth for vitdet and release) or folder (upernet, hf-mae, "
                        "hf-vit)")
    p.add_argument("--img-size", type=int, default=None,
                   help="timm: fine-tuning resolution (default 224); upernet: crop size (default 512); pos_embed is "
                        "resampled to its grid")
    p.add_argument("--num-labels", type=int, default=ADE20K_CLASSES, help="upernet: classes (default %(default)s, ADE20K)")
    p.add_argument("--global-pool", choices=["avg", "token"], default="avg",
                   help="timm: avg (fine-tuning recipe: drops the final norm, timm adds fc_norm) or token "
                        "(linear probing: keeps it)")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("lsmae bench pretrain [OPTIONS] (see `python -m pretrain.bench --help`): step time, memory, "
                     "FLOP/s; lsmae bench zoo [--workdir DIR]: full-size fetch/verify/convert; lsmae bench cli "
                     "[--repeat N]: how fast the look-up commands answer next to `import torch`.")
    p.add_argument("target", choices=sorted(BENCHMARKS))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from pretrain import main_pretrain

    p.description = "Long-sequence MAE pretraining (same as `python -m pretrain`)."
    p.epilog = main_pretrain.EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    main_pretrain.add_arguments(p)


def _finetune_family(p: argparse.ArgumentParser, mode: str) -> None:
    from bridges.classification import args as finetune_args

    p.description = finetune_args.DESCRIPTIONS[mode]
    p.epilog = finetune_args.EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    if mode == "eval":
        finetune_args.add_eval_arguments(p)
    else:
        finetune_args.add_arguments(p, mode)


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    _finetune_family(p, "finetune")


def add_linprobe_arguments(p: argparse.ArgumentParser) -> None:
    _finetune_family(p, "linprobe")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    _finetune_family(p, "eval")


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    from bridges.detection import args as detect_args

    p.description = detect_args.DESCRIPTION
    p.epilog = detect_args.EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    detect_args.add_arguments(p)


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    from bridges.segmentation import args as segment_args

    p.description = segment_args.DESCRIPTION
    p.epilog = segment_args.EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    segment_args.add_arguments(p)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from bridges.demo import args as demo_args

    p.description = demo_args.DESCRIPTION
    demo_args.add_arguments(p)

