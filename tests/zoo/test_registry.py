import hashlib
import json
from pathlib import Path

import pytest

import zoo
from zoo.registry import ASSETS_DIR, UnknownEntryError

PREFIX = "https://dl.fbaipublicfiles.com/long_seq_mae/pretrained_models/"


@pytest.fixture(autouse=True)
def packaged_registry(lsmae_home):
    return lsmae_home


def test_six_released_entries_and_demo():
    ids = [e.id for e in zoo.entries()]
    assert ids == ["vit_base/coco/4000", "vit_base/in1k/800", "vit_base/in1k/1600",
                   "vit_large/coco/4000", "vit_large/in1k/800", "vit_large/in1k/1600", "demo"]
    coco = zoo.get_entry("vit_large/coco/4000")
    assert coco.url() == PREFIX + "coco%2Bunlabeled_dup5/vitl_dec512d16h8b_800ep_img448_crop0.2-1.0_maskds2.pth"
    assert (coco.epochs, coco.file_epochs, coco.repeat) == (4000, 800, 5)
    in1k = zoo.get_entry("vit_large/in1k/800")
    assert in1k.filename == coco.filename  # the basename collision the cache must survive
    for e in zoo.entries()[:6]:
        assert (e.img_size, e.patch_size, e.mask_downsampling, e.license) == (448, 16, 2, "CC-BY-NC-4.0")
        assert e.url().startswith(PREFIX)
    assert zoo.get_entry("vit_base/in1k/1600").decoder == {"embed_dim": 384, "depth": 8, "num_heads": 12}


@pytest.mark.parametrize("alias,expected", [
    ("vitb/imagenet/1600", "vit_base/in1k/1600"),
    ("base/in1k/800", "vit_base/in1k/800"),
    ("large/coco/4000", "vit_large/coco/4000"),
    ("ViT_L/ImageNet/1600ep", "vit_large/in1k/1600"),
])
def test_aliases(alias, expected):
    assert zoo.get_entry(alias).id == expected


def test_coco_800_is_explained():
    with pytest.raises(UnknownEntryError) as err:
        zoo.get_entry("vit_large/coco/800")
    msg = str(err.value)
    assert "vit_large/coco/4000" in msg and "4000 effective epochs" in msg and "vit_large/in1k/800" in msg


def test_unknown_id_lists_valid_ones():
    with pytest.raises(UnknownEntryError) as err:
        zoo.get_entry("vit_huge/in1k/1600")
    assert "vit_base/in1k/1600" in str(err.value) and "demo" in str(err.value)


def test_mirror_keeps_the_path(monkeypatch):
    monkeypatch.setenv("LSMAE_MIRROR", "http://127.0.0.1:9/mirror/")
    assert zoo.get_entry("vit_base/coco/4000").url() == (
        "http://127.0.0.1:9/mirror/coco%2Bunlabeled_dup5/vitb_dec384d12h8b_800ep_img448_crop0.2-1.0_maskds2.pth")
    assert zoo.get_entry("vit_base/coco/4000").url("http://m.example/x") .startswith("http://m.example/x/coco%2B")


def test_demo_is_packaged_pinned_and_fetches_offline(lsmae_home):
    demo = zoo.get_entry("demo")
    packaged = ASSETS_DIR / demo.path
    assert packaged.stat().st_size < 5_000_000
    assert hashlib.sha256(packaged.read_bytes()).hexdigest() == demo.sha256
    path = zoo.fetch("demo", quiet=True, offline=True)  # in the package: no network involved
    assert path.read_bytes() == packaged.read_bytes()
    assert json.loads((lsmae_home / "pinned-digests.json").read_text())["demo"]["sha256"] == demo.sha256
    sd = zoo.load_state_dict("demo")
    assert sd["pos_embed"].shape == (1, 65, 96)


def test_release_architectures_verify_on_meta_shapes():
    """The registry's architectures exist in pretrain and have the 785-token grid at 448."""
    from zoo.checkpoint import expected_shapes
    for e in zoo.entries()[:6]:
        shapes = expected_shapes(e.model, img_size=e.img_size)
        assert shapes["pos_embed"][1] == 785
        assert shapes["decoder_embed.weight"][0] == e.decoder["embed_dim"]


def test_one_resolver_for_a_source(tmp_path, monkeypatch):
    """A path that exists wins over a zoo id spelled the same; an alias names its entry; anything else
    is one line listing the valid ids."""
    from zoo.errors import UnknownSourceError
    from zoo.registry import resolve_source

    entry = resolve_source("vitb/imagenet/1600")
    assert (entry.kind, entry.path, entry.entry.id) == ("zoo entry", None, "vit_base/in1k/1600")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vit_base" / "in1k").mkdir(parents=True)
    (tmp_path / "vit_base" / "in1k" / "1600").write_bytes(b"")
    local = resolve_source("vit_base/in1k/1600")
    assert (local.kind, local.entry, local.path) == ("checkpoint file", None, Path("vit_base/in1k/1600"))
    assert resolve_source(str(tmp_path)).kind == "transformers folder"
    with pytest.raises(UnknownSourceError) as raised:
        resolve_source("no/such/thing")
    assert isinstance(raised.value, UnknownEntryError)
    message = str(raised.value)
    assert message.startswith("'no/such/thing' is neither a file nor a zoo id") and "vit_large/coco/4000" in message
    assert "\n" not in message
