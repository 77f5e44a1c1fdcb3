"""Pretraining images: ImageFolder roots or flat folders (COCO), repeated, robust to bad files."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import transforms

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
MAX_CONSECUTIVE_BAD = 16
log = logging.getLogger(__name__)


def pretrain_transform(input_size: int, min_scale: float = 0.2) -> transforms.Compose:
    """The release's augmentation: RandomResizedCrop (bicubic) + flip + ImageNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(input_size, scale=(min_scale, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def list_images(root: str | Path) -> list[Path]:
    """Every image below ``root`` (class sub-folders or a flat folder), sorted for a stable order.

    ``ROOT/train`` is used when it exists, as the release reads ImageNet's train split.
    """
    root = Path(root).expanduser()
    if (root / "train").is_dir():
        root = root / "train"
    if not root.is_dir():
        raise DataError(f"data folder {root} " + ("is a file, not a folder" if root.exists() else "does not exist"))
    files = sorted(
        Path(dirpath) / name
        for dirpath, _, names in os.walk(root, followlinks=True)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise DataError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


class PretrainImages(Dataset):
    """Unlabelled images from one or more folders, each repeated ``repeat`` times.

    ``--repeat 5`` reproduces the release's "dup5" COCO set without symlinked copies. An
    unreadable image is logged with its path and replaced by the next readable one, so one bad
    file cannot end a multi-day run; ``__getitem__`` reports how many it skipped.
    """

    def __init__(self, roots: Sequence[str | Path], transform: transforms.Compose, repeat: int = 1) -> None:
        if repeat < 1:
            raise DataError(f"--repeat must be at least 1, got {repeat}")
        self.files = [f for root in roots for f in list_images(root)]
        self.transform = transform
        self.repeat = repeat

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        bad: list[str] = []
        for offset in range(MAX_CONSECUTIVE_BAD):
            path = self.files[(index + offset) % n]
            try:
                with Image.open(path) as img:
                    image = img.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                log.warning("skipping unreadable image %s: %s", path, e)
                bad.append(f"{path} ({e})")
                continue
            return self.transform(image), len(bad)
        raise DataError(f"{MAX_CONSECUTIVE_BAD} unreadable images in a row, e.g. {bad[0]}; is the data set damaged?")
