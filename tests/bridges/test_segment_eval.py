"""Segmentation evaluation: sliding-window inference, prediction at the annotation's resolution, metrics."""
from __future__ import annotations

import math

import torch

from bridges.segmentation.evaluation import SegMetrics, predict, slide_logits
from bridges.segmentation.recipes import get_recipe
from pretrain.data import normalize


# --------------------------------------------------------------------------- sliding windows
def test_sliding_window_equals_whole_image_when_the_window_covers_it():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)

    image = torch.randn(1, 3, 64, 64)
    whole = torch.nn.functional.interpolate(conv(image), size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(slide_logits(conv, image, crop=64, stride=43, num_classes=5), whole, atol=1e-6,
                               rtol=0)
    # smaller than the window: padded black, the padding's logits dropped
    small = normalize(torch.zeros(1, 3, 40, 64, dtype=torch.uint8))
    padded = normalize(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    torch.testing.assert_close(slide_logits(conv, small, crop=64, stride=43, num_classes=5),
                               slide_logits(conv, padded, crop=64, stride=43, num_classes=5)[:, :, :40])
    # a per-pixel model gives the same logits from any tiling of overlapping windows
    pointwise = torch.nn.Conv2d(3, 5, 1)
    big = torch.randn(1, 3, 100, 130)
    torch.testing.assert_close(slide_logits(pointwise, big, crop=64, stride=43, num_classes=5), pointwise(big),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- prediction and aug-test
def test_predict_returns_the_annotation_resolution():
    recipe = get_recipe("demo")
    pointwise = torch.nn.Conv2d(3, 4, 1)
    torch.manual_seed(0)  # 16 x 16 blocks of one colour each: resizing keeps them but at their borders
    image = torch.randint(0, 255, (3, 6, 8), dtype=torch.uint8).repeat_interleave(16, 1).repeat_interleave(16, 2)
    with torch.no_grad():
        pred = predict(pointwise, image, recipe, (96, 128))
        aug = predict(pointwise, image, recipe, (96, 128), aug_test=True)
    assert pred.shape == aug.shape == (96, 128) and pred.dtype == torch.int64
    expected = pointwise(normalize(image[None]))[0].argmax(0)
    assert (pred == expected).float().mean() > 0.9  # resized to 64 x 85 and back: borders may differ


# --------------------------------------------------------------------------- metrics
def test_metric_definitions_on_hand_made_cases():
    m = SegMetrics.empty(3)
    label = torch.tensor([0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    m.add(pred, label)
    s = m.summary()
    # class 0: intersect 1, union 2; class 1: intersect 2, union 3; class 2: absent from both -> left out
    assert s["IoU"][0] == 0.5 and math.isclose(s["IoU"][1], 2 / 3) and math.isnan(s["IoU"][2])
    assert math.isclose(s["mIoU"], (0.5 + 2 / 3) / 2)
    assert math.isclose(s["mAcc"], (0.5 + 1.0) / 2) and math.isclose(s["aAcc"], 3 / 4)
    m.add(torch.tensor([2]), torch.tensor([0]))  # a false positive of class 2 makes it count, IoU 0
    assert m.summary()["IoU"][2] == 0.0
