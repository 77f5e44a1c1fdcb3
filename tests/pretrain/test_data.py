"""The pretraining data pipeline: folder layouts, repetition, unreadable files, seeded runs.

The images are small crops of photographs shipped by scikit-image (``skimage.data``: astronaut,
coffee, chelsea, rocket, ...); see :func:`tests.conftest.make_photo_folder`. Nothing is downloaded.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pretrain import data as pdata
from pretrain.data import (
    MAX_CONSECUTIVE_BAD,
    DataError,
    PILTransform,
    PretrainImages,
    collate,
    crop_box,
    list_images,
    normalize,
    pretrain_dataset,
    pretrain_transform,
    read_rgb,
    release_dataset,
)
from pretrain.errors import OptionError
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")



def _exact(size: int) -> PILTransform:
    """A deterministic loader for comparing items."""
    return PILTransform(transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()]))


def _copy(photos: Path, dest: Path, names: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(photos.glob("*.jpg"))
    out = []
    for name, src in zip(names, files):
        shutil.copy(src, dest / name)
        out.append(dest / name)
    return out


# --- list_images ---------------------------------------------------------------------------------

def test_list_images_imagefolder_layout(photos, tmp_path):
    _copy(photos, tmp_path / "n01", ["b.jpg", "a.JPEG"])
    _copy(photos, tmp_path / "n02" / "deeper", ["c.png"])
    (tmp_path / "n02" / "labels.txt").write_text("not an image")
    (tmp_path / "README").write_text("")
    files = list_images(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["n01/a.JPEG", "n01/b.jpg", "n02/deeper/c.png"]


def test_list_images_flat_folder(photos):
    files = list_images(photos)
    assert len(files) == 32 and files == sorted(files)
    assert all(f.parent == photos for f in files)


def test_list_images_prefers_train_split(photos, tmp_path):
    _copy(photos, tmp_path / "train" / "cls", ["t1.jpg", "t2.jpg"])
    _copy(photos, tmp_path / "val" / "cls", ["v1.jpg"])
    _copy(photos, tmp_path, ["top.jpg"])
    assert [f.name for f in list_images(tmp_path)] == ["t1.jpg", "t2.jpg"]


def test_list_images_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=str(missing)):
        list_images(missing)


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}.*no images"):
        list_images(tmp_path / "empty")


# --- PretrainImages ------------------------------------------------------------------------------

def test_repeat_cycles_items(photos):
    once = PretrainImages([photos], _exact(32))
    ds = PretrainImages([photos], _exact(32), repeat=5)
    n = len(once)
    assert n == 32 and len(ds) == 5 * n
    for i in (0, 7, n - 1):
        img, bad = ds[i]
        assert bad == 0
        for k in range(1, 5):
            assert torch.equal(ds[i + k * n][0], img)
    assert not torch.equal(ds[0][0], ds[1][0])


def test_repeat_must_be_positive(photos):
    with pytest.raises(OptionError, match="^repeat must be at least 1, got 0$"):
        PretrainImages([photos], _exact(32), repeat=0)


def test_several_roots_are_concatenated(photos, tmp_path):
    _copy(photos, tmp_path / "extra", ["x.jpg", "y.jpg"])
    ds = PretrainImages([photos, tmp_path / "extra"], _exact(16), repeat=2)
    assert len(ds) == 2 * 34
    assert ds.files[-1] == tmp_path / "extra" / "y.jpg"


def test_transform_shape_and_normalisation(photos, tmp_path):
    torch.manual_seed(0)
    ds = PretrainImages([photos], PILTransform(pretrain_transform(48)))
    img, bad = ds[3]
    assert bad == 0 and img.shape == (3, 48, 48) and img.dtype == torch.float32
    mean = torch.tensor(pdata.IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(pdata.IMAGENET_DEFAULT_STD).view(3, 1, 1)
    pixels = img * std + mean  # back to [0, 1], up to bicubic overshoot
    assert pixels.min() > -0.1 and pixels.max() < 1.1
    # a uniform image: the crop is irrelevant, every pixel is exactly (value - mean) / std
    (tmp_path / "grey").mkdir()
    Image.new("RGB", (80, 60), (200, 100, 50)).save(tmp_path / "grey" / "g.png")
    out, _ = PretrainImages([tmp_path / "grey"], PILTransform(pretrain_transform(32)))[0]
    expected = (torch.tensor([200, 100, 50]).view(3, 1, 1) / 255 - mean) / std
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, expected.expand(3, 32, 32), atol=1e-5, rtol=0)


# --- the uint8 pipeline -------------------------------------------------------------------------

MEAN = torch.tensor(pdata.IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(pdata.IMAGENET_DEFAULT_STD).view(3, 1, 1)


def _release_uint8(item: torch.Tensor) -> torch.Tensor:
    """The release pipeline's float item back to the uint8 image PIL resized (exact: x/255 rounds back)."""
    return torch.round((item * STD + MEAN) * 255).to(torch.uint8)


