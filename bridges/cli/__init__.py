"""``lsmae``: one console script over every package's commands.

The commands are a table: each row names the module of this package that holds its group's
parsers (argparse only, no torch) and runs, which import the implementation only when the command
runs. So ``lsmae --help``, ``lsmae list`` or a cached ``lsmae fetch`` answer without importing
torch. ``python -m bridges COMMAND`` is the same command line (the form torchrun starts).
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any

from pretrain.errors import report_errors
from zoo.settings import ENVIRONMENT


@dataclass(frozen=True)
class Command:
    """One ``lsmae`` command: its name, the line ``lsmae --help`` shows, and the module of
    :mod:`bridges.cli` holding its group's parsers (``add_NAME_arguments``, argparse only) and runs
    (``run_NAME``, importing the implementation when the command runs)."""

    name: str
    help: str
    group: str

    def function(self, kind: str) -> Any:
        module = importlib.import_module(f"bridges.cli.{self.group}")
        return getattr(module, f"{kind}_{self.name}" if kind == "run" else f"add_{self.name}_arguments")


COMMANDS = [
    Command("demo", "the whole chain offline on the embedded demo checkpoint (a few CPU minutes)", "demo"),
    Command("list", "the released checkpoints", "zoo"),
    Command("fetch", "download and verify a checkpoint; prints its local path", "zoo"),
    Command("verify", "re-check a cached entry (SHA-256 + structure) or a file (structure)", "zoo"),
    Command("inspect", "describe a checkpoint file without trusting it", "zoo"),
    Command("cache", "list or remove cached checkpoints", "zoo"),
    Command("convert", "convert an MAE checkpoint for timm, Detectron2 ViTDet, UperNet, transformers (ViTMAE, ViT) "
                       "or the release format", "weights"),
    Command("finetune", "fine-tune an MAE encoder as a timm classifier (MAE recipe; GPU/DDP, CPU)", "classification"),
    Command("linprobe", "linear probing of a frozen MAE encoder (LARS; GPU/DDP, CPU)", "classification"),
    Command("eval", "top-1/top-5 of a finetune/linprobe checkpoint on DATA/val", "classification"),
    Command("detect", "train/evaluate ViTDet (Cascade) Mask R-CNN on COCO from an MAE checkpoint (needs detectron2)",
            "detection"),
    Command("segment", "train/evaluate UperNet semantic segmentation on ADE20K from an MAE checkpoint (GPU/DDP, CPU)",
            "segmentation"),
    Command("pretrain", "pretrain a long-seq MAE (GPU/DDP, CPU, TPU)", "pretrain"),
    Command("export", "write a run's weights in the release format", "weights"),
    Command("visualize", "PNG of masked reconstructions", "weights"),
    Command("plot", "PNG of the training curves of run folders (loss, learning rate, validation metric by step)",
            "plot"),
    Command("bench", "benchmarks: pretrain, finetune, segment (the step next to the baseline a user would otherwise "
                     "run, time, memory, FLOP/s, input pipeline, end to end), zoo (fetch/verify/convert throughput "
                     "and memory), cli (look-up commands vs import torch)", "bench"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsmae",
        description="Long-sequence MAE checkpoints: fetch and verify the released weights, convert them for timm, "
                    "Detectron2 ViTDet, UperNet and transformers, fine-tune, linear-probe, detect and segment, "
                    "pretrain (GPU/DDP, TPU), export, visualize. New here? `lsmae demo` runs the whole chain offline "
                    "in a few CPU minutes. Under torchrun: `torchrun ... -m bridges COMMAND ...`.",
        epilog="environment: " + "; ".join(f"{name} ({what})" for name, what in ENVIRONMENT.items()) + ".",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.function("add")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    return report_errors(f"lsmae {args.command}", lambda: command.function("run")(args))
