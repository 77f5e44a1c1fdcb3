"""Small real data sets that installed packages ship (nothing is downloaded), for ``lsmae demo``,
the recorded recipe of the ``demo`` checkpoint and the tests.

- photographs bundled with scikit-image (``skimage.data``), split into the pretraining set of the
  demo checkpoint and held-out pictures for reconstructions;
- scikit-learn's 8x8 handwritten digits (1797 labelled images) as an ImageFolder;
- generated COCO-format instance sets (boxes and polygon masks): one for Detectron2's builtin
  ``coco_2017_train`` / ``coco_2017_val`` names, one of its own classes for ``--train``/``--val``.

scikit-image and scikit-learn come with the ``demo`` extra: ``pip install -e '.[demo]'``.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pretrain import optional
from pretrain.errors import LsmaeError

# photographs in scikit-image's own wheel (these loaders never download); chosen for variety:
# portraits, animals, food, objects, textures, astronomy and microscopy
PRETRAIN_PHOTOS = ("camera", "coffee", "coins", "gravel", "brick", "grass", "hubble_deep_field", "moon",
                   "retina", "immunohistochemistry", "page", "text", "clock", "cell")
HELDOUT_PHOTOS = ("astronaut", "chelsea", "rocket")  # never seen in pretraining: for reconstructions
PHOTO_SHORT_SIDE = 256  # stored size: RandomResizedCrop to 64 px needs no more, and decoding stays cheap


NEEDED_BY = "lsmae demo"  # what the missing-package error names: these data sets are the demo's


def skimage_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs as RGB."""
    data = optional.require("skimage.data", NEEDED_BY)
    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def write_photos(folder: Path, names: Sequence[str], short_side: int = PHOTO_SHORT_SIDE) -> list[Path]:
    """``folder/NAME.png`` for each photograph, shorter side resized to ``short_side`` (bicubic)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        img = skimage_photo(name)
        scale = short_side / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        path = folder / f"{name}.png"
        img.save(path)
        paths.append(path)
    return paths


def write_digits(root: Path, train_per_class: int, val_per_class: int, size: int = 32, seed: int = 0) -> Path:
    """ImageFolder ``root/{train,val}/digitN/ID.png`` from scikit-learn's digits (8x8 grey, 17 levels,
    upscaled bicubically to ``size`` x ``size`` RGB); a seeded, class-balanced split."""
    datasets = optional.require("sklearn.datasets", NEEDED_BY)
    digits = datasets.load_digits()
    rng = np.random.default_rng(seed)
    for c in range(10):
        ids = rng.permutation(np.flatnonzero(digits.target == c))
        if len(ids) < train_per_class + val_per_class:
            raise LsmaeError(f"digit {c} has {len(ids)} images, fewer than {train_per_class}+{val_per_class} asked")
        for split, chosen in (("train", ids[:train_per_class]),
                              ("val", ids[train_per_class:train_per_class + val_per_class])):
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert("RGB").save(folder / f"{i}.png")
    return root


# two COCO classes drawn as filled shapes: person (id 1) as a rectangle, car (id 3) as a triangle
_SHAPES = {1: "rectangle", 3: "triangle"}
# a set of one's own: three classes whose ids are not 1..3 (the loader must map them) under their own names
OWN_CLASSES = {7: "square", 12: "triangle", 40: "disc"}
_DISC_VERTICES = 16


def _polygon(shape: str, x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """The outline of ``shape`` in the box (x0, y0)-(x1, y1) as COCO's flat [x, y, ...] list."""
    if shape == "triangle":
        return [x0, y0, x1, y0, (x0 + x1) // 2, y1]
    if shape in ("square", "disc"):
        side = min(x1 - x0, y1 - y0)
        x1, y1 = x0 + side, y0 + side
    if shape == "disc":
        angles = np.linspace(0, 2 * np.pi, _DISC_VERTICES, endpoint=False)
        xs, ys = (x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(angles), (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(angles)
        return [int(round(v)) for xy in zip(xs, ys) for v in xy]
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _area(polygon: list[int]) -> float:
    """The shoelace formula."""
    xs, ys = np.array(polygon[0::2], float), np.array(polygon[1::2], float)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _write_shapes_split(json_file: Path, image_dir: Path, shapes: dict[int, str], categories: list[dict],
                        count: int, seed: int, width: int, height: int) -> None:
    """``count`` images in ``image_dir`` (random background, one filled instance of each of ``shapes``, category
    id -> shape) and their COCO instances file ``json_file`` (boxes and polygon masks) declaring ``categories``."""
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        img = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(img)
        for category, shape in shapes.items():
            x0, y0 = int(rng.integers(5, width // 2)), int(rng.integers(5, height // 2))
            x1 = min(x0 + int(rng.integers(25, 70)), width - 1)
            y1 = min(y0 + int(rng.integers(25, 60)), height - 1)
            polygon = _polygon(shape, x0, y0, x1, y1)
            xs, ys = polygon[0::2], polygon[1::2]
            draw.polygon(polygon, fill=tuple(int(c) for c in rng.integers(120, 255, 3)))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category,
                                "iscrowd": 0, "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                                "area": _area(polygon), "segmentation": [polygon]})
        img.save(image_dir / f"{i:012d}.jpg", quality=95)
        images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": width, "height": height})
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_shapes_coco(root: Path, train_images: int = 8, val_images: int = 4, width: int = 160,
                      height: int = 128) -> Path:
    """``root/coco/{train2017,val2017}/*.jpg`` and ``root/coco/annotations/instances_*.json``: random
    backgrounds with one box-and-polygon instance of each class per image, categories as COCO's 80
    (ids 1..90) so Detectron2's builtin metadata applies. Point ``DETECTRON2_DATASETS`` at ``root``."""
    with warnings.catch_warnings():  # detectron2's import warns about torch.jit.script, nothing to act on
        warnings.simplefilter("ignore", FutureWarning)
        builtin_meta = optional.require("detectron2.data.datasets.builtin_meta", NEEDED_BY)
    categories = [{"id": c["id"], "name": c["name"]} for c in builtin_meta.COCO_CATEGORIES if c["isthing"]]
    for split, count, seed in (("train2017", train_images, 0), ("val2017", val_images, 1)):
        _write_shapes_split(root / "coco" / "annotations" / f"instances_{split}.json", root / "coco" / split,
                            _SHAPES, categories, count, seed, width, height)
    return root


def write_shapes_own_classes(train: tuple[Path, Path], val: tuple[Path, Path], train_images: int = 8,
                             val_images: int = 4, width: int = 160, height: int = 128) -> None:
    """A COCO-format instance set of one's own for ``lsmae detect --train JSON:IMAGE_DIR --val JSON:IMAGE_DIR``:
    ``train`` and ``val`` are each (annotation file, image folder); the :data:`OWN_CLASSES` (ids 7, 12, 40), one
    instance of each per image. Needs no detectron2."""
    categories = [{"id": cid, "name": name} for cid, name in OWN_CLASSES.items()]
    for (json_file, image_dir), count, seed in ((train, train_images, 0), (val, val_images, 1)):
        _write_shapes_split(json_file, image_dir, OWN_CLASSES, categories, count, seed, width, height)


# scikit-image textures as the classes of a small scene-parsing set (ADE20K labels 1..4; 0 = "other")
TEXTURE_CLASSES = ("brick", "grass", "gravel", "coins")


def _texture_scenes(classes: Sequence[str], count: int, height: int, width: int, seed: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` scenes: each image a Voronoi partition of 2-4 regions, each region cut from the
    scikit-image photograph of one of ``classes``; yields (pixels, class index per pixel, the 1-pixel
    borders between regions)."""
    textures = [np.asarray(skimage_photo(name).resize((256, 256), Image.BICUBIC)) for name in classes]
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, 5))
        seeds = rng.uniform((0, 0), (height, width), size=(n, 2))
        region = np.argmin((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2, axis=-1)
        picked = rng.integers(0, len(classes), n)
        pixels = np.zeros((height, width, 3), np.uint8)
        for r in range(n):
            oy, ox = int(rng.integers(0, 256 - height)), int(rng.integers(0, 256 - width))
            patch = textures[picked[r]][oy:oy + height, ox:ox + width]
            pixels[region == r] = patch[region == r]
        border = np.zeros_like(region, bool)
        border[:-1] |= region[:-1] != region[1:]
        border[:, :-1] |= region[:, :-1] != region[:, 1:]
        yield pixels, picked[region], border


def write_textures_ade20k(root: Path, train_images: int = 48, val_images: int = 12, height: int = 96,
                          width: int = 128, seed: int = 0) -> Path:
    """``root/ade/{images,annotations}/{training,validation}``: :func:`_texture_scenes` of
    :data:`TEXTURE_CLASSES` in ADE20K's layout and convention (label = class index + 1, the borders 0,
    "other", ignored): the benchmark path, 4 classes."""
    for split, count, split_seed in (("training", train_images, seed), ("validation", val_images, seed + 1)):
        images, annotations = root / "ade" / "images" / split, root / "ade" / "annotations" / split
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for i, (pixels, label, border) in enumerate(_texture_scenes(TEXTURE_CLASSES, count, height, width, split_seed)):
            label = (label + 1).astype(np.uint8)
            label[border] = 0
            Image.fromarray(pixels).save(images / f"ADE_{split}_{i:08d}.jpg", quality=95)
            Image.fromarray(label).save(annotations / f"ADE_{split}_{i:08d}.png")
    return root / "ade"


def write_texture_masks(root: Path, classes: Sequence[str] = TEXTURE_CLASSES, train_images: int = 48,
                        val_images: int = 12, height: int = 96, width: int = 128, seed: int = 0) -> Path:
    """A data set of one's own, not ADE20K's convention: ``root/{train,val}/{images,masks}`` and
    ``root/classes.txt`` (one name a line); mask value = class index (0 is a class), borders 255
    (ignored). Train with ``--train root/train/images:root/train/masks --val ... --num-labels N
    --class-names root/classes.txt``."""
    for split, count, split_seed in (("train", train_images, seed), ("val", val_images, seed + 1)):
        images, masks = root / split / "images", root / split / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i, (pixels, label, border) in enumerate(_texture_scenes(classes, count, height, width, split_seed)):
            label = label.astype(np.uint8)
            label[border] = 255
            Image.fromarray(pixels).save(images / f"{split}_{i:04d}.jpg", quality=95)
            Image.fromarray(label).save(masks / f"{split}_{i:04d}.png")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    return root