def test_items_are_uint8_crops(photos):
    ds = pretrain_dataset([photos], 48, repeat=2)
    assert len(ds) == 64
    img, bad = ds[5]
    assert bad == 0 and img.shape == (3, 48, 48) and img.dtype == torch.uint8
    assert img.float().std() > 10  # a photograph, not a constant


@pytest.mark.parametrize("size", [48, 160])  # downscaled (antialiased) and upscaled crops
def test_same_seed_same_crop_and_flip_as_the_release(photos, size):
    """Both pipelines draw box and flip from torch's generator in the same order: for a seed, ours is
    the release's image to +-1 grey level but for ~1e-5 of the pixels (PIL's and torch's fixed-point
    bicubic round differently), so the augmentation distribution is the release's."""
    ours, release = pretrain_dataset([photos], size), release_dataset([photos], size)
    diffs = []
    for seed in range(24):
        torch.manual_seed(seed)
        a = ours[seed % len(ours)][0]
        torch.manual_seed(seed)
        b = _release_uint8(release[seed % len(release)][0])
        diffs.append((a.int() - b.int()).abs())
    diffs = torch.stack(diffs).float()
    assert diffs.max() <= 4 and (diffs > 1).float().mean() < 1e-4 and diffs.mean() < 0.05
    # and a flip or another box would differ by far more
    torch.manual_seed(0)
    a = ours[0][0]
    assert (a.int() - a.flip(-1).int()).abs().float().mean() > 5


def _scale_aspect(boxes: list, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.tensor(boxes, dtype=torch.float64)
    return b[:, 2] * b[:, 3] / (h * w), b[:, 3] / b[:, 2]


def test_crop_statistics_match_the_release(monkeypatch):
    """Independent samples (other seeds) of our boxes and of the boxes the release's transform crops
    (recorded from its ``resized_crop`` calls) on a 640x480 image: the same scale and aspect
    distributions, within sampling error."""
    h, w, n = 480, 640, 4000
    torch.manual_seed(0)
    ours = _scale_aspect([crop_box(h, w) for _ in range(n)], h, w)
    recorded = []
    monkeypatch.setattr(transforms.transforms.F, "resized_crop",
                        lambda img, i, j, bh, bw, *a, **k: recorded.append((i, j, bh, bw)) or img)
    release = pretrain_transform(448).transforms[0]
    image = Image.new("RGB", (w, h))
    torch.manual_seed(1)
    for _ in range(n):
        release(image)
    theirs = _scale_aspect(recorded, h, w)
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    for a, b in zip(ours, theirs):
        assert (a.quantile(q) - b.quantile(q)).abs().max() < 0.03
        assert abs(a.mean() - b.mean()) < 0.02
    scale, aspect = ours
    assert scale.min() >= 0.19 and scale.max() <= 1.0 and 0.45 < scale.mean() < 0.55
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35


def test_png_and_other_formats_through_pil(photos, tmp_path):
    src = sorted(photos.glob("*.jpg"))[0]
    with Image.open(src) as img:
        rgb = img.convert("RGB")
    rgb.convert("L").save(tmp_path / "grey.png")
    rgb.save(tmp_path / "photo.bmp")
    rgb.save(tmp_path / "disguised.jpg", format="PNG")  # ImageNet has such files
    for name in ("grey.png", "photo.bmp", "disguised.jpg"):
        with Image.open(tmp_path / name) as img:
            expected = torch.from_numpy(np.array(img.convert("RGB")))
        assert torch.equal(read_rgb(tmp_path / name), expected), name
    # a JPEG decodes to PIL's pixels exactly (the same libjpeg-turbo settings)
    assert torch.equal(read_rgb(src), torch.from_numpy(np.array(rgb)))


def test_collate_keeps_channels_last_and_counts(photos):
    ds = pretrain_dataset([photos], 32)
    items = [ds[i] for i in range(4)]
    imgs, bad = collate(items)
    assert imgs.shape == (4, 3, 32, 32) and imgs.dtype == torch.uint8
    assert imgs.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(imgs, torch.stack([img for img, _ in items])) and bad.tolist() == [0, 0, 0, 0]


def test_normalize_is_the_release_normalisation():
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last
    out = normalize(x)
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, (x.float() / 255 - MEAN) / STD, atol=1e-6, rtol=0)


