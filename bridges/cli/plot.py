"""``lsmae plot``: its options (argparse only) and its run, which prints from :func:`bridges.curves.plot_runs`."""
from __future__ import annotations

import argparse

from bridges.curves.records import STEP_RULE


def run_plot(args: argparse.Namespace) -> None:
    from bridges.curves import plot_runs

    print("\n".join(plot_runs(args.runs, args.output).lines()))


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Draw the training curves of one or more run folders into one PNG: training loss, learning rate and the "
        "validation metric (top-1 for finetune/linprobe, mIoU for segment, box and mask AP for detect, the epoch's "
        "pretraining loss for pretrain), each against the global step (optimizer updates), one colour per run. "
        "Reads RUN/log.jsonl (lsmae pretrain, finetune, linprobe, segment) or else Detectron2's RUN/metrics.json "
        "(lsmae detect). A step logged again after a resume: its last record wins. Panels no run has points for "
        "are left out. " + STEP_RULE + " Prints the PNG's path and one summary line per run. Needs matplotlib "
        "(pip install -e '.[plot]').")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders (their legend labels: the folder names, with the parent's where two share one)")
    p.add_argument("-o", "--output", default="curves.png", help="PNG to write (default %(default)s)")
