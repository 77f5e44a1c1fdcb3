"""The segmentation training pipeline against its reference, mmsegmentation 0.x as BEiT's ADE20K UperNet
configs use it, setting by setting: resize, crop, flip, photometric distortion, normalisation, padding.

OpenCV is not a dependency: its results for small fixed inputs are stored below (CHW uint8 as hex),
computed once with opencv-python-headless 4.5.5 and 4.14 (identical on these inputs); the ``pmd_*``
entries are mmsegmentation's PhotoMetricDistortion (numpy + OpenCV) with the draws of ``PMD_CASES``."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from bridges.segmentation.data import (
    CategoryBalancedCrop,
    MaskFolder,
    PhotoMetricDistortion,
    RandomResizeRatio,
    TrainingCrops,
    hsv8_to_rgb,
    mask_labels,
    normalize_crops,
    resize_image,
    resize_labels,
    rgb_to_hsv8,
    scale_to_fit,
    train_transform,
)
from bridges.segmentation.data_spec import LabelRule, layout_split
from bridges.segmentation.model import IGNORE_INDEX
from bridges.segmentation.recipes import get_recipe
from pretrain.data import normalize
from pretrain.errors import DataError

OPENCV = {
    "resize_a_4x5": (
        "8cb2526b96535b826f8e7cc5a74eaf9a84c1d63e6d9169395c7a6c9f2927ca4aea2fc8b5c34a4a776eaa39c09b42cbb5"
        "459a5ea2474481c38f8e4651"
    ),
    "resize_a_10x13": (
        "657083a3d3be51a7a45d2570dd979ca7bf906753a195517294afa7a2a3b0573465a7924bb2ae835c504648526a90c8a8"
        "56b2a470387db5acb4923a687d7b5967842a97eedbd8ab496c76693d69ae3492dbc6b9b6bcd4992e62a7e364596ecbc1"
        "b2aebbbaa6526398ae785987b6c9babdcacd433a66f3b76f33a6e6cfc9cec936254bab6347ae86562f1a0f0e1e3953a3"
        "54318e5f518466534a516477a85122753c46be967865616974c7672e7732329f6c442617151765575f9e4e44a6693619"
        "738d87678194895f6dc47c3e1eaccfc1cddfc34462a0eda35e33adc8b9b3bcbfb1645295bca460538dd7b2b3bace9b6f"
        "56a0914652769bbdb8b7c2ddb331725b127772450b83eae5f1b8275995c76b92e3567c998c907a416b9ec86483cd8463"
        "4f6462657290a09d5b7dc058303ac0c1babcd090225192cc527ba4b6a08e858f80669380586484a3aa896c5958617396"
        "78488d4b39a88a624438363f577b9cdb9174d9b07d553e322f3d566fd0bdafb97d63805f473a3d4c5ca1d2dd7e2e37ad"
        "83644e494f59"
    ),
    "resize_b_6x5": (
        "8e41379877a09241329fb33c3a8b65e0f07d599c50bccb351caedc86808b4c959c8f589cb54b6fa931c7e870764b4bba"
        "b83b45b28145ba6183b7a4a368a1b02c2572b26e7941747e9a3458153fd1c6397b4e5296988484c1bf65"
    ),
    "resize_b_9x16": (
        "aab8a5404066ae5f69ce9c7456474547b98469ac6558be8d7b8d786e6e7d98b2eaae90ddb17a4e32211922365380accd"
        "a3aba26f4c332527334970684e997838ccae8d79747887a879054a99da93572ebdb7b4bdd6b02d63838686643870715f"
        "3b4b668dc3bb56aab7775b3e2317171c5d84aab49b9bc9986b48362f3244627d4b89a85ab5e8bea697929eb4c26879ab"
        "2b6390886d574b504b3e689cc2606792a88c81aaafb6c87b504e96a3813c54879c9797a3ad871a4182ce834325aecbbb"
        "516381aaa08d788898a57855488da8afaed7db72b1ca8551280fb0f4e1452e4cb870384f658ac5b3a7a4b39e70416095"
        "6a3932a1aaa299a1b2c7574272c2b4873273a89999a3b86d4546907d43b1b48e8e8c8e9dbbab549287369ea87a7d7163"
        "4e6282afc9c087bdbc815737211b2129719cb58aa1b2aa7c55372b2931486c8c275b712989c29e8b81817f93a33c3e66"
        "668490668faca5b0c4db5a4c82737e8f6a533a2e313e557db0e48190d99a67441a1a1f30517cb1ada59dbaa776554034"
        "566d90bf7762b57187f7cfb39f9ca4afe187509d61477e8c856b61626544587ae4a05c3d83a8879ca9acc08e3b4b83bc"
    ),
    "rgb_row": (
        "00ff80ff0000ff0ac8032f4371b91b972ddda78b89a1d31f85059f5321090b275dad179b39f1c3af00ff8000ff00ffc8"
        "0a02b5d50f63d159fbb78d7d87abe941b33fe5a57f7381a9eb47bd4df7bb999100ff800000ff00c8c801a3cf1575ef83"
        "31f9dbd7ed1d67cb49e1935f45455f93e149cb671dedd7db"
    ),
    "rgb2hsv": (
        "000000003c781e5a960f5659b2ae5ea03d89827d792023722b703840474d515558b35caa38988c84000000fffffffff2"
        "f2aabdafdd77e269d1445b6b6ed48ed897f95b7fbdebe9c49a96e280e1394a5600ff80ffffffffc8c803b5d571b9ef97"
        "fbf9dbd7edabe9cbb3e1e5a57f7381a9ebadcb9bf7f1d7db"
    ),
    "hsv_row": (
        "94a8221e804892420c3c3a063884366a0404866e708c0e127c009e5628141a3a7414360a601c3e2eec104ea618a44a0a"
        "e4d8e60e50ac22b25c20fef608347ada54e8965e403c5282cc30ae46f8c4aaaac4f846ae30cc82523c405e96e854da7a"
        "3408f6fe205cb222ac500ee6d8e40a4aa418a64e10ece2f2"
    ),
    "hsv2rgb": (
        "b7f843ae2c487c4e3c090e96a832c224340873081e55b2227a500e91c5e40a2621184b4e00ec4b9c0ee846ae2bcc5c52"
        "1b405e8fe81bda4c2307005a1f498416730705e6d8d2094a3216a6400de0e2f2c4ee303c307d824f0609098d9f54bc7a"
        "2106f6fe205c5c04ac070bdaa1ae0624a413353910375551"
    ),
    "pmd_first": (
        "ff79a3e1ffb9ffe3e7d7adadf2ffb3ffb9a3f4ddd2ff8fa8ffc73dfdc8a5f4ffff97ef7effdf8ac8d7f1ff77c66dffd0"
        "8e60cdeaff7cd481ffe3c2969dd0dba5ff80fffffec9ddf4c3e77effbf8e5c5c8ec5e37ee787fffffffed6ffc3e871ff"
        "edc1bfc5e3d98fb47cffb8ada3afd0cd61a7acfabb8aadbbdfff7ec8b1f4f5c9c1edff51c7ffd7b6feffffff87d1d0b3"
        "fff2a47a8ebfffd0c2ffe1a379feff88b1ff64fca359ffeff5ff7cd9cff17cffffffecff64e274ff9749fffff2b592ff"
        "95ffe99479839da8e880e091"
    ),
    "pmd_last": (
        "8800003da249697917000c346fa51c2e5b00a695977700ab9f2e079c6c551a2b72006e00236051000111420058007c3a"
        "443904153a4a4f0089443e58556c9e025b84b28a5a9795a6006900475516000000177900696b6622185ab5b209832c9e"
        "471c3c2745ad0062008045653e2832ac0066007f53275746458b0087009a705a302424002e9f2d00b069596e4b34af1c"
        "a56f4b4b677a41af34a23d0000b07e00684700611800988d9a7a532db34b0ca98e86907e523a423c1e00a19ba8005f55"
        "565e341d0000004983009253"
    ),
}
PMD_CASES = {"first": dict(brightness=20.7, contrast_first=True, contrast=1.37, saturation=0.63, hue=11),
             "last": dict(brightness=None, contrast_first=False, contrast=0.71, saturation=1.42, hue=-17)}


def stored(key: str, height: int, width: int) -> torch.Tensor:
    return torch.frombuffer(bytearray.fromhex("".join(OPENCV[key])), dtype=torch.uint8).reshape(3, height, width)


def pattern(height: int, width: int, seed: int) -> torch.Tensor:
    """A fixed RGB uint8 image [3, H, W]; the same formula made the stored OpenCV inputs."""
    k = torch.arange(height * width * 3)
    return ((k * k * 13 + k * 7 + seed * 101) % 256).to(torch.uint8).reshape(3, height, width)


def write_ade(root, names=("a", "b"), split="training", size=(40, 56), labels=None):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{name}.jpg")
        label = labels if labels is not None else rng.integers(0, 5, size, dtype=np.uint8)
        Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
    return root


def test_labels_reduce_zero_and_ignore(tmp_path):
    labels = np.array([[0, 1, 2], [150, 0, 3]], dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    write_ade(tmp_path, names=("x",), size=labels.shape, labels=labels)
    image, label = MaskFolder(layout_split(tmp_path, "train"), LabelRule(150))[0]
    assert image.dtype == torch.uint8 and image.shape == (3, *labels.shape)
    expected = torch.tensor([[IGNORE_INDEX, 0, 1], [149, IGNORE_INDEX, 2]])
    expected = expected.repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(label, expected)
    # mmsegmentation's rule: 255 stays ignored after the reduction (it does not become class 254)
    assert mask_labels(torch.tensor([0, 1, 150, 255], dtype=torch.uint8), LabelRule(150)).tolist() == [
        255, 0, 149, 255]


@pytest.mark.parametrize("rule, values, expected", [
    (LabelRule(5, reduce_zero_label=False), [0, 4, 255], [0, 4, 255]),  # 0 a class, 255 ignored
    (LabelRule(4, reduce_zero_label=True), [0, 1, 4, 255], [255, 0, 3, 255]),
    (LabelRule(3, ignore_index=9, reduce_zero_label=False), [0, 2, 9], [0, 2, 255]),  # another ignore value
    (LabelRule(3, ignore_index=9, reduce_zero_label=True), [0, 3, 9], [255, 2, 255]),
])
def test_mask_values_become_labels_by_the_rule(rule, values, expected):
    assert mask_labels(torch.tensor(values, dtype=torch.uint8), rule).tolist() == expected


@pytest.mark.parametrize("rule, value, message", [
    (LabelRule(5, reduce_zero_label=False), 5, "mask value 5 is neither a class (0..4 with 5 labels) nor the ignore "
                                               "index 255"),
    (LabelRule(4), 5, "mask value 5 is neither a class (1..4 with 4 labels, reduce-zero-label) nor the ignore index "
                      "255"),
    (LabelRule(3, ignore_index=9, reduce_zero_label=False), 255, "mask value 255 is neither a class (0..2 with 3 "
                                                                 "labels) nor the ignore index 9"),
])
def test_a_mask_value_that_is_neither_class_nor_ignored_is_one_line_naming_the_file(rule, value, message):
    with pytest.raises(DataError) as caught:
        mask_labels(torch.tensor([0, 1, value], dtype=torch.uint8), rule, "masks/a.png")
    assert str(caught.value) == f"masks/a.png: {message}"


# --------------------------------------------------------------------------- resize
def test_resize_image_is_opencv_bilinear_within_one():
    for key, (h, w, seed), sizes in (("a", (7, 9, 1), [(4, 5), (10, 13)]), ("b", (13, 11, 2), [(6, 5), (9, 16)])):
        for size in sizes:  # down, up; down, mixed
            expected = stored(f"resize_{key}_{size[0]}x{size[1]}", *size).int()
            diff = (resize_image(pattern(h, w, seed), size).int() - expected).abs()
            assert diff.max() <= 1 and (diff == 0).float().mean() > 0.8, (key, size)
    batch = torch.stack([pattern(7, 9, 1), pattern(7, 9, 3)])
    assert torch.equal(resize_image(batch, (4, 5))[1], resize_image(batch[1], (4, 5)))


def test_resize_labels_is_opencv_nearest():
    # OpenCV's source index is floor(i * (1 / (out / in))) in double, not the exact floor(i * in / out)
    assert resize_labels(torch.arange(3)[None], (1, 309))[0, [102, 103, 205, 206, 308]].tolist() == [0, 0, 1, 1, 2]
    assert resize_labels(torch.arange(2)[:, None], (428, 1))[[213, 214, 215], 0].tolist() == [0, 0, 1]
    label = torch.arange(35).reshape(5, 7)
    assert torch.equal(resize_labels(label, (10, 14)), label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert torch.equal(resize_labels(label, (3, 4)), label[[0, 1, 3]][:, [0, 1, 3, 5]])


def test_random_resize_draws_a_ratio_and_resizes_image_and_labels_as_the_reference():
    random.seed(0)
    torch.manual_seed(0)
    image = tv_tensors.Image(pattern(30, 40, 0))
    label = tv_tensors.Mask(torch.randint(0, 5, (30, 40), dtype=torch.uint8))
    resize = RandomResizeRatio((64, 32), (0.5, 2.0))
    sizes = set()
    for _ in range(6):
        state = random.getstate()
        ratio = random.random() * 1.5 + 0.5
        random.setstate(state)
        size = scale_to_fit(30, 40, int(64 * ratio), int(32 * ratio))
        out_image, out_label = resize(image, label)
        assert isinstance(out_image, tv_tensors.Image) and isinstance(out_label, tv_tensors.Mask)
        assert torch.equal(out_image, resize_image(image, size))  # bilinear without antialiasing
        assert torch.equal(out_label, resize_labels(label, size))  # nearest: labels never mix
        sizes.add(size)
    assert len(sizes) == 6 and min(sizes) < (30, 40) < max(sizes)


def test_random_resize_truncates_the_scale():
    # ratio 0.5877: scale (int(1203.6), int(300.9)) = (1203, 300), so 10 x 10 -> 300 x 300 (301 untruncated)
    image, label = tv_tensors.Image(pattern(10, 10, 0)), tv_tensors.Mask(torch.zeros(10, 10, dtype=torch.uint8))
    out_image, out_label = RandomResizeRatio((2048, 512), (0.5877, 0.5877))(image, label)
    assert out_image.shape == (3, 300, 300) and out_label.shape == (300, 300)


# --------------------------------------------------------------------------- crop and flip
def where_from(size: int) -> tv_tensors.Image:
    """An image whose pixels say where they come from: channel 0 the row, channel 1 the column."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return tv_tensors.Image(torch.stack([rows, cols, rows]).to(torch.uint8))


