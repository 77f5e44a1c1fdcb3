"""Segmentation data (a :class:`MaskFolder` per split: ADE20K's layout or folders of one's own, see
:mod:`bridges.segmentation.data_spec`) and mmsegmentation 0.x's training pipeline (BEiT's ADE20K UperNet
configs), on ``torchvision.transforms.v2`` with ``tv_tensors``.

:class:`MaskFolder` items are ``(uint8 image [3, H, W], int64 labels [H, W])`` at full resolution (the
validation set); mask values become labels by the run's :class:`LabelRule` (ADE20K:
``reduce_zero_label``, annotation 0 "other" ignored, 1..150 become 0..149), ignored pixels 255.

:class:`TrainingCrops` runs the reference training pipeline, setting by setting:

1. Resize: a ratio uniform in ``ratio_range``, the scale ``(int(2048 * ratio), int(512 * ratio))``
   (truncated), the image rescaled to fit it keeping its aspect ratio (mmcv's ``imrescale``):
   OpenCV's bilinear on uint8 for the image (:func:`resize_image`), nearest for the labels.
2. RandomCrop to the crop size, drawn again (up to 10 times) while it holds one class only or one
   class covers 75% or more of its labelled pixels.
3. Horizontal flip with probability 1/2.
4. PhotoMetricDistortion: brightness, contrast (first or last), saturation and hue, each with
   probability 1/2, in uint8 with truncation; saturation and hue through OpenCV's 8-bit HSV.
5. Normalize, then pad bottom/right to the crop: the image with 0 (the mean colour), the labels with
   255. The items are padded uint8 crops with their valid ``(h, w)``; :func:`normalize_crops`
   normalises a batch on the device and zeroes the padding, in the training step.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bridges.segmentation.data_spec import IGNORE_INDEX, LabelRule, SplitFolders, pairs
from bridges.segmentation.recipes import SegRecipe
from pretrain.data import normalize
from pretrain.errors import DataError


class MaskFolder(Dataset):
    """One split: images and their masks paired by file stem, the mask values read by a :class:`LabelRule`."""

    def __init__(self, split: SplitFolders, rule: LabelRule) -> None:
        self.pairs, self.rule = pairs(split), rule

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The image (RGB uint8) and its labels (uint8, ignored pixels :data:`IGNORE_INDEX`), full size."""
        image_path, mask_path = self.pairs[index]
        try:
            image = decode_image(str(image_path), mode=ImageReadMode.RGB)
            mask = decode_image(str(mask_path), mode=ImageReadMode.GRAY)[0]
        except RuntimeError as e:
            raise DataError(f"cannot read {image_path.name}/{mask_path.name}: {e}") from None
        if image.shape[-2:] != mask.shape:
            raise DataError(f"{image_path.name} is {tuple(image.shape[-2:])} but its mask is {tuple(mask.shape)}")
        return tv_tensors.Image(image), tv_tensors.Mask(mask_labels(mask, self.rule, mask_path))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor).long()


def mask_labels(mask: torch.Tensor, rule: LabelRule, path: Path | str = "mask") -> torch.Tensor:
    """Mask values -> labels: the rule's ignore value (and 0 with ``reduce_zero_label``, k -> k - 1)
    become :data:`IGNORE_INDEX`, as mmsegmentation (an ignored pixel stays ignored after the reduction);
    a value that is neither a class nor ignored is a one-line error naming the file."""
    ignored = mask == rule.ignore_index
    labels = mask.to(torch.int64)
    if rule.reduce_zero_label:
        ignored |= mask == 0
        labels = labels - 1
    unknown = ~ignored & (labels >= rule.num_labels)
    if unknown.any():
        value = int(mask[unknown].min())
        raise DataError(f"{path}: mask value {value} is neither a class ({rule.class_values()} with "
                        f"{rule.num_labels} labels{', reduce-zero-label' if rule.reduce_zero_label else ''}) nor "
                        f"the ignore index {rule.ignore_index}")
    return labels.masked_fill_(ignored, IGNORE_INDEX).to(torch.uint8)


def scale_to_fit(height: int, width: int, long_side: float, short_side: float) -> tuple[int, int]:
    """The size of a ``keep_ratio`` resize into (long, short) (mmsegmentation's rescale rule)."""
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 image [..., 3, H, W] resized to ``size`` as the reference does (OpenCV bilinear, half-pixel
    centres, no antialiasing), rounded back to uint8: within 1 of OpenCV's fixed-point result."""
    x = image.reshape(-1, *image.shape[-3:]).float()
    out = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*image.shape[:-2], *size)


