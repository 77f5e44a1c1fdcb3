"""Options of ``lsmae bench pretrain`` (:mod:`pretrain.bench.runner`), shared with its per-configuration
processes (:mod:`pretrain.bench.step`). Standard library only."""
from __future__ import annotations

import argparse


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The bench's options; each configuration's process parses the same ones (and its CONFIG)."""
    p = argparse.ArgumentParser(prog="lsmae bench pretrain", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mae_vit_base_patch16_dec384d12h8b")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--mask-downsampling", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None,
                   help="per device and step (default: 64 on a GPU or TPU, 4 on a CPU or XLA:CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 10 on a GPU, 1 on a CPU)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of timed steps, configurations taking turns")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens there)")
    p.add_argument("--device", default=None,
                   help="cuda, cpu or xla (default: cuda when available); xla: data parallel over every device "
                        "torch_xla's runtime reports on this host (SPMD), timed in all and per device")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per configuration (default: torch's)")
    p.add_argument("--configs", default=None,
                   help="comma-separated, from release, fp32, bf16, fp16 (default: release and this device's fast "
                        "precisions; bf16 on CPUs only with AVX512-BF16/AMX; bf16 alone on XLA)")
    p.add_argument("--compile", action="store_true", help="also each non-release configuration torch.compile'd")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak for MFU (default: known GPUs' bf16 peak; none on CPUs)")
    p.add_argument("--data", default=None, metavar="DIR|synthetic",
                   help="images for the pipeline and end-to-end parts (default: generated COCO-like JPEGs); "
                        "'synthetic': the step only")
    p.add_argument("--images", type=int, default=64,
                   help="images for the one-worker pipeline rates: generated, or taken from --data (default 64)")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers end to end (default: 12 on a GPU, 1 on a CPU)")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    p.add_argument("--e2e", default=None, help=argparse.SUPPRESS)
    p.add_argument("--e2e-workers", type=int, default=0, help=argparse.SUPPRESS)
    return p
