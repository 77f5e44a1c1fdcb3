"""Shared fixtures: an isolated cache, tiny release-format checkpoints and a test registry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

import pretrain
from tests.http_fault_server import FaultServer, fault_server  # noqa: F401  (fixture)

TINY_MODEL = "mae_vit_micro_patch8_dec64d4h2b"
COCO_PATH = "coco%2Bunlabeled_dup5/vitt_dec64d4h2b_800ep_img64_crop0.2-1.0_maskds2.pth"
IN1K_PATH = "in1k/vitt_dec64d4h2b_800ep_img64_crop0.2-1.0_maskds2.pth"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")


def tiny_checkpoint_bytes(tmp_path: Path, seed: int, **overrides) -> bytes:
    """A release-format file (``{'model': state_dict}``) of the tiny architecture."""
    torch.manual_seed(seed)
    model = pretrain.create_model(TINY_MODEL, **overrides)
    path = tmp_path / f"tiny_{seed}.pth"
    torch.save({"model": model.state_dict()}, path)
    return path.read_bytes()


def _entry(entry_id: str, dataset: str, epochs: int, file_epochs: int, repeat: int, path: str) -> dict:
    return dict(
        id=entry_id, arch="vit_micro", model=TINY_MODEL, dataset=dataset, dataset_name=dataset,
        epochs=epochs, file_epochs=file_epochs, repeat=repeat, path=path, img_size=64, patch_size=8,
        mask_downsampling=2, decoder=dict(embed_dim=64, depth=2, num_heads=4), license="CC-BY-NC-4.0",
    )


@pytest.fixture
def lsmae_home(tmp_path, monkeypatch) -> Path:
    """An empty cache folder, with the network settings cleared."""
    home = tmp_path / "lsmae_home"
    monkeypatch.setenv("LSMAE_HOME", str(home))
    for var in ("LSMAE_MIRROR", "LSMAE_OFFLINE", "LSMAE_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def tiny_zoo(tmp_path, lsmae_home, monkeypatch, fault_server):  # noqa: F811
    """A registry of two tiny entries whose files share a basename (like COCO and IN-1k 800ep),
    served by the fault-injecting server through ``LSMAE_MIRROR``.

    Returns a namespace with ``server``, ``files`` ({entry id: bytes}), ``paths`` and ``registry``.
    """
    coco = tiny_checkpoint_bytes(tmp_path, seed=1)
    in1k = tiny_checkpoint_bytes(tmp_path, seed=2)
    fault_server.add_file(COCO_PATH, coco)
    fault_server.add_file(IN1K_PATH, in1k)
    registry = {
        "url_prefix": "http://127.0.0.1:9/no-network-in-tests/",  # LSMAE_MIRROR replaces it
        "licenses": {"CC-BY-NC-4.0": "https://creativecommons.org/licenses/by-nc/4.0/"},
        "aliases": {"arch": {"tiny": "vit_micro"}, "dataset": {"imagenet": "in1k"}},
        "entries": [
            _entry("vit_micro/coco/4000", "coco", 4000, 800, 5, COCO_PATH),
            _entry("vit_micro/in1k/800", "in1k", 800, 800, 1, IN1K_PATH),
        ],
    }
    registry_path = tmp_path / "registry.json"
    registry_path.write_text(json.dumps(registry))
    monkeypatch.setenv("LSMAE_REGISTRY", str(registry_path))
    monkeypatch.setenv("LSMAE_MIRROR", fault_server.base_url)

    class TinyZoo:
        server = fault_server
        files = {"vit_micro/coco/4000": coco, "vit_micro/in1k/800": in1k}
        paths = {"vit_micro/coco/4000": COCO_PATH, "vit_micro/in1k/800": IN1K_PATH}
        registry = registry_path

    return TinyZoo


# --------------------------------------------------------------------------- photographs
def _skimage_photos() -> list[Image.Image]:
    """The photographs scikit-image ships inside its package (no download), if it is installed."""
    try:
        from skimage import data as skdata
    except Exception:  # noqa: BLE001 - not installed or broken: use the synthetic scenes
        return []
    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            photos.append(Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB"))
        except Exception:  # noqa: BLE001 - missing in this version or would need a download
            continue
    return photos


def _synthetic_scenes(n: int = 6, size: int = 256) -> list[Image.Image]:
    """Photograph-like stand-ins: lit gradients, overlapping shapes, texture noise and blur."""
    rng = np.random.default_rng(1234)
    scenes = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        base = np.stack([ramp * rng.uniform(60, 200) + rng.uniform(0, 80) for _ in range(3)], -1)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(8, 16))):
            x0, y0 = (int(v) for v in rng.integers(-20, size - 10, 2))
            w, h = (int(v) for v in rng.integers(12, size // 2, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
            elif shape == 1:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
            else:
                draw.polygon([(x0, y0 + h), (x0 + w // 2, y0), (x0 + w, y0 + h)], fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(1.2))
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
        scenes.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return scenes


def make_photo_folder(root: Path, n: int = 32, size: int = 96, seed: int = 0) -> str:
    """Write ``n`` JPEGs (``size`` x ``size`` random square crops) into ``root``; returns the source used."""
    sources = _skimage_photos()
    kind = "scikit-image photographs" if sources else "synthetic scenes"
    sources = sources or _synthetic_scenes()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        side = int(min(src.size) * rng.uniform(0.35, 1.0))
        x0 = int(rng.integers(0, src.size[0] - side + 1))
        y0 = int(rng.integers(0, src.size[1] - side + 1))
        crop = src.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.LANCZOS)
        crop.save(root / f"img_{i:03d}.jpg", quality=90)
    return kind


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "flat"
    make_photo_folder(root)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, set before the module-scoped runs: results depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
