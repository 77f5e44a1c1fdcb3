"""``lsmae convert``, ``lsmae export`` and ``lsmae visualize``: their options (argparse only) and runs,
which print from the result objects of :mod:`bridges.operations` (``lsmae demo`` calls those too)."""
from __future__ import annotations

import argparse

from bridges.convert_targets import NAMES, TARGETS
from bridges.segmentation.recipes import ADE20K_CLASSES
from pretrain.configs import from_namespace
from pretrain.shared_options import add_shared


def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def run_convert(args: argparse.Namespace) -> None:
    from bridges.operations import ConvertConfig, convert

    _print(convert(**vars(from_namespace(ConvertConfig, args))).lines())


def run_export(args: argparse.Namespace) -> None:
    from bridges.operations import ExportConfig, export

    _print(export(**vars(from_namespace(ExportConfig, args))).lines())


def run_visualize(args: argparse.Namespace) -> None:
    from bridges.operations import VisualizeConfig, visualize

    _print(visualize(**vars(from_namespace(VisualizeConfig, args))).lines())


def _taking(option: str) -> str:
    """The targets of the table that take ``option`` (a keyword of ``bridges.operations.convert``)."""
    return ", ".join(t.name for t in TARGETS if option in t.options)


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Convert a zoo id, an MAE checkpoint file (release format or `lsmae export`) or a transformers "
                     "ViTMAE/ViT folder for one of these targets. "
                     + "; ".join(f"--to {t.name} ({t.output}): {t.summary}" for t in TARGETS) + ".")
    p.add_argument("source", help="zoo id (e.g. vit_base/in1k/1600), checkpoint file or transformers ViTMAE/ViT folder "
                                  "(a path that exists wins over a zoo id)")
    p.add_argument("--to", choices=NAMES, default="timm", help="target (default %(default)s), as listed above")
    p.add_argument("-o", "--output", required=True,
                   help="output: " + "; ".join(f"{t.output} for {t.name}" for t in TARGETS))
    p.add_argument("--img-size", type=int, default=None,
                   help="; ".join(f"{t.name}: {t.img_size_is} (default {t.img_size})" for t in TARGETS if t.img_size)
                   + "; pos_embed is resampled to its grid")
    p.add_argument("--num-labels", type=int, default=None,
                   help=f"{_taking('num_labels')}: classes (default {ADE20K_CLASSES}, ADE20K)")
    p.add_argument("--global-pool", choices=["avg", "token"], default="avg",
                   help=f"{_taking('global_pool')}: avg (fine-tuning recipe: drops the final norm, timm adds fc_norm) "
                        "or token (linear probing: keeps it)")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Strip optimizer, scaler and arguments from the newest checkpoint of a run folder (or from one "
                     "checkpoint file) and write {'model': state_dict}.")
    p.add_argument("run", help="run folder (its newest valid checkpoint) or a checkpoint file")
    p.add_argument("-o", "--output", required=True, help="output .pth")


def add_visualize_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("A titled picture, one row per image: original | masked input | reconstruction | "
                     "reconstruction with the visible patches pasted back, each row's loss on its masked patches "
                     "beside it, for a checkpoint with a decoder. Images are centre-cropped to the model's size; "
                     "small ones are scaled up by a whole factor (nearest) to panels of at least 192 px.")
    p.add_argument("checkpoint", help="a zoo id (e.g. demo) or a checkpoint file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--output", default="reconstruction.png")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--mask-downsampling", type=int, default=2)
    add_shared(p, "visualize", "seed", "It draws the masks")
    p.add_argument("--raw-pixels", dest="norm_pix", action="store_false",
                   help="the model predicts raw pixels (trained without norm-pix loss)")
