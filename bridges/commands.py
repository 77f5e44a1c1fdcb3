"""``lsmae`` subcommands that join the pretraining engine and the zoo: pretrain, export, visualize, bench."""
from __future__ import annotations

import argparse
from pathlib import Path

from pretrain import main_pretrain
from pretrain.checkpoints import export_release
from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict
from zoo.models import load_model


def cmd_pretrain(args: argparse.Namespace) -> None:
    main_pretrain.run(args)


def cmd_export(args: argparse.Namespace) -> None:
    out = export_release(Path(args.run), Path(args.output))
    info = check_structure(model_state_dict(load_checkpoint(out)))
    print(f"wrote {info.matching_models[0]} weights ({info.grid_size}x{info.grid_size} grid, "
          f"decoder {'kept' if info.has_decoder else 'absent'}) in the release format")
    print(out)


def cmd_visualize(args: argparse.Namespace) -> None:
    from pretrain.visualize import load_images, reconstruction_grid

    model = load_model(args.checkpoint, require_decoder=True)
    images = load_images(args.images, model.img_size)
    picture, loss = reconstruction_grid(model, images, args.mask_ratio, args.mask_downsampling, args.seed,
                                        norm_pix=not args.raw_pixels)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output)
    print(f"columns: original | masked ({args.mask_ratio:.0%}) | reconstruction | reconstruction + visible")
    baseline = " (1.0 = predicting each patch's mean colour)" if not args.raw_pixels else ""
    print(f"loss on the masked patches of these {len(images)} images: {loss:.3f}{baseline}")
    print(args.output)


def cmd_convert(args: argparse.Namespace) -> None:
    if args.to == "vitdet":
        from .vitdet_convert import convert_to_vitdet, save_vitdet

        converted = convert_to_vitdet(args.source)
        out = save_vitdet(converted, args.output)
        print(converted.report())
        print(out)
        return
    from .timm_convert import convert_to_timm, save_safetensors

    converted = convert_to_timm(args.source, img_size=args.img_size, global_pool=args.global_pool)
    out = save_safetensors(converted, args.output)
    print(converted.report())
    name, kwargs = converted.metadata["timm_model"], converted.metadata["timm_kwargs"]
    extra = "" if kwargs == "{}" else f", **{kwargs}"
    print(f"load with: timm.create_model('{name}', pretrained=True, img_size={args.img_size}, "
          f"global_pool='{args.global_pool}', num_classes=N{extra}, "
          f"pretrained_cfg_overlay=dict(file='{out}', num_classes=0))")
    print(out)


def cmd_bench(args: argparse.Namespace) -> None:
    if args.target == "zoo":
        from . import bench_zoo

        bench_zoo.main(args.bench_args)
    else:
        from pretrain import bench

        bench.main(args.bench_args)


def cmd_finetune(args: argparse.Namespace) -> None:
    from . import finetune

    finetune.run(args, args.command)


def cmd_eval(args: argparse.Namespace) -> None:
    from .finetune import run_eval

    run_eval(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from . import demo

    demo.run(args)


def cmd_detect(args: argparse.Namespace) -> None:
    from . import detect

    detect.run(args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from . import demo

    p = sub.add_parser("demo", help="the whole chain offline on the embedded demo checkpoint (a few CPU minutes)",
                       description=demo.DESCRIPTION)
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="pretrain a long-seq MAE (GPU/DDP, CPU, TPU)",
                       description="Long-sequence MAE pretraining (same as `python -m pretrain`).",
                       epilog=main_pretrain.EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    main_pretrain.add_arguments(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("export", help="write a run's weights in the release format",
                       description="Strip optimizer, scaler and arguments from the newest checkpoint of a run "
                                   "folder (or from one checkpoint file) and write {'model': state_dict}.")
    p.add_argument("run", help="run folder (its newest valid checkpoint) or a checkpoint file")
    p.add_argument("-o", "--output", required=True, help="output .pth")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("visualize", help="PNG of masked reconstructions",
                       description="Rows of: original | masked input | reconstruction | reconstruction with the "
                                   "visible patches pasted, for a checkpoint with a decoder.")
    p.add_argument("checkpoint", help="a zoo id (e.g. demo) or a checkpoint file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--output", default="reconstruction.png")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--mask-downsampling", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw-pixels", action="store_true",
                   help="the model predicts raw pixels (trained without norm-pix loss)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("convert", help="convert an MAE checkpoint for timm or Detectron2 ViTDet",
                       description="Convert a zoo id or an MAE checkpoint file (release format or `lsmae export`) "
                                   "into timm ViT weights (safetensors with provenance metadata) or Detectron2 "
                                   "ViTDet backbone weights (--to vitdet: a .pth that loads without matching "
                                   "heuristics).")
    p.add_argument("source", help="zoo id (e.g. vit_base/in1k/1600) or checkpoint file")
    p.add_argument("--to", choices=["timm", "vitdet"], default="timm",
                   help="target framework: timm (ViT classifier) or vitdet (Detectron2 ViTDet backbone, "
                        "pos_embed kept whole: set model.backbone.net.pretrain_img_size as printed)")
    p.add_argument("-o", "--output", required=True, help="output file (.safetensors for timm, .pth for vitdet)")
    p.add_argument("--img-size", type=int, default=224,
                   help="timm: fine-tuning resolution; pos_embed is resampled to its grid (default %(default)s)")
    p.add_argument("--global-pool", choices=["avg", "token"], default="avg",
                   help="timm: avg (fine-tuning recipe: drops the final norm, timm adds fc_norm) or token "
                        "(linear probing: keeps it)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="benchmarks: pretrain (step time, memory, FLOP/s vs the release), "
                                     "zoo (full-size fetch/verify/convert throughput and memory)",
                       description="lsmae bench pretrain [OPTIONS] (see `python -m pretrain.bench --help`); "
                                   "lsmae bench zoo [--workdir DIR].")
    p.add_argument("target", choices=["pretrain", "zoo"])
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.set_defaults(func=cmd_bench)

    from . import finetune

    for mode, help_ in (("finetune", "fine-tune an MAE encoder as a timm classifier (MAE recipe; GPU/DDP, CPU)"),
                        ("linprobe", "linear probing of a frozen MAE encoder (LARS; GPU/DDP, CPU)")):
        p = sub.add_parser(mode, help=help_, description=finetune.DESCRIPTIONS[mode], epilog=finetune.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        finetune.add_arguments(p, mode)
        p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", help="top-1/top-5 of a finetune/linprobe checkpoint on DATA/val",
                       description=finetune.DESCRIPTIONS["eval"], epilog=finetune.EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    from . import detect

    p = sub.add_parser("detect", help="train/evaluate ViTDet (Cascade) Mask R-CNN on COCO from an MAE checkpoint "
                                      "(needs detectron2)",
                       description=detect.DESCRIPTION,
                       epilog=detect.EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    detect.add_arguments(p)
    p.set_defaults(func=cmd_detect)
