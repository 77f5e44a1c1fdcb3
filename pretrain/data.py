"""Pretraining images: ImageFolder roots or flat folders (COCO), repeated, robust to bad files.

Two pipelines draw the same augmentation (RandomResizedCrop, bicubic, scale 0.2-1.0, then a
horizontal flip) from the same random numbers:

- :func:`pretrain_dataset`, the one training uses: JPEGs decoded by ``torchvision.io`` (PIL for
  other formats), cropped, resized and flipped as uint8 tensors; the batch goes to the device as
  uint8 and :func:`normalize` makes it float there, inside the step. Per core it is several times
  faster than the release's pipeline and moves a quarter of the bytes.
- :func:`release_dataset`: the release's PIL -> float32 -> normalise pipeline, kept to compare.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, default_collate
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from pretrain.errors import DataError, MissingDataError, OptionError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
MAX_CONSECUTIVE_BAD = 16
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range, as the release uses it
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
        if root.exists():
            raise DataError(f"data folder {root} is a file, not a folder")
        raise MissingDataError(f"data folder {root} does not exist")
    files = sorted(
        Path(dirpath) / name
        for dirpath, _, names in os.walk(root, followlinks=True)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise DataError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_pil_rgb(path: Path) -> Image.Image:
    """The release's reading: PIL, converted to RGB (alpha dropped, greyscale and CMYK expanded)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def read_rgb(path: Path) -> torch.Tensor:
    """The image as uint8 [H, W, 3], the same pixels as PIL's ``convert("RGB")``: JPEGs through
    torchvision's libjpeg-turbo decoder (a file it refuses, e.g. a PNG named .jpg, goes to PIL),
    other formats through PIL. Raises OSError/ValueError for an unreadable file."""
    if path.suffix.lower() in JPEG_EXTENSIONS:
        try:
            return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB).permute(1, 2, 0)
        except RuntimeError:
            pass  # PIL decides whether it is readable, with its error message
    return torch.from_numpy(np.array(read_pil_rgb(path)))


def crop_box(height: int, width: int, min_scale: float = 0.2) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a RandomResizedCrop box: torchvision's own sampler, called as the
    release's transform calls it (same arguments, same draws from torch's global generator)."""
    return transforms.RandomResizedCrop.get_params(torch.empty(0, height, width), (min_scale, 1.0), RATIO)


def random_resized_crop(image: torch.Tensor, size: int, min_scale: float = 0.2) -> torch.Tensor:
    """RandomResizedCrop (bicubic, antialiased, scale ``(min_scale, 1)``) then a random flip of a
    uint8 [H, W, 3] image: uint8 [3, size, size], stored channels-last.

    Box and flip are drawn in the release's order, so a given seed gives the release's box and
    flip; the resize equals PIL's to +-1 grey level. Channels-last is the layout torch's fast uint8
    resize reads and writes (channels-first costs twice as much): see :func:`collate`.
    """
    top, left, h, w = crop_box(image.shape[0], image.shape[1], min_scale)
    # [None] on the HWC tensor, then NCHW: a channels-last view whose batch stride is real (the same
    # view made from a CHW tensor is not recognised as channels-last and takes the slow resize path)
    crop = image[None, top:top + h, left:left + w].permute(0, 3, 1, 2)
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)[0]
    return out.flip(-1) if torch.rand(1) < 0.5 else out


class PretrainImages(Dataset):
    """Unlabelled images from one or more folders, each repeated ``repeat`` times; item ``i`` is
    ``(load(path), n_skipped)``.

    ``--repeat 5`` reproduces the release's "dup5" COCO set without symlinked copies. An
    unreadable image is logged with its path and replaced by the next readable one, so one bad
    file cannot end a multi-day run; ``n_skipped`` says how many were skipped for this item.
    """

    def __init__(self, roots: Sequence[str | Path], load: Callable[[Path], torch.Tensor], repeat: int = 1) -> None:
        if repeat < 1:
            raise OptionError(f"{{repeat}} must be at least 1, got {repeat}")
        self.files = [f for root in roots for f in list_images(root)]
        self.load = load
        self.repeat = repeat

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        bad: list[str] = []
        for offset in range(MAX_CONSECUTIVE_BAD):
            path = self.files[(index + offset) % n]
            try:
                return self.load(path), len(bad)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                log.warning("skipping unreadable image %s: %s", path, e)
                bad.append(f"{path} ({e})")
        raise DataError(f"{MAX_CONSECUTIVE_BAD} unreadable images in a row, e.g. {bad[0]}; is the data set damaged?")


class _UInt8Crop:
    """Picklable loader (DataLoader workers) of :func:`pretrain_dataset`."""

    def __init__(self, size: int, min_scale: float) -> None:
        self.size, self.min_scale = size, min_scale

    def __call__(self, path: Path) -> torch.Tensor:
        return random_resized_crop(read_rgb(path), self.size, self.min_scale)


class PILTransform:
    """Loader applying a transform to the PIL RGB image (the release's way; tests)."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, path: Path) -> torch.Tensor:
        return self.transform(read_pil_rgb(path))


def pretrain_dataset(roots: Sequence[str | Path], input_size: int, min_crop_scale: float = 0.2,
                     repeat: int = 1) -> PretrainImages:
    """The training pipeline: items ``(uint8 [3, input_size, input_size], n_skipped)``; batch them
    with :func:`collate` and :func:`normalize` the batch on the device."""
    return PretrainImages(roots, _UInt8Crop(input_size, min_crop_scale), repeat)


def release_dataset(roots: Sequence[str | Path], input_size: int, min_crop_scale: float = 0.2,
                    repeat: int = 1) -> PretrainImages:
    """The release's pipeline (PIL, float32, normalised in the workers), for comparisons."""
    return PretrainImages(roots, PILTransform(pretrain_transform(input_size, min_crop_scale)), repeat)


def collate(batch: Sequence[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """Stack ``(image, n_skipped)`` items; channels-last images stay channels-last (a plain copy
    into the worker's shared memory instead of a transposition per image)."""
    images, skipped = zip(*batch)
    hwc = default_collate([img.permute(1, 2, 0) for img in images])
    return [hwc.permute(0, 3, 1, 2), default_collate(skipped)]


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale, shift`` with ``x * scale + shift == (x / 255 - mean) / std``, made once per device."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (1 / (255 * std)).float().to(device), (-mean / std).float().to(device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] (any memory layout) -> ImageNet-normalised float32, contiguous, in one
    kernel on the images' device. float32 because the norm-pix loss target is computed from it."""
    scale, shift = _normalisation(images.device)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    return torch.addcmul(shift, images, scale, out=out)
