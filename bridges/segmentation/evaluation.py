"""Segmentation evaluation as mmsegmentation 0.x runs BEiT's ADE20K UperNet configs, so the numbers
compare with published ones.

Each image is resized to the recipe's test scale (short side max(512 x ratio, crop), no long-side
limit: ``Resize(keep_ratio=True, min_size=crop)``), segmented with a sliding window (512, stride 341;
a window is clipped to the image, so an image smaller than it runs unpadded; overlapping windows
average their logits), and its logits are resized back to the annotation's resolution. ``aug_test``
adds scales 0.5..1.75, each also flipped horizontally, and averages the softmax probabilities of
all of them. Metrics are accumulated over the whole set: mIoU over the classes present in the
prediction or the ground truth, mAcc (mean per-class recall), aAcc (correct / labelled pixels).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bridges.segmentation.data import resize_image, test_size
from bridges.segmentation.model import IGNORE_INDEX
from bridges.segmentation.recipes import SegRecipe
from pretrain.data import normalize

Logits = Callable[[torch.Tensor], torch.Tensor]  # normalised [B, 3, h, w] -> [B, C, h', w']


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    """mmsegmentation's grid: every ``stride`` pixels, the last window moved back inside the image."""
    steps = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(steps)]


def slide_logits(logits_of: Logits, image: torch.Tensor, crop: int, stride: int, num_classes: int) -> torch.Tensor:
    """Logits [1, C, H, W] of a normalised image [1, 3, H, W] from windows of at most crop x crop
    every ``stride`` pixels, each window's logits resized to it and averaged where windows overlap.
    A side shorter than the crop gives windows of that side (run as they are, not padded), as
    mmsegmentation's ``slide_inference``."""
    _, _, h, w = image.shape
    total = image.new_zeros((1, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y in _window_starts(h, crop, stride):
        for x in _window_starts(w, crop, stride):
            window = image[:, :, y:y + crop, x:x + crop]
            out = F.interpolate(logits_of(window).float(), size=window.shape[-2:], mode="bilinear",
                                align_corners=False)
            total[:, :, y:y + crop, x:x + crop] += out
            count[:, :, y:y + crop, x:x + crop] += 1
    return total / count


def predict(logits_of: Logits, image: torch.Tensor, recipe: SegRecipe, out_size: Sequence[int],
            aug_test: bool = False) -> torch.Tensor:
    """Class per pixel [H, W] at ``out_size`` for a uint8 image [3, h, w] (already on its device).
    Each scale x flip gives softmax probabilities at ``out_size`` (logits resized, then softmax, then
    flipped back); the argmax of their mean (of their sum) is the class, as mmsegmentation's ``aug_test``."""
    scales = recipe.aug_test_scales if aug_test else (1.0,)
    flips = (False, True) if aug_test else (False,)
    summed = None
    for ratio in scales:
        size = test_size(*image.shape[-2:], recipe, ratio)
        resized = normalize(resize_image(image[None], size))
        for flip in flips:
            x = resized.flip(-1) if flip else resized
            logits = slide_logits(logits_of, x, recipe.crop_size, recipe.eval_stride, recipe.num_labels)
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            probs = probs.flip(-1) if flip else probs
            summed = probs if summed is None else summed + probs
    return summed[0].argmax(0)


@dataclass
class SegMetrics:
    """Per-class areas accumulated over a set (sum them across processes before reading)."""

    intersect: torch.Tensor
    union: torch.Tensor
    label: torch.Tensor

    @classmethod
    def empty(cls, num_classes: int, device: torch.device | str = "cpu") -> "SegMetrics":
        zeros = torch.zeros(num_classes, dtype=torch.float64, device=device)
        return cls(zeros.clone(), zeros.clone(), zeros.clone())

    def add(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Count one image; pixels labelled with the ignore index are not scored."""
        n = len(self.intersect)
        keep = label != IGNORE_INDEX
        pred, label = pred[keep].long(), label[keep].long()
        area_pred = torch.bincount(pred, minlength=n)[:n].double()
        area_label = torch.bincount(label, minlength=n)[:n].double()
        area_inter = torch.bincount(label[pred == label], minlength=n)[:n].double()
        self.intersect += area_inter
        self.union += area_pred + area_label - area_inter
        self.label += area_label

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.intersect, self.union, self.label])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "SegMetrics":
        return cls(*t.unbind(0))

    def summary(self) -> dict[str, float | list[float]]:
        """mIoU and mAcc over the classes that occur (NaN classes left out), aAcc, per-class IoU and Acc."""
        iou = self.intersect / self.union  # NaN where a class is in neither prediction nor labels
        acc = self.intersect / self.label
        return {"mIoU": float(iou.nanmean()), "mAcc": float(acc.nanmean()),
                "aAcc": float(self.intersect.sum() / self.label.sum().clamp(min=1)),
                "IoU": [float(v) for v in iou.cpu()], "Acc": [float(v) for v in acc.cpu()]}
