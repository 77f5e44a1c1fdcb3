"""``lsmae bench``: which benchmark (pretrain, zoo, cli) and its own options, passed through."""
from __future__ import annotations

import argparse

BENCHMARKS = {"pretrain": "pretrain.bench.runner", "zoo": "bridges.bench.zoo", "cli": "bridges.bench.cli"}


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("lsmae bench pretrain [OPTIONS] (see `python -m pretrain.bench --help`): step time, memory, "
                     "FLOP/s; lsmae bench zoo [--workdir DIR]: full-size fetch/verify/convert; lsmae bench cli "
                     "[--repeat N]: how fast the look-up commands answer next to `import torch`.")
    p.add_argument("target", choices=sorted(BENCHMARKS))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")


def run_bench(args: argparse.Namespace) -> None:
    import importlib

    importlib.import_module(BENCHMARKS[args.target]).main(args.bench_args)