def test_crop_caps_the_largest_class_at_75_percent_of_the_labelled_pixels():
    label = torch.zeros(64, 64, dtype=torch.uint8)
    label[:32, :32] = 1
    label[40:, 40:] = IGNORE_INDEX  # not counted
    crop = CategoryBalancedCrop(32, 0.75)
    random.seed(0)
    for _ in range(20):
        image, out = crop(where_from(64), tv_tensors.Mask(label))
        top, left = image[0, 0, 0].item(), image[1, 0, 0].item()
        assert image.shape == (3, 32, 32) and torch.equal(out, label[top:top + 32, left:left + 32])
        counts = torch.bincount(out[out != IGNORE_INDEX].long())
        assert len(counts) == 2 and counts.min() > 0 and counts.max() / counts.sum() < 0.75


def test_crop_keeps_the_draw_after_ten_rejections():
    label = tv_tensors.Mask(torch.full((40, 40), 3, dtype=torch.uint8))  # one class: every check fails
    for cap, draw in ((0.75, 10), (1.0, 0)):  # no check at cat_max_ratio 1
        random.seed(5)
        image, _ = CategoryBalancedCrop(16, cap)(where_from(40), label)
        rng = random.Random(5)
        boxes = [(rng.randint(0, 24), rng.randint(0, 24)) for _ in range(11)]
        assert (image[0, 0, 0].item(), image[1, 0, 0].item()) == boxes[draw]


