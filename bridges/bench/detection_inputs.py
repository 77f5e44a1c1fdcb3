"""What the GPU check's ``lsmae detect`` run reads (``tools/gpu_check.sh``), written without detectron2 and
without a network: a COCO-format instance set of generated pictures for ``--train``/``--val``, and as SOURCE an
MAE checkpoint of seeded random weights shaped as a zoo entry's (a detection step's speed does not depend on the
weights, and nothing can be fetched on a machine without a network).

    python -m bridges.bench.detection_inputs DIR --checkpoint-like vit_base/coco/4000
    # DIR/train.json, DIR/train/, DIR/val.json, DIR/val/, DIR/source.pth
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.errors import report_errors

SOURCE_NAME = "source.pth"


def write_source(path: Path, entry_id: str) -> Path:
    """Seeded random weights of ``entry_id``'s architecture at its image size, in the release format (the
    registry says which; nothing is fetched)."""
    import torch

    import pretrain
    from bridges.conversion import save_pth
    from zoo.registry import get_entry

    entry = get_entry(entry_id)
    torch.manual_seed(0)
    return save_pth({"model": pretrain.create_model(entry.model, img_size=entry.img_size).state_dict()}, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bridges.bench.detection_inputs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--checkpoint-like", metavar="ZOO_ID", default=None,
                   help=f"also FOLDER/{SOURCE_NAME}: random weights shaped as this entry's checkpoint")
    # COCO's most common picture size; LSJ rescales every picture to the config's size anyway
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--train-images", type=int, default=16)
    p.add_argument("--val-images", type=int, default=2, help="evaluated once, at the end of the run")
    return p


def main(argv: list[str] | None = None) -> None:
    from bridges.demo.sample_data import write_shapes_own_classes

    args = build_parser().parse_args(argv)
    folder = args.folder
    write_shapes_own_classes((folder / "train.json", folder / "train"), (folder / "val.json", folder / "val"),
                             train_images=args.train_images, val_images=args.val_images, width=args.width,
                             height=args.height)
    if args.checkpoint_like:
        write_source(folder / SOURCE_NAME, args.checkpoint_like)


if __name__ == "__main__":
    raise SystemExit(report_errors("python -m bridges.bench.detection_inputs", main))
