"""Shared fixtures: an isolated cache, tiny release-format checkpoints and a test registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pretrain
from tests.http_fault_server import FaultServer, fault_server  # noqa: F401  (fixture)

TINY_MODEL = "mae_vit_micro_patch8_dec64d4h2b"
COCO_PATH = "coco%2Bunlabeled_dup5/vitt_dec64d4h2b_800ep_img64_crop0.2-1.0_maskds2.pth"
IN1K_PATH = "in1k/vitt_dec64d4h2b_800ep_img64_crop0.2-1.0_maskds2.pth"


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
        "url_prefix": "https://dl.fbaipublicfiles.com/long_seq_mae/pretrained_models/",
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
