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
    picture = reconstruction_grid(model, images, args.mask_ratio, args.mask_downsampling, args.seed,
                                  norm_pix=not args.raw_pixels)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output)
    print(f"columns: original | masked ({args.mask_ratio:.0%}) | reconstruction | reconstruction + visible")
    print(args.output)


def cmd_convert(args: argparse.Namespace) -> None:
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
    from pretrain import bench

    bench.main(args.bench_args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
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

    p = sub.add_parser("convert", help="convert an MAE checkpoint for timm",
                       description="Convert a zoo id or an MAE checkpoint file (release format or `lsmae export`) "
                                   "into timm ViT weights (safetensors with provenance metadata).")
    p.add_argument("source", help="zoo id (e.g. vit_base/in1k/1600) or checkpoint file")
    p.add_argument("--to", choices=["timm"], default="timm", help="target framework")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--img-size", type=int, default=224,
                   help="fine-tuning resolution; pos_embed is resampled to its grid (default %(default)s)")
    p.add_argument("--global-pool", choices=["avg", "token"], default="avg",
                   help="avg (fine-tuning recipe: drops the final norm, timm adds fc_norm) or token "
                        "(linear probing: keeps it)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="benchmarks (pretrain: step time, memory, FLOP/s vs the release)",
                       description="lsmae bench pretrain [OPTIONS]: see `python -m pretrain.bench --help`.")
    p.add_argument("target", choices=["pretrain"])
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.set_defaults(func=cmd_bench)
