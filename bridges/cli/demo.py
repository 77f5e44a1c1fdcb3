"""``lsmae demo``: its options (argparse only: registering them imports no torch) and its run."""
from __future__ import annotations

import argparse

from bridges.demo.config import DEFAULT_WORKDIR
from pretrain.configs import from_namespace
from pretrain.shared_options import add_shared

DESCRIPTION = ("Run the whole chain on the embedded demo checkpoint (a micro long-seq MAE pretrained with `lsmae "
               "pretrain` on photographs scikit-image ships): fetch, verify, visualize reconstructions of held-out "
               "photographs, convert to timm, fine-tune on scikit-learn's digits next to a from-scratch baseline, "
               "convert to ViTDet, and (with detectron2) train and evaluate a detector on a generated COCO-format "
               "set. No network; a few minutes on a 2-core CPU. Needs the demo extra: "
               "pip install 'long-seq-mae[demo]'.")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="where data, logs and artefacts go (default ./%(default)s; rewritten on each run)")
    p.add_argument("--epochs", type=int, default=4,
                   help="fine-tuning epochs, for the pretrained and the from-scratch model alike (default %(default)s)")
    add_shared(p, "demo", "device", "The fine-tuning steps' device: detection runs on the CPU")
    p.add_argument("--data-only", action="store_true",
                   help="only write the data sets into WORKDIR/data (the first step of the demo checkpoint's recipe)")


def run_demo(args: argparse.Namespace) -> None:
    from bridges.demo import DemoConfig, demo

    demo(from_namespace(DemoConfig, args))