def test_flip_moves_image_and_labels_together():
    label = torch.ones(24, 36, dtype=torch.uint8)
    label[:, :12] = 0
    grey = torch.where(label == 0, 50, 200).to(torch.uint8).expand(3, -1, -1)  # dark on the left third
    transform = train_transform(dataclasses.replace(get_recipe("demo"), scale=(64, 32), crop_size=48))
    random.seed(0)
    torch.manual_seed(0)
    left = []
    for _ in range(12):
        image, out = transform(tv_tensors.Image(grey), tv_tensors.Mask(label))
        value, cols = image.float().mean(0), torch.arange(out.shape[1]).expand(out.shape)
        dark, light = out == 0, out == 1
        if dark.any() and light.any():
            assert value[dark].mean() < value[light].mean()
            left.append(bool(cols[dark].float().mean() < cols[light].float().mean()))
    assert True in left and False in left  # flipped and not


# --------------------------------------------------------------------------- photometric distortion
def test_hsv_conversions_are_opencvs():
    # black, white, grey, primaries, ties, then a pattern
    assert torch.equal(rgb_to_hsv8(stored("rgb_row", 1, 40)), stored("rgb2hsv", 1, 40))
    # a row of 40: OpenCV truncates its first 32 pixels (its AVX2 blocks) and rounds the last 8
    assert torch.equal(hsv8_to_rgb(stored("hsv_row", 1, 40)), stored("hsv2rgb", 1, 40))


