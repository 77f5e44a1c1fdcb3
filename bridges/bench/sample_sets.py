"""Generated data for the fine-tuning benches' input pipelines, in the layouts the commands read:
ImageNet-like JPEGs as an ImageFolder (``lsmae finetune``'s ``DATA/train/CLASS/*.jpg``) and
ADE20K-like JPEGs with PNG masks (``lsmae segment``'s ``images/`` and ``annotations/`` folders). The
pictures are crops of scikit-image's photographs (:func:`pretrain.bench.data.write_photo_jpegs`), so
they decode and compress like photographs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.bench.data import write_photo_jpegs

IMAGENET_SIZE = (500, 375)  # the most common ImageNet size (width, height); a third portrait here
ADE20K_SIZE = (683, 512)  # the most common ADE20K training size; a third portrait here
CLASS_FOLDERS = 4


def write_imagenet_like(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in ``root/train/class_K/`` over :data:`CLASS_FOLDERS` classes; returns ``root``."""
    for k in range(CLASS_FOLDERS):
        count = n // CLASS_FOLDERS + (k < n % CLASS_FOLDERS)
        write_photo_jpegs(root / "train" / f"class_{k}", count, IMAGENET_SIZE, seed=seed + k)
    return root


def _regions_mask(width: int, height: int, labels: int, rng: np.random.Generator) -> np.ndarray:
    """A scene-parsing-like mask: 6-16 Voronoi regions, each a class of 1..``labels``, with 0 ("other",
    ignored with ADE20K's rule) on the 1-pixel borders between them."""
    seeds = rng.uniform((0, 0), (height, width), size=(int(rng.integers(6, 17)), 2))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    nearest = np.argmin((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2, axis=-1)
    mask = rng.integers(1, labels + 1, len(seeds)).astype(np.uint8)[nearest]
    border = np.zeros_like(nearest, bool)
    border[:-1] |= nearest[:-1] != nearest[1:]
    border[:, :-1] |= nearest[:, :-1] != nearest[:, 1:]
    mask[border] = 0
    return mask


def write_ade20k_like(root: Path, n: int, labels: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` JPEGs in ``root/images/training`` with their masks (``labels`` classes as 1..labels, 0 on the
    borders, ADE20K's convention) in ``root/annotations/training``; returns the two folders."""
    images, masks = root / "images" / "training", root / "annotations" / "training"
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for path in write_photo_jpegs(images, n, ADE20K_SIZE, seed=seed, stem="ADE_train_"):
        with Image.open(path) as img:
            width, height = img.size
        Image.fromarray(_regions_mask(width, height, labels, rng)).save(masks / f"{path.stem}.png")
    return images, masks
