"""ADE20K scene parsing (``ADEChallengeData2016`` layout) and mmsegmentation's 512 pipelines, on
``torchvision.transforms.v2`` with ``tv_tensors``.

Items are ``(uint8 image [3, H, W], int64 labels [H, W])``; labels follow mmsegmentation's
``reduce_zero_label``: annotation 0 ("other") becomes the ignore index 255, 1..150 become 0..149.
Normalisation happens on the device, in the training step.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pretrain.errors import DataError, MissingDataError

from bridges.segmentation.recipes import SegRecipe
from bridges.segmentation.model import IGNORE_INDEX

SPLITS = {"train": "training", "val": "validation"}
LAYOUT = "ROOT/images/{training,validation}/*.jpg and ROOT/annotations/{training,validation}/*.png"


def _listing(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        expected = f" (expected the ADE20K layout {LAYOUT})"
        if folder.exists():
            raise DataError(f"{folder} is not a folder{expected}")
        raise MissingDataError(f"{folder} does not exist{expected}")
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in suffixes}


def _few(names: set[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


class ADE20K(Dataset):
    """One split of an ADE20K-layout folder, image and annotation paired by file name."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        root = Path(root).expanduser()
        folder = SPLITS[split]
        images = _listing(root / "images" / folder, (".jpg", ".jpeg", ".png"))
        labels = _listing(root / "annotations" / folder, (".png",))
        if images.keys() != labels.keys():
            problems = []
            if images.keys() - labels.keys():
                problems.append(f"images without annotation: {_few(images.keys() - labels.keys())}")
            if labels.keys() - images.keys():
                problems.append(f"annotations without image: {_few(labels.keys() - images.keys())}")
            raise DataError(f"{root} ({folder}): " + "; ".join(problems))
        if not images:
            raise DataError(f"{root / 'images' / folder} holds no images (expected the ADE20K layout {LAYOUT})")
        self.pairs = [(images[k], labels[k]) for k in sorted(images)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The image (RGB uint8) and its labels after ``reduce_zero_label``, at full resolution."""
        image_path, label_path = self.pairs[index]
        try:
            image = decode_image(str(image_path), mode=ImageReadMode.RGB)
            label = decode_image(str(label_path), mode=ImageReadMode.GRAY)[0]
        except RuntimeError as e:
            raise DataError(f"cannot read {image_path.name}/{label_path.name}: {e}") from None
        if image.shape[-2:] != label.shape:
            raise DataError(f"{image_path.name} is {tuple(image.shape[-2:])} but its annotation is {tuple(label.shape)}")
        return tv_tensors.Image(image), tv_tensors.Mask(reduce_zero_label(label))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor).long()


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """0 ("other") -> ignore (255), k -> k - 1."""
    out = label.to(torch.int64) - 1
    out[label == 0] = IGNORE_INDEX
    return out.to(torch.uint8)


def scale_to_fit(height: int, width: int, long_side: float, short_side: float) -> tuple[int, int]:
    """The size of a ``keep_ratio`` resize into (long, short) (mmsegmentation's rescale rule)."""
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomResizeRatio(v2.Transform):
    """Resize to fit ``scale`` x a ratio drawn from ``ratio_range``, keeping the aspect ratio."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list) -> dict:
        ratio = random.uniform(*self.ratio_range)
        h, w = v2.query_size(flat_inputs)
        return {"size": scale_to_fit(h, w, self.scale[0] * ratio, self.scale[1] * ratio)}

    def transform(self, inpt, params: dict):
        return F.resize(inpt, params["size"], antialias=True)


class CategoryBalancedCrop(v2.Transform):
    """A random crop in which no category covers more than ``cat_max_ratio`` of the labelled pixels
    (up to 10 tries, then the last one), as mmsegmentation's RandomCrop."""

    def __init__(self, size: int, cat_max_ratio: float, tries: int = 10) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.tries = size, cat_max_ratio, tries

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.size, h), min(self.size, w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        box = (0, 0)
        for _ in range(self.tries):
            box = (random.randint(0, h - ch), random.randint(0, w - cw))
            if mask is None or self.cat_max_ratio >= 1:
                break
            labels = mask[box[0]:box[0] + ch, box[1]:box[1] + cw]
            counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten().long())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return {"top": box[0], "left": box[1], "height": ch, "width": cw}

    def transform(self, inpt, params: dict):
        return F.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmsegmentation's photometric distortion, each part with probability 1/2: brightness +-32,
    contrast x[0.5, 1.5] (before or after the colour parts), saturation x[0.5, 1.5], hue +-18 degrees."""

    def make_params(self, flat_inputs: list) -> dict:
        def maybe(low: float, high: float) -> float | None:
            return random.uniform(low, high) if random.random() < 0.5 else None

        return {"brightness": maybe(-32, 32), "contrast": maybe(0.5, 1.5), "contrast_first": random.random() < 0.5,
                "saturation": maybe(0.5, 1.5), "hue": maybe(-18, 18)}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        x = inpt.float()
        if params["brightness"] is not None:
            x = (x + params["brightness"]).clamp(0, 255)
        if params["contrast"] is not None and params["contrast_first"]:
            x = (x * params["contrast"]).clamp(0, 255)
        x = x.round().to(torch.uint8)
        if params["saturation"] is not None:
            x = F.adjust_saturation(x, params["saturation"])
        if params["hue"] is not None:
            x = F.adjust_hue(x, params["hue"] / 360)
        if params["contrast"] is not None and not params["contrast_first"]:
            x = (x.float() * params["contrast"]).clamp(0, 255).round().to(torch.uint8)
        return tv_tensors.wrap(x, like=inpt)


def train_transform(recipe: SegRecipe) -> v2.Compose:
    """mmsegmentation's ADE20K training pipeline at the recipe's crop."""
    crop = recipe.crop_size
    return v2.Compose([
        RandomResizeRatio(recipe.scale, recipe.ratio_range),
        CategoryBalancedCrop(crop, recipe.cat_max_ratio),
        v2.RandomHorizontalFlip(),
        PhotoMetricDistortion(),
        PadTo(crop),
    ])


class PadTo(v2.Transform):
    """Pad bottom/right to ``size`` x ``size``: images with 0, labels with the ignore index."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size - w), max(0, self.size - h)]}

    def transform(self, inpt, params: dict):
        fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return F.pad(inpt, params["padding"], fill=fill)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 image [..., 3, H, W] resized to ``size`` as the reference does (OpenCV bilinear, half-pixel
    centres, no antialiasing), rounded back to uint8."""
    x = image.reshape(-1, *image.shape[-3:]).float()
    out = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*image.shape[:-2], *size)


def test_size(height: int, width: int, recipe: SegRecipe, ratio: float = 1.0) -> tuple[int, int]:
    """The evaluation resize of BEiT's ADE20K configs: the scale (int(long x ratio), int(short x ratio))
    of MultiScaleFlipAug, then ``Resize(keep_ratio=True, min_size=crop)``, which sets the short side to
    max(short scale, crop) and drops the long-side limit, so no image is smaller than a window."""
    short = max(min(int(side * ratio) for side in recipe.scale), recipe.crop_size)
    return scale_to_fit(height, width, short * max(height, width) / min(height, width), short)