def test_photometric_distortion_is_mmsegmentations():
    image = tv_tensors.Image(pattern(2, 34, 5))
    for key, params in PMD_CASES.items():
        out = PhotoMetricDistortion().transform(image, params)
        assert isinstance(out, tv_tensors.Image) and torch.equal(out, stored(f"pmd_{key}", 2, 34)), key
    label = tv_tensors.Mask(torch.arange(68).reshape(2, 34))
    distort = PhotoMetricDistortion()
    random.seed(3)
    params = distort.make_params([])
    random.seed(3)
    out_image, out_label = distort(image, label)
    assert torch.equal(out_image, distort.transform(image, params)) and torch.equal(out_label, label)


def test_photometric_distortion_draws():
    random.seed(0)
    draws = [PhotoMetricDistortion().make_params([]) for _ in range(1000)]
    for key in ("brightness", "contrast", "saturation", "hue", "contrast_first"):
        assert 400 < sum(d[key] not in (None, False) for d in draws) < 600, key  # each with probability 1/2

    def drawn(key: str) -> list:
        return [d[key] for d in draws if d[key] is not None]

    assert -32 <= min(drawn("brightness")) < -31 and 31 < max(drawn("brightness")) <= 32
    for key in ("contrast", "saturation"):
        assert 0.5 <= min(drawn(key)) < 0.51 and 1.49 < max(drawn(key)) <= 1.5
    assert all(type(h) is int for h in drawn("hue")) and set(drawn("hue")) == set(range(-18, 18))  # OpenCV units


