"""Segmentation evaluation against mmsegmentation 0.x with BEiT's ADE20K configs: the test resize
(min_size = crop, no long-side limit), sliding windows (stride, unpadded small windows), aug-test
averaging softmax probabilities, metrics accumulated over a set."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bridges.segmentation.data import test_size as eval_size  # not collected as a test
from bridges.segmentation.evaluation import SegMetrics, predict, slide_logits
from bridges.segmentation.recipes import get_recipe
from pretrain.data import normalize
from tests.conftest import perturbed_mae


class Recorder:
    """A ``logits_of`` that keeps the windows it is given and answers with ``answer(window)``."""

    def __init__(self, answer):
        self.answer, self.windows = answer, []

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        self.windows.append(window.clone())
        return self.answer(window)

    def offsets(self, image: torch.Tensor) -> list[tuple[int, int]]:
        """Where in ``image`` each window was cut (its pixels are all distinct, so one place fits)."""
        found = []
        for window in self.windows:
            h, w = window.shape[-2:]
            found.append(next((y, x) for y in range(image.shape[-2] - h + 1) for x in range(image.shape[-1] - w + 1)
                              if torch.equal(image[..., y:y + h, x:x + w], window)))
        return found


def distinct_pixels(h: int, w: int) -> torch.Tensor:
    """A normalised-like image [1, 3, h, w]: channel 0 = row, channel 1 = column, channel 2 = 0."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).float()[None]


def zeros(classes: int):
    return lambda window: window.new_zeros(1, classes, *window.shape[-2:])


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
def test_windows_step_by_the_stride_and_average_where_they_overlap():
    image = distinct_pixels(100, 130)
    position = Recorder(lambda w: w[:, :2, :1, :1].expand(1, 2, *w.shape[-2:]))  # the window's (top, left)
    out = slide_logits(position, image, crop=64, stride=43, num_classes=2)
    # rows: 0 and 100 - 64 = 36; columns: 0, 43 and 130 - 64 = 66 (stride 64 would give 0, 64, 66)
    assert position.offsets(image) == [(0, 0), (0, 43), (0, 66), (36, 0), (36, 43), (36, 66)]
    assert all(w.shape[-2:] == (64, 64) for w in position.windows)
    # each pixel: the mean of the (top, left) of the windows that cover it
    expected_left = {10: 0, 63: (0 + 43) / 2, 64: 43, 65: 43, 66: (43 + 66) / 2, 106: (43 + 66) / 2, 107: 66}
    for col, left in expected_left.items():
        assert out[0, 1, 0, col] == left, col
    assert out[0, 0, 20, 0] == 0 and out[0, 0, 50, 0] == 36 / 2 and out[0, 0, 80, 0] == 36


def test_predict_slides_with_the_recipes_stride():
    recipe = get_recipe("demo")  # crop 64, stride 43; a 64 x 150 image keeps its size
    cols = torch.arange(150, dtype=torch.uint8).expand(64, 150)
    image = torch.stack([cols, torch.arange(64, dtype=torch.uint8)[:, None].expand(64, 150), cols * 0])
    recorder = Recorder(zeros(recipe.num_labels))
    predict(recorder, image, recipe, (64, 150))
    assert recorder.offsets(normalize(image[None])) == [(0, 0), (0, 43), (0, 86)]  # stride 64: 0, 64, 86


def test_a_side_shorter_than_the_window_is_run_unpadded():
    recorder = Recorder(zeros(3))
    slide_logits(recorder, distinct_pixels(40, 50), crop=64, stride=43, num_classes=3)
    assert [w.shape[-2:] for w in recorder.windows] == [(40, 50)]
    recorder = Recorder(zeros(3))
    image = distinct_pixels(40, 100)
    out = slide_logits(recorder, image, crop=64, stride=43, num_classes=3)
    assert recorder.offsets(image) == [(0, 0), (0, 36)] and out.shape == (1, 3, 40, 100)
    assert all(w.shape[-2:] == (40, 64) for w in recorder.windows)


