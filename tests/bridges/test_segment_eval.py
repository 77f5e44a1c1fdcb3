"""Segmentation evaluation against mmsegmentation 0.x with BEiT's ADE20K configs: the test resize
(min_size = crop, no long-side limit), sliding-window inference, prediction, metrics."""
from __future__ import annotations

import math

import pytest
import torch

from bridges.segmentation.data import test_size as eval_size  # not collected as a test
from bridges.segmentation.evaluation import SegMetrics, predict, slide_logits
from bridges.segmentation.recipes import get_recipe
from pretrain.data import normalize


# --------------------------------------------------------------------------- the test resize
# (h, w) -> size, by hand from Resize(keep_ratio=True, min_size=crop) on the scale (int(long r), int(short r)):
# short = max(int(short r), crop), long = short x aspect, then imrescale: int(side x factor + 0.5)
@pytest.mark.parametrize("recipe, image, ratio, size", [
    # demo: crop 64, scale (128, 64)
    ("demo", (300, 400), 0.5, (64, 85)),     # short 32 < crop -> 64; 64 x 4/3 = 85.3
    ("demo", (300, 400), 1.0, (64, 85)),
    ("demo", (300, 400), 1.75, (112, 149)),  # int(64 x 1.75) = 112; 112 x 4/3 = 149.3
    ("demo", (1000, 200), 0.5, (320, 64)),   # long 320 > int(128 x 0.5): no long-side limit
    ("demo", (1000, 200), 1.0, (320, 64)),
    ("demo", (1000, 200), 1.75, (560, 112)),
    # ViT-B: crop 512, scale (2048, 512)
    ("upernet_vit_b_ade20k_160k", (300, 400), 0.5, (512, 683)),    # 256 -> 512; 682.7
    ("upernet_vit_b_ade20k_160k", (300, 400), 1.0, (512, 683)),
    ("upernet_vit_b_ade20k_160k", (300, 400), 1.75, (896, 1195)),  # 1194.7
    ("upernet_vit_b_ade20k_160k", (1000, 200), 0.5, (2560, 512)),  # above 2048 x 0.5 and 2048
    ("upernet_vit_b_ade20k_160k", (1000, 200), 1.0, (2560, 512)),
    ("upernet_vit_b_ade20k_160k", (1000, 200), 1.75, (4480, 896)),
])
def test_eval_resize_short_side_at_least_the_crop_no_long_side_limit(recipe, image, ratio, size):
    assert eval_size(*image, get_recipe(recipe), ratio) == size


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
