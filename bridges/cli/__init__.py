"""``lsmae``: one console script over every package's commands.

The commands are a table: each row names the function that adds its arguments (argparse only,
no torch) and the function that runs it, imported only when that command runs. So ``lsmae
--help``, ``lsmae list`` or a cached ``lsmae fetch`` answer without importing torch.
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
    name: str
    help: str  # the one line `lsmae --help` shows
    arguments: str  # "module:function" adding the arguments to the command's parser
    run: str  # "module:function" taking the parsed arguments

    @staticmethod
    def resolve(ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)


COMMANDS = [
    Command("demo", "the whole chain offline on the embedded demo checkpoint (a few CPU minutes)",
            "bridges.cli.commands:add_demo_arguments", "bridges.cli.commands:cmd_demo"),
    Command("list", "the released checkpoints", "zoo.commands:add_list_arguments", "zoo.commands:cmd_list"),
    Command("fetch", "download and verify a checkpoint; prints its local path",
            "zoo.commands:add_fetch_arguments", "zoo.commands:cmd_fetch"),
    Command("verify", "re-check a cached entry (SHA-256 + structure) or a file (structure)",
            "zoo.commands:add_verify_arguments", "zoo.commands:cmd_verify"),
    Command("inspect", "describe a checkpoint file without trusting it",
            "zoo.commands:add_inspect_arguments", "zoo.commands:cmd_inspect"),
    Command("cache", "list or remove cached checkpoints", "zoo.commands:add_cache_arguments", "zoo.commands:cmd_cache"),
    Command("convert", "convert an MAE checkpoint for timm, Detectron2 ViTDet, UperNet, transformers (ViTMAE, ViT) "
                       "or the release format",
            "bridges.cli.commands:add_convert_arguments", "bridges.cli.commands:cmd_convert"),
    Command("finetune", "fine-tune an MAE encoder as a timm classifier (MAE recipe; GPU/DDP, CPU)",
            "bridges.cli.commands:add_finetune_arguments", "bridges.cli.commands:cmd_finetune"),
    Command("linprobe", "linear probing of a frozen MAE encoder (LARS; GPU/DDP, CPU)",
            "bridges.cli.commands:add_linprobe_arguments", "bridges.cli.commands:cmd_finetune"),
    Command("eval", "top-1/top-5 of a finetune/linprobe checkpoint on DATA/val",
            "bridges.cli.commands:add_eval_arguments", "bridges.cli.commands:cmd_eval"),
    Command("detect", "train/evaluate ViTDet (Cascade) Mask R-CNN on COCO from an MAE checkpoint (needs detectron2)",
            "bridges.cli.commands:add_detect_arguments", "bridges.cli.commands:cmd_detect"),
    Command("segment", "train/evaluate UperNet semantic segmentation on ADE20K from an MAE checkpoint (GPU/DDP, CPU)",
            "bridges.cli.commands:add_segment_arguments", "bridges.cli.commands:cmd_segment"),
    Command("pretrain", "pretrain a long-seq MAE (GPU/DDP, CPU, TPU)",
            "bridges.cli.commands:add_pretrain_arguments", "bridges.cli.commands:cmd_pretrain"),
    Command("export", "write a run's weights in the release format",
            "bridges.cli.commands:add_export_arguments", "bridges.cli.commands:cmd_export"),
    Command("visualize", "PNG of masked reconstructions", "bridges.cli.commands:add_visualize_arguments",
            "bridges.cli.commands:cmd_visualize"),
    Command("bench", "benchmarks: pretrain (step time, memory, FLOP/s), zoo (fetch/verify/convert throughput and "
                     "memory), cli (look-up commands vs import torch)", "bridges.cli.commands:add_bench_arguments", "bridges.cli.commands:cmd_bench"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsmae",
        description="Long-sequence MAE checkpoints: fetch and verify the released weights, convert them for timm, "
                    "Detectron2 ViTDet, UperNet and transformers, fine-tune, linear-probe, detect and segment, pretrain "
                    "(GPU/DDP, TPU), export, visualize. New here? `lsmae demo` runs the whole chain offline in a few "
                    "CPU minutes. Under torchrun: `torchrun ... -m bridges COMMAND ...`.",
        epilog="environment: " + "; ".join(f"{name} ({what})" for name, what in ENVIRONMENT.items()) + ".",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        Command.resolve(command.arguments)(p)
        p.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(f"lsmae {args.command}", lambda: Command.resolve(args.handler)(args))