def test_sliding_window_equals_whole_image_when_the_window_covers_it():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)

    for size in ((64, 64), (40, 56)):  # the window, and smaller than the window
        image = torch.randn(1, 3, *size)
        whole = F.interpolate(conv(image), size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(slide_logits(conv, image, crop=64, stride=43, num_classes=5), whole, atol=1e-6,
                                   rtol=0)
    # a per-pixel model gives the same logits from any tiling of overlapping windows
    pointwise = torch.nn.Conv2d(3, 5, 1)
    big = torch.randn(1, 3, 100, 130)
    torch.testing.assert_close(slide_logits(pointwise, big, crop=64, stride=43, num_classes=5), pointwise(big),
                               atol=1e-5, rtol=0)


def test_the_segmentation_model_runs_a_window_smaller_than_its_image_size():
    pytest.importorskip("transformers")
    from bridges.segmentation.model import convert_to_upernet

    model = convert_to_upernet(perturbed_mae(scale=0.02, img_size=64).state_dict(), img_size=64, num_labels=4).model
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.beit.layers:  # zero at conversion: give the resampled tables something to resample
            layer.relative_position_bias.relative_position_bias_table.normal_()
        image = torch.randn(1, 3, 40, 56)  # 5 x 7 patches of the 8 x 8 grid the model was built for
        whole = model(image).logits
        slid = slide_logits(lambda x: model(x).logits, image, crop=64, stride=43, num_classes=4)
    assert whole.shape == (1, 4, 20, 28) and torch.isfinite(whole).all()
    torch.testing.assert_close(slid, F.interpolate(whole, size=(40, 56), mode="bilinear", align_corners=False))


# --------------------------------------------------------------------------- prediction and aug-test
A = torch.tensor([5.0, 3.0, 0.0])  # softmax (0.876, 0.118, 0.006)
B = torch.tensor([0.0, 3.0, 4.0])  # softmax (0.013, 0.265, 0.721)
# mean of A and B: logits (2.5, 3, 2) -> class 1; probabilities (0.444, 0.192, 0.364) -> class 0


def left_a_right_b(window: torch.Tensor) -> torch.Tensor:
    """Logits A on the window's left half, B on its right half: a flipped pass swaps them."""
    h, w = window.shape[-2:]
    out = B[None, :, None, None].repeat(1, 1, h, w)
    out[..., :w // 2] = A[:, None, None]
    return out


def test_aug_test_averages_probabilities_over_flips():
    recipe = dataclasses.replace(get_recipe("demo"), num_labels=3, aug_test_scales=(1.0,))
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)  # one window; each pixel sees A once and B once
    assert ((A + B) / 2).argmax() == 1 and (A.softmax(0) + B.softmax(0)).argmax() == 0
    single = predict(left_a_right_b, image, recipe, (64, 64))
    assert (single[:, :32] == 0).all() and (single[:, 32:] == 2).all()
    assert (predict(left_a_right_b, image, recipe, (64, 64), aug_test=True) == 0).all()


def test_aug_test_runs_every_scale_flipped_and_not():
    recipe = get_recipe("demo")  # scales 0.75, 1.0, 1.25 of (128, 64): 64 x 64 (min_size), 64 x 64, 80 x 80
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    recorder = Recorder(zeros(recipe.num_labels))
    predict(recorder, image, recipe, (64, 64), aug_test=True)
    assert len(recorder.windows) == (1 + 1 + 4) * 2 and all(w.shape[-2:] == (64, 64) for w in recorder.windows)
    unflipped = normalize(image[None])
    assert torch.equal(recorder.windows[0], unflipped) and torch.equal(recorder.windows[1], unflipped.flip(-1))


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


def test_metrics_accumulate_areas_over_images_of_different_sizes():
    images = [  # (pred, label)
        (torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0, 0], [1, 255]])),  # class 2 absent; the 255 pixel unscored
        (torch.tensor([[2, 2, 0, 0]]), torch.tensor([[2, 2, 2, 0]])),        # class 1 absent
    ]
    m = SegMetrics.empty(3)
    for pred, label in images:
        m.add(pred, label)
    # areas over both: class 0 inter 1+1, pred 1+2, label 2+1; class 1: 1, 2, 1; class 2: 0+2, 0+2, 0+3
    assert m.intersect.tolist() == [2, 1, 2] and m.union.tolist() == [4, 2, 3] and m.label.tolist() == [3, 1, 3]
    s = m.summary()
    assert s["IoU"] == [0.5, 0.5, 2 / 3] and math.isclose(s["mIoU"], 5 / 9)  # per image: (1/2 + 7/12) / 2 = 13/24
    assert math.isclose(s["mAcc"], (2 / 3 + 1 + 2 / 3) / 3) and math.isclose(s["aAcc"], 5 / 7)
    # processes measure their images apart and sum the areas: the same numbers
    parts = [SegMetrics.empty(3) for _ in images]
    for part, (pred, label) in zip(parts, images):
        part.add(pred, label)
    assert SegMetrics.from_tensor(sum(p.as_tensor() for p in parts)).summary() == s
