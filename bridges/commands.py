"""``lsmae`` subcommands that join the pretraining engine, the zoo and the converters.

Each command is an ``add_*_arguments`` function (argparse only: registering it imports no torch)
and a library function that does the work and returns a result object; the ``cmd_*`` functions
print from that result, and ``lsmae demo`` calls the same library functions.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

CONVERT_TARGETS = ("timm", "vitdet")
BENCHMARKS = {"pretrain": "pretrain.bench", "zoo": "bridges.bench_zoo", "cli": "bridges.bench_cli"}


# --------------------------------------------------------------------------- results
@dataclass
class Exported:
    """A run's weights written in the release format."""

    path: Path
    model: str
    grid_size: int
    has_decoder: bool

    def lines(self) -> list[str]:
        return [f"wrote {self.model} weights ({self.grid_size}x{self.grid_size} grid, "
                f"decoder {'kept' if self.has_decoder else 'absent'}) in the release format", str(self.path)]


@dataclass
class Reconstructions:
    """A picture of masked reconstructions and the loss on the masked patches."""

    path: Path
    loss: float
    num_images: int
    mask_ratio: float
    norm_pix: bool

    @property
    def summary(self) -> str:
        baseline = " (1.0 = predicting each patch's mean colour)" if self.norm_pix else ""
        return f"loss on the masked patches of these {self.num_images} images: {self.loss:.3f}{baseline}"

    def lines(self) -> list[str]:
        return [f"columns: original | masked ({self.mask_ratio:.0%}) | reconstruction | reconstruction + visible",
                self.summary, str(self.path)]


@dataclass
class Conversion:
    """A converted checkpoint: where it is, what the conversion did, and how to load it."""

    path: Path
    target: str
    report: str
    load_hint: str = ""

    def lines(self) -> list[str]:
        return [*self.report.splitlines(), *([self.load_hint] if self.load_hint else []), str(self.path)]


# --------------------------------------------------------------------------- library functions
def export(run: str | Path, output: str | Path) -> Exported:
    """Write the newest checkpoint of a run folder (or one checkpoint file) in the release format."""
    from pretrain.checkpoints import export_release
    from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict

    out = export_release(Path(run), Path(output))
    info = check_structure(model_state_dict(load_checkpoint(out)))
    return Exported(out, info.model, info.grid_size, info.has_decoder)


def visualize(checkpoint: str, images: list[str | Path], output: str | Path, mask_ratio: float = 0.75,
              mask_downsampling: int = 2, seed: int = 0, norm_pix: bool = True) -> Reconstructions:
    """Save rows of original | masked | reconstruction | reconstruction + visible for ``images``."""
    from pretrain.visualize import load_images, reconstruction_grid
    from zoo.models import load_model

    model = load_model(checkpoint, require_decoder=True)
    batch = load_images(images, model.img_size)
    picture, loss = reconstruction_grid(model, batch, mask_ratio, mask_downsampling, seed, norm_pix=norm_pix)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(output)
    return Reconstructions(output, loss, len(batch), mask_ratio, norm_pix)


def convert(source: str | Path, to: str, output: str | Path, img_size: int = 224,
            global_pool: str = "avg") -> Conversion:
    """Convert a zoo id or MAE checkpoint file for timm (``to='timm'``) or ViTDet (``'vitdet'``)."""
    if to == "vitdet":
        from .vitdet_convert import convert_to_vitdet, save_vitdet

        converted = convert_to_vitdet(source)
        return Conversion(save_vitdet(converted, output), to, converted.report())
    from .timm_convert import convert_to_timm, save_safetensors

    converted = convert_to_timm(source, img_size=img_size, global_pool=global_pool)
    out = save_safetensors(converted, output)
    extra = "".join(f", {k}={v!r}" for k, v in converted.timm_kwargs.items())
    hint = (f"load with: timm.create_model('{converted.timm_model}', pretrained=True, img_size={img_size}, "
            f"global_pool='{global_pool}', num_classes=N{extra}, "
            f"pretrained_cfg_overlay=dict(file='{out}', num_classes=0))")
    return Conversion(out, to, converted.report(), hint)


# --------------------------------------------------------------------------- commands
def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def cmd_export(args: argparse.Namespace) -> None:
    _print(export(args.run, args.output).lines())


def cmd_visualize(args: argparse.Namespace) -> None:
    _print(visualize(args.checkpoint, args.images, args.output, args.mask_ratio, args.mask_downsampling, args.seed,
                     norm_pix=not args.raw_pixels).lines())


def cmd_convert(args: argparse.Namespace) -> None:
    _print(convert(args.source, args.to, args.output, args.img_size, args.global_pool).lines())


def cmd_bench(args: argparse.Namespace) -> None:
    import importlib

    importlib.import_module(BENCHMARKS[args.target]).main(args.bench_args)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from pretrain.main_pretrain import run

    run(args)


def cmd_finetune(args: argparse.Namespace) -> None:
    from .finetune import run

    run(args, args.command)


def cmd_eval(args: argparse.Namespace) -> None:
    from .finetune import run_eval

    run_eval(args)


def cmd_detect(args: argparse.Namespace) -> None:
    from .detect import run

    run(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run

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
    p.description = ("Convert a zoo id or an MAE checkpoint file (release format or `lsmae export`) into timm ViT "
                     "weights (safetensors with provenance metadata) or Detectron2 ViTDet backbone weights (--to "
                     "vitdet: a .pth that loads without matching heuristics).")
    p.add_argument("source", help="zoo id (e.g. vit_base/in1k/1600) or checkpoint file")
    p.add_argument("--to", choices=CONVERT_TARGETS, default="timm",
                   help="target framework: timm (ViT classifier) or vitdet (Detectron2 ViTDet backbone, "
                        "pos_embed kept whole: set model.backbone.net.pretrain_img_size as printed)")
    p.add_argument("-o", "--output", required=True, help="output file (.safetensors for timm, .pth for vitdet)")
    p.add_argument("--img-size", type=int, default=224,
                   help="timm: fine-tuning resolution; pos_embed is resampled to its grid (default %(default)s)")
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
    from . import finetune_args

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
    from . import detect_args

    p.description = detect_args.DESCRIPTION
    p.epilog = detect_args.EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    detect_args.add_arguments(p)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from . import demo_args

    p.description = demo_args.DESCRIPTION
    demo_args.add_arguments(p)

