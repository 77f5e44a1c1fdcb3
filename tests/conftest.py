"""Shared fixtures: an isolated cache, tiny release-format checkpoints and a test registry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain
from bridges.demo.sample_data import skimage_photo
from tests.http_fault_server import FaultServer, fault_server  # noqa: F401  (fixture)

TINY_MODEL = "mae_vit_micro_patch8_dec64d4h2b"
REPO = Path(__file__).resolve().parents[1]  # the checkout the tests run in
TEST_DATA = Path(__file__).resolve().parent / "data"


def pytest_configure(config: pytest.Config) -> None:
    # torchvision 0.29 deprecates its image decoders in favour of TorchCodec; pretrain.data.read_rgb uses them
    config.addinivalue_line("filterwarnings", "ignore:The image decoding:DeprecationWarning")


COCO_PATH = "coco%2Bunlabeled_dup5/vitt_dec64d4h2b_800ep_img64_crop0.2-1.0_maskds2.pth"
IN1K_PATH = "in1k/vitt_dec64d4h2b_800ep_img64_crop0.2-1.0_maskds2.pth"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")


def perturbed_mae(name: str = TINY_MODEL, seed: int = 0, scale: float = 0.05,
                  **overrides) -> pretrain.MaskedAutoencoderViT:
    """An MAE (eval mode) with every tensor moved off its initialisation by ``scale`` x N(0, 1)
    (nonzero biases, norm affines, positions), so a dropped or mis-mapped tensor changes outputs."""
    torch.manual_seed(seed)
    model = pretrain.create_model(name, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


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
def make_photo_folder(root: Path, n: int = 32, size: int = 96, seed: int = 0) -> None:
    """Write ``n`` JPEGs (``size`` x ``size`` random square crops of scikit-image's photographs) into ``root``."""
    sources = [skimage_photo(name) for name in SKIMAGE_PHOTOS]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        side = int(min(src.size) * rng.uniform(0.35, 1.0))
        x0 = int(rng.integers(0, src.size[0] - side + 1))
        y0 = int(rng.integers(0, src.size[1] - side + 1))
        crop = src.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.LANCZOS)
        crop.save(root / f"img_{i:03d}.jpg", quality=90)


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