# --------------------------------------------------------------------------- padding and normalisation
def test_normalize_crops_makes_the_padding_the_mean_colour():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    sizes = torch.tensor([[5, 6], [8, 3]])
    expected = normalize(images)
    expected[0, :, 5:] = expected[0, :, :, 6:] = expected[1, :, :, 3:] = 0
    assert torch.equal(normalize_crops(images, sizes), expected)


def test_training_crops_pad_labels_with_ignore_and_images_for_the_mean_colour(tmp_path):
    write_ade(tmp_path, names=("a", "b"), size=(30, 40))  # smaller than the 64 crop below ratio ~1
    crops = TrainingCrops(MaskFolder(layout_split(tmp_path, "train"), LabelRule(150)), get_recipe("demo"))
    random.seed(0)
    torch.manual_seed(0)
    padded = 0
    for i in range(6):
        image, label, size = crops[i % 2]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert label.dtype == torch.int64 and label.shape == (64, 64) and size.dtype == torch.int64
        h, w = size.tolist()
        valid = torch.zeros(64, 64, dtype=torch.bool)
        valid[:h, :w] = True
        assert (label[~valid] == IGNORE_INDEX).all() and (image[:, ~valid] == 0).all()
        assert set(label[valid].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
        padded += h < 64 or w < 64
    assert padded >= 2
    images, labels, sizes = next(iter(DataLoader(crops, batch_size=2)))  # the default collate
    assert images.shape == (2, 3, 64, 64) and labels.shape == (2, 64, 64) and sizes.shape == (2, 2)
    normalised = normalize_crops(images, sizes)
    for x, y, (h, w) in zip(normalised, labels, sizes.tolist()):
        assert (x[:, h:] == 0).all() and (x[:, :, w:] == 0).all()
        assert (y[h:] == IGNORE_INDEX).all() and (y[:, w:] == IGNORE_INDEX).all()
    assert torch.equal(normalised[:, :, :sizes[:, 0].min(), :sizes[:, 1].min()],
                       normalize(images)[:, :, :sizes[:, 0].min(), :sizes[:, 1].min()])
