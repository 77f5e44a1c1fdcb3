"""``lsmae bench``: which benchmark (pretrain, finetune, segment, zoo, cli) and its own options, passed through."""
from __future__ import annotations

import argparse

BENCHMARKS = {"pretrain": "pretrain.bench.runner", "finetune": "bridges.bench.finetune",
              "segment": "bridges.bench.segment", "zoo": "bridges.bench.zoo", "cli": "bridges.bench.cli"}


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("lsmae bench pretrain [OPTIONS] (see `python -m pretrain.bench --help`): step time, memory, "
                     "FLOP/s; lsmae bench finetune / segment [OPTIONS] (see `lsmae bench finetune --help`): the "
                     "command's training step next to the baseline a user would otherwise run (MAE's fine-tuning "
                     "step; the UperNet of transformers' unmodified BEiT modules), its input pipeline, both "
                     "together; lsmae bench zoo [--workdir DIR]: full-size fetch/verify/convert; lsmae bench cli "
                     "[--repeat N]: how fast the look-up commands answer next to `import torch`.")
    p.add_argument("target", choices=sorted(BENCHMARKS))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")


def run_bench(args: argparse.Namespace) -> None:
    import importlib

    importlib.import_module(BENCHMARKS[args.target]).main(args.bench_args)