def test_loader_workers_with_collate(photos):
    from torch.utils.data import DataLoader

    loader = DataLoader(pretrain_dataset([photos], 32), batch_size=8, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 4 and all(b[0].shape == (8, 3, 32, 32) and b[1].sum() == 0 for b in batches)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_uint8_pipeline_skips_corrupt_jpegs(photos, tmp_path, caplog, how):
    good = _copy(photos, tmp_path / "d", ["a.jpg", "b.jpg", "d.jpg"])
    _corrupt(tmp_path / "d" / "c.jpg", how, good[0])
    ds = pretrain_dataset([tmp_path / "d"], 32)
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        torch.manual_seed(0)
        img, n_bad = ds[2]
    torch.manual_seed(0)
    assert n_bad == 1 and torch.equal(img, ds[3][0])
    assert any("c.jpg" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --- unreadable files ----------------------------------------------------------------------------

def _corrupt(path: Path, how: str, good: Path) -> None:
    if how == "garbage":
        path.write_bytes(b"this is not a JPEG at all" * 40)
    elif how == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_replaced_by_next(photos, tmp_path, caplog, how):
    good = _copy(photos, tmp_path / "d", ["a.jpg", "b.jpg", "d.jpg"])
    bad = tmp_path / "d" / "c.jpg"
    _corrupt(bad, how, good[0])
    ds = PretrainImages([tmp_path / "d"], _exact(32), repeat=2)
    assert [f.name for f in ds.files] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        img, n_bad = ds[2]
    assert n_bad == 1
    assert torch.equal(img, ds[3][0])  # d.jpg, the next readable one
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0].getMessage()
    # the same in the repeated copy; the last file wraps around to the first
    assert ds[2 + 4][1] == 1 and torch.equal(ds[2 + 4][0], img)
    assert ds[1][1] == 0


def test_corrupt_last_file_wraps_to_first(photos, tmp_path):
    _copy(photos, tmp_path / "d", ["a.jpg", "b.jpg"])
    (tmp_path / "d" / "z.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ds = PretrainImages([tmp_path / "d"], _exact(16))
    img, n_bad = ds[2]
    assert n_bad == 1 and torch.equal(img, ds[0][0])


@pytest.mark.parametrize("n_files", [3, MAX_CONSECUTIVE_BAD + 4])
def test_all_corrupt_raises(tmp_path, caplog, n_files):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(n_files):
        (folder / f"{i:02d}.jpg").write_bytes(b"garbage")
    ds = PretrainImages([folder], _exact(16))
    with caplog.at_level(logging.WARNING, logger="pretrain.data"), \
            pytest.raises(DataError, match=f"{MAX_CONSECUTIVE_BAD} unreadable images in a row.*00.jpg"):
        ds[0]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == MAX_CONSECUTIVE_BAD


# --- runs ----------------------------------------------------------------------------------------

def _run(data: Path, out: Path, *extra: str) -> Path:
    from pretrain.main_pretrain import build_parser, run

    args = build_parser().parse_args([
        "--model", TINY_MODEL, "--input-size", "64", "--data-path", str(data), "--epochs", "2",
        "--warmup-epochs", "1", "--effective-batch-size", "8", "--num-workers", "0", "--device", "cpu",
        "--output-dir", str(out), "--ckpt-interval", "1", "--print-freq", "1", "--precision", "fp32",
        "--lr", "1e-3", *extra,
    ])
    run(args)
    return out / "checkpoint-1.pth"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_same_seed_same_weights_other_seed_other_weights(photos, tmp_path):
    a = _weights(_run(photos, tmp_path / "a", "--seed", "3"))
    b = _weights(_run(photos, tmp_path / "b", "--seed", "3"))
    c = _weights(_run(photos, tmp_path / "c", "--seed", "4"))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # not merely a different initialisation: the trained weights moved away from it
    torch.manual_seed(3)
    from pretrain import create_model
    init = create_model(TINY_MODEL, img_size=64).state_dict()
    assert not torch.equal(init["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"])


def test_run_counts_skipped_images(photos, tmp_path, caplog):
    import json

    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(photos.glob("*.jpg"))[:31]:
        shutil.copy(f, data / f.name)
    (data / "img_broken.jpg").write_bytes(b"not an image")
    with caplog.at_level(logging.INFO):
        _run(data, tmp_path / "out", "--epochs", "1")
    epochs = [r for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()
              if (r := json.loads(line))["kind"] == "epoch"]
    assert [r["skipped_images"] for r in epochs] == [1]  # 32 files, batch 8: every index is drawn once
    assert any("img_broken.jpg" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert any("1 unreadable images skipped" in r.getMessage() for r in caplog.records)
