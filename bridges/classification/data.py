"""The classification data: timm's transforms at the input size (MAE's recipe: RandAugment, random
erasing; a resize-and-centre-crop evaluation), ``DATA/train`` and ``DATA/val`` ImageFolders with the
same classes, and the validation loader that measures each image once over all processes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader

from bridges.classification.config import ClassifierConfig
from pretrain.engine.backends import TorchBackend
from pretrain.errors import DataError, MissingDataError


def eval_crop_pct(input_size: int) -> float:
    """MAE's evaluation crop: resize to size/0.875 then centre-crop up to 224px, no crop above."""
    return 224 / 256 if input_size <= 224 else 1.0


def eval_transform(input_size: int) -> Any:
    return create_transform(input_size, is_training=False, interpolation="bicubic", crop_pct=eval_crop_pct(input_size),
                            mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def train_transform(config: ClassifierConfig) -> Any:
    if config.mode == "linprobe":  # RandomResizedCrop + flip only
        return create_transform(config.input_size, is_training=True, scale=(config.min_crop_scale, 1.0),
                                hflip=config.hflip, interpolation="bicubic", color_jitter=None, auto_augment=None,
                                re_prob=0.0, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    return _posterize_zero_bits(create_transform(
        config.input_size, is_training=True, scale=(config.min_crop_scale, 1.0), hflip=config.hflip,
        interpolation="bicubic", color_jitter=None, auto_augment=config.aa,
        re_prob=config.reprob, re_mode="pixel", re_count=1, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD))


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize with Pillow < 13's meaning of 0 bits (a black image) instead of Pillow 13's error."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_zero_bits(transform: Any) -> Any:
    """RandAugment 'inc1' asks timm's posterize for 0 bits at magnitude >= 10 (m9 +- 0.5 reaches it), which
    Pillow >= 13 refuses: give those ops of this transform the old behaviour (timm itself is left alone)."""
    from timm.data import auto_augment

    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


# --------------------------------------------------------------------------- data
def image_folder(root: Path, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        expected = " (expected ImageFolder splits DATA/train/CLASS/* and DATA/val/CLASS/*)"
        if root.exists():
            raise DataError(f"data folder {root} is a file, not a folder{expected}")
        raise MissingDataError(f"data folder {root} does not exist{expected}")
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"data folder {root}: {e}") from None


def differing(a: list[str], b: list[str]) -> str:
    only = sorted(set(a) - set(b))
    return f"{', '.join(only[:10])}{', ...' if len(only) > 10 else ''}" if only else "none"


def load_splits(data_path: str | Path, train_tf: Any, val_tf: Any) -> tuple[Any, Any]:
    """``DATA/train`` and ``DATA/val`` as ImageFolders with the same classes (or a clear error)."""
    root = Path(data_path).expanduser()
    train_set = image_folder(root / "train", train_tf)
    val_set = image_folder(root / "val", val_tf)
    if train_set.classes != val_set.classes:
        raise DataError(
            f"{root / 'val'} has other classes than {root / 'train'}: only in train: "
            f"{differing(train_set.classes, val_set.classes)}; only in val: "
            f"{differing(val_set.classes, train_set.classes)}")
    return train_set, val_set


def val_loader(dataset: Any, backend: TorchBackend, batch: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, sampler=backend.eval_sampler(dataset),
                      num_workers=workers, pin_memory=backend.name == "cuda", drop_last=False)
