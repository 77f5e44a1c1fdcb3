"""The input pipeline's side of ``lsmae bench pretrain``: COCO-like JPEGs to read, and images per
second of one data-loader worker, ours next to the release's, on the same files."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from pretrain.data import collate, pretrain_dataset, release_dataset
from pretrain.optional import installed

# scikit-image's photographs (skimage.data loads them from its wheel): people, animals, food, objects,
# textures, astronomy, microscopy
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "coins", "hubble_deep_field", "retina",
          "immunohistochemistry", "brick", "gravel", "grass", "clock", "page")
COCO_SIZE = (640, 480)  # most COCO images: 640 wide, 480 high (a third of them portrait)


def _photographs() -> list[Image.Image]:
    """scikit-image's photographs, or (without scikit-image) smooth random textures."""
    if not installed("skimage"):
        return [_smooth_noise(np.random.default_rng(i)) for i in range(8)]
    import skimage.data

    return [Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB") for name in PHOTOS]


def _smooth_noise(rng: np.random.Generator) -> Image.Image:
    """Noise summed over octaves (a 1/f spectrum like a photograph's), coloured."""
    w, h = COCO_SIZE
    image = np.zeros((h, w, 3), np.float32)
    for octave in range(1, 8):
        side = 2**octave
        layer = rng.normal(size=(side, side, 3)).astype(np.float32)
        big = np.stack([np.asarray(Image.fromarray(layer[..., c], mode="F").resize((w, h), Image.BICUBIC))
                        for c in range(3)], axis=-1)
        image += big / octave
    image = (image - image.mean()) / image.std()
    return Image.fromarray(np.clip(128 + 50 * image, 0, 255).astype(np.uint8))


def write_photo_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0, stem: str = "") -> list[Path]:
    """``n`` JPEGs of ``size`` (width, height; a third of them portrait; quality 90, mild sensor-like
    noise): random crops of the photographs, resized; named ``{stem}{i:06d}.jpg``."""
    rng = np.random.default_rng(seed)
    sources = _photographs()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = size if rng.random() < 2 / 3 else size[::-1]
        crop_w = min(src.width, src.height * w / h) * rng.uniform(0.6, 1.0)
        crop_h = crop_w * h / w
        x0, y0 = rng.uniform(0, src.width - crop_w), rng.uniform(0, src.height - crop_h)
        img = src.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h))
        noisy = np.asarray(img, np.float32) + rng.normal(0, 4, (h, w, 3))
        path = folder / f"{stem}{i:06d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def write_coco_like_jpegs(folder: Path, n: int = 64, seed: int = 0) -> list[Path]:
    """``n`` JPEGs of COCO's sizes (640x480, a third 480x640): :func:`write_photo_jpegs`."""
    return write_photo_jpegs(folder, n, COCO_SIZE, seed)


def images_per_s(dataset: Dataset, batch: Callable[[list], Any], batch_size: int) -> float:
    """Items per second of ``dataset`` read in order and batched by ``batch``, in this thread."""
    start = time.perf_counter()
    for i in range(0, len(dataset), batch_size):
        batch([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
    return len(dataset) / (time.perf_counter() - start)


def worker_rates(pipelines: dict[str, tuple[Dataset, Callable[[list], Any]]], batch_size: int,
                 rounds: int = 3) -> dict[str, Any]:
    """Images per second of one data-loader worker (one thread, items and batching) through each named
    ``(dataset, collate)``, in alternating rounds: ``{name}_images_per_s`` the median of each, and the
    per-round rates (``rounds``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker has
    try:
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(rounds):
            for name, (dataset, batch) in pipelines.items():
                rates[name].append(images_per_s(dataset, batch, batch_size))
    finally:
        torch.set_num_threads(threads)
    first = next(iter(pipelines.values()))[0]
    return {"images": len(first), **{f"{name}_images_per_s": statistics.median(r) for name, r in rates.items()},
            "rounds": rates}


def pipeline_rates(roots: list[Path], input_size: int, batch_size: int, rounds: int = 3,
                   limit: int | None = None) -> dict[str, Any]:
    """Images per second of one worker, ours and the release's, over the same files (at most ``limit``,
    evenly spread) (:func:`worker_rates`), and the median of the per-round ratios."""
    ours, release = pretrain_dataset(roots, input_size), release_dataset(roots, input_size)
    if limit and len(ours.files) > limit:
        ours.files = release.files = ours.files[:: len(ours.files) // limit][:limit]
    rates = worker_rates({"ours": (ours, collate), "release": (release, default_collate)}, batch_size, rounds)
    per_round = rates.pop("rounds")
    return {**rates, "ratio": statistics.median(a / b for a, b in zip(per_round["ours"], per_round["release"]))}