def resize_labels(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A label map [..., H, W] resized to ``size`` by OpenCV's nearest rule, source index
    ``floor(i * (1 / (out / in)))`` in double (torch's "nearest" computes it in float32 and picks a
    neighbour on about 1 row or column in 2000)."""
    rows, cols = ((torch.arange(out, dtype=torch.float64, device=label.device) * (1 / (out / n))).floor().long()
                  .clamp(max=n - 1) for n, out in zip(label.shape[-2:], size))
    return label[..., rows[:, None], cols]


class RandomResizeRatio(v2.Transform):
    """mmsegmentation's ``Resize(img_scale, ratio_range, keep_ratio=True)``: the scale times a ratio drawn
    from ``ratio_range``, truncated to integers, then a keep-ratio resize to fit it; images bilinear
    (:func:`resize_image`), labels nearest (:func:`resize_labels`)."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list) -> dict:
        low, high = self.ratio_range
        ratio = random.random() * (high - low) + low
        h, w = v2.query_size(flat_inputs)
        return {"size": scale_to_fit(h, w, int(self.scale[0] * ratio), int(self.scale[1] * ratio))}

    def transform(self, inpt, params: dict):
        resize = resize_labels if isinstance(inpt, tv_tensors.Mask) else resize_image
        return tv_tensors.wrap(resize(inpt.as_subclass(torch.Tensor), params["size"]), like=inpt)


class CategoryBalancedCrop(v2.Transform):
    """mmsegmentation's ``RandomCrop(size, cat_max_ratio)``: a random crop, drawn again (up to ``tries``
    times) while it holds fewer than two classes or one covers ``cat_max_ratio`` or more of its labelled
    pixels; after ``tries`` rejections the next draw is kept unchecked."""

    def __init__(self, size: int, cat_max_ratio: float, tries: int = 10) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.tries = size, cat_max_ratio, tries

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.size, h), min(self.size, w)

        def draw() -> tuple[int, int]:
            return random.randint(0, h - ch), random.randint(0, w - cw)

        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        box = draw()
        if mask is not None and self.cat_max_ratio < 1:
            for _ in range(self.tries):
                labels = mask[box[0]:box[0] + ch, box[1]:box[1] + cw]
                counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten().long())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = draw()
        return {"top": box[0], "left": box[1], "height": ch, "width": cw}

    def transform(self, inpt, params: dict):
        return F.crop(inpt, **params)


@functools.cache
def _hsv_divisors() -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's RGB2HSV_b tables in 12-bit fixed point: ``round((255 << 12) / v)`` and
    ``round((180 << 12) / (6 * diff))``, 0 at 0."""
    i = torch.arange(256, dtype=torch.float64)
    sdiv = torch.where(i > 0, (255 << 12) / i, 0).round().long()
    hdiv = torch.where(i > 0, (180 << 12) / (6 * i), 0).round().long()
    return sdiv, hdiv


def rgb_to_hsv8(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_RGB2HSV`` of a uint8 image [..., 3, H, W] (integer arithmetic, bit-exact):
    H in 0..179 (units of 2 degrees), S and V in 0..255."""
    sdiv, hdiv = (table.to(image.device) for table in _hsv_divisors())
    r, g, b = image.long().unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = (diff * sdiv[v] + (1 << 11)) >> 12
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv[diff] + (1 << 11)) >> 12
    h = torch.where(h < 0, h + 180, h)
    return torch.stack([h, s, v], -3).to(torch.uint8)


# HSV2RGB's sectors: which of (v, v(1 - s), v(1 - s f), v(1 - s(1 - f))) is b, g and r
_SECTORS = torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])
_HSV2RGB_BLOCK = 32  # pixels per step of OpenCV's AVX2 HSV2RGB_b (truncates); the rest of a row is rounded


def hsv8_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_HSV2RGB`` of a uint8 HSV image [..., 3, H, W] (H in 0..179), step by step in
    float32 as x86 builds of OpenCV (4.5 to 4.14) compute it: ``1 - a * b`` fused (FMA), and the result
    truncated to uint8 except in the last ``W % 32`` pixels of each row (its scalar tail), rounded there."""
    one = torch.tensor(1.0, dtype=torch.float32)
    h, s, v = hsv.float().unbind(-3)
    s, v = s * (one / 255), v * (one / 255)
    h = h * (torch.tensor(6.0, dtype=torch.float32) / 180)  # hsv8 hues are below 180: h in [0, 6)
    sector = h.floor()
    f = h - sector

    def one_minus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # float32 FMA: one rounding
        return (1 - a.double() * b.double()).float()

    tab = torch.stack([v, v * (one - s), v * one_minus(s, f), v * one_minus(s, one - f)])
    rgb = tab.gather(0, _SECTORS.to(hsv.device)[sector.long()].movedim(-1, 0)).flip(0) * 255
    width = rgb.shape[-1]
    tail = torch.arange(width, device=hsv.device) >= width - width % _HSV2RGB_BLOCK
    return torch.where(tail, rgb.round(), rgb.trunc()).clamp(0, 255).to(torch.uint8).movedim(0, -3)


def convert(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """mmsegmentation's ``convert``: ``image * alpha + beta`` in float32, clipped to 0..255 and truncated
    (not rounded) back to uint8."""
    return (image.float() * alpha + beta).clamp(0, 255).to(torch.uint8)


class PhotoMetricDistortion(v2.Transform):
    """mmsegmentation's PhotoMetricDistortion on uint8 images, in its order, each step with probability
    1/2: brightness +-32; contrast x[0.5, 1.5], here or last (``contrast_first``, probability 1/2);
    saturation x[0.5, 1.5] and a hue shift of -18..17 OpenCV units (2 degrees: +-36 degrees), each
    through its own 8-bit HSV round trip."""

    def make_params(self, flat_inputs: list) -> dict:
        def maybe(draw: Callable[[], float]) -> float | None:
            return draw() if random.randrange(2) else None

        return {"brightness": maybe(lambda: random.uniform(-32, 32)),
                "contrast_first": random.randrange(2) == 1,
                "contrast": maybe(lambda: random.uniform(0.5, 1.5)),
                "saturation": maybe(lambda: random.uniform(0.5, 1.5)),
                "hue": maybe(lambda: random.randint(-18, 17))}  # numpy's randint(-18, 18): high excluded

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        x = inpt.as_subclass(torch.Tensor)
        if params["brightness"] is not None:
            x = convert(x, beta=params["brightness"])
        if params["contrast"] is not None and params["contrast_first"]:
            x = convert(x, alpha=params["contrast"])
        if params["saturation"] is not None:
            hsv = rgb_to_hsv8(x)
            hsv[..., 1, :, :] = convert(hsv[..., 1, :, :], alpha=params["saturation"])
            x = hsv8_to_rgb(hsv)
        if params["hue"] is not None:
            hsv = rgb_to_hsv8(x)
            hsv[..., 0, :, :] = (hsv[..., 0, :, :].long() + params["hue"]) % 180
            x = hsv8_to_rgb(hsv)
        if params["contrast"] is not None and not params["contrast_first"]:
            x = convert(x, alpha=params["contrast"])
        return tv_tensors.wrap(x, like=inpt)


def train_transform(recipe: SegRecipe) -> v2.Compose:
    """mmsegmentation's ADE20K training pipeline at the recipe's crop, up to the normalisation and the
    padding (see :class:`TrainingCrops`)."""
    return v2.Compose([
        RandomResizeRatio(recipe.scale, recipe.ratio_range),
        CategoryBalancedCrop(recipe.crop_size, recipe.cat_max_ratio),
        v2.RandomHorizontalFlip(),
        PhotoMetricDistortion(),
    ])


class TrainingCrops(Dataset):
    """The training items of a :class:`MaskFolder` through :func:`train_transform`: ``(uint8 image
    [3, S, S], int64 labels [S, S], valid (h, w) int64 [2])`` at the crop size S, padded bottom/right,
    the labels with the ignore index. The image's padding is 0 until :func:`normalize_crops` makes it
    the mean colour, as the reference pads after normalising."""

    def __init__(self, images: MaskFolder, recipe: SegRecipe) -> None:
        self.images, self.transform, self.crop = images, train_transform(recipe), recipe.crop_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, label = self.transform(*self.images.read(index))
        h, w = image.shape[-2:]
        padding = (0, self.crop - w, 0, self.crop - h)
        image = torch.nn.functional.pad(image.as_subclass(torch.Tensor), padding)
        label = torch.nn.functional.pad(label.as_subclass(torch.Tensor).long(), padding, value=IGNORE_INDEX)
        return image, label, torch.tensor([h, w])


def normalize_crops(images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """A batch of padded uint8 crops [B, 3, S, S] normalised, with 0 outside each crop's valid (h, w)
    ``sizes`` [B, 2]: the reference pads after normalising, so its padding is the mean colour."""
    out = normalize(images)
    rows = torch.arange(out.shape[-2], device=out.device) < sizes[:, :1]
    cols = torch.arange(out.shape[-1], device=out.device) < sizes[:, 1:]
    return out.masked_fill_(~(rows[:, :, None] & cols[:, None, :])[:, None], 0)


def test_size(height: int, width: int, recipe: SegRecipe, ratio: float = 1.0) -> tuple[int, int]:
    """The evaluation resize of BEiT's ADE20K configs: the scale (int(long x ratio), int(short x ratio))
    of MultiScaleFlipAug, then ``Resize(keep_ratio=True, min_size=crop)``, which sets the short side to
    max(short scale, crop) and drops the long-side limit, so no image is smaller than a window."""
    short = max(min(int(side * ratio) for side in recipe.scale), recipe.crop_size)
    return scale_to_fit(height, width, short * max(height, width) / min(height, width), short)
