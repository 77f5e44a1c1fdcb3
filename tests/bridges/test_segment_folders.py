"""Segmentation model folders (``save_upernet``: ``lsmae convert --to upernet``, ``lsmae segment``'s
``model_best``/``model_final``) load as our model through transformers' Auto classes and pipeline with
``trust_remote_code=True`` (the model's code in the folder), never silently as transformers' stock BEiT;
folders written before that still load with ``load_segmentation_model``."""
from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_STD

transformers = pytest.importorskip("transformers")

from transformers import AutoModelForSemanticSegmentation, pipeline  # noqa: E402

from bridges.segmentation import modeling_upernet  # noqa: E402
from bridges.segmentation.eval_only import load_segmentation_model  # noqa: E402
from bridges.segmentation.model import convert_to_upernet, save_upernet  # noqa: E402
from pretrain.data import normalize  # noqa: E402
from tests.conftest import perturbed_mae  # noqa: E402

CLASSES = {0: "sky", 1: "tree", 2: "road", 3: "car"}
CROP = 64


@pytest.fixture(scope="module")
def upernet() -> torch.nn.Module:
    """The demo architecture's UperNet (64 px, 4 named classes), every parameter off its initialisation."""
    model = convert_to_upernet(perturbed_mae(scale=0.02, img_size=CROP).state_dict(), img_size=CROP,
                               num_labels=len(CLASSES), block_taps=[0, 1, 2, 3]).model
    model.config.id2label = dict(CLASSES)
    model.config.label2id = {name: k for k, name in CLASSES.items()}
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def folder(upernet, tmp_path_factory) -> Path:
    return save_upernet(upernet, tmp_path_factory.mktemp("seg") / "model_final", "trained (a test)")


@pytest.fixture(autouse=True)
def modules_cache(tmp_path, monkeypatch) -> None:
    """transformers copies a folder's code into its modules cache: a temporary one, not the user's."""
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def images(height: int, width: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_the_folder_holds_our_self_contained_code_and_its_auto_map(folder):
    code = (folder / "modeling_upernet.py").read_text()
    assert code == Path(modeling_upernet.__file__).read_text()  # the package's class is this module
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(code)) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "functools", "typing", "torch", "transformers"}  # no long-seq-mae
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "lsmae_upernet" and config["architectures"] == ["MaeUperNetForSemanticSegmentation"]
    assert config["auto_map"] == {
        "AutoConfig": "modeling_upernet.MaeUperNetConfig",
        "AutoModelForSemanticSegmentation": "modeling_upernet.MaeUperNetForSemanticSegmentation"}
    card = (folder / "README.md").read_text()
    assert f'AutoModelForSemanticSegmentation.from_pretrained("{folder}", trust_remote_code=True)' in card
    assert f'pipeline("image-segmentation", model="{folder}", trust_remote_code=True)' in card


def test_auto_loading_with_trust_remote_code_gives_our_model_and_logits(upernet, folder):
    loaded = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "MaeUperNetForSemanticSegmentation"
    assert type(loaded).__module__.startswith("transformers_modules.")  # the folder's code, not the package's
    x = normalize(images(CROP, CROP))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, upernet(x).logits, rtol=0, atol=0)
        stock = transformers.BeitForSemanticSegmentation.from_pretrained(folder).eval()(x).logits
    assert (stock - upernet(x).logits).abs().max() > 0.1  # what loading as the stock model silently gave


@pytest.mark.parametrize("trust", [None, False])
def test_without_trust_remote_code_transformers_refuses_the_folder(folder, trust, monkeypatch):
    """Not the stock BEiT model: transformers' own error (no prompt: its non-interactive setting, as in CI)."""
    monkeypatch.setattr(transformers.dynamic_module_utils, "TIME_OUT_REMOTE_CODE", 0)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=trust)


def test_the_pipeline_segments_an_image_with_the_folders_class_names(upernet, folder):
    """The folder's image processor normalises as our data and resizes to the crop (bilinear); the pipeline
    gives one mask per class of the model's argmax at the image's size, named by the folder's id2label."""
    segmenter = pipeline("image-segmentation", model=str(folder), trust_remote_code=True)
    square = images(CROP, CROP)
    pixels = segmenter.preprocess(Image.fromarray(square[0].permute(1, 2, 0).numpy()))["pixel_values"]
    torch.testing.assert_close(pixels, normalize(square), rtol=0, atol=1e-5)  # our normalisation
    picture = images(50, 70)
    resized = torch.nn.functional.interpolate(picture.float(), size=(CROP, CROP), mode="bilinear", antialias=True)
    resized = normalize(resized.round().clamp(0, 255).to(torch.uint8))
    pixels = segmenter.preprocess(Image.fromarray(picture[0].permute(1, 2, 0).numpy()))["pixel_values"]
    torch.testing.assert_close(pixels, resized, rtol=0, atol=1.01 / 255 / min(IMAGENET_DEFAULT_STD))  # to a grey level
    segments = segmenter(Image.fromarray(picture[0].permute(1, 2, 0).numpy()))
    assert all(s["mask"].size == (70, 50) for s in segments)
    classes = np.full((50, 70), -1)
    for s in segments:
        classes[np.asarray(s["mask"]) == 255] = {name: k for k, name in CLASSES.items()}[s["label"]]
    with torch.no_grad():
        logits = upernet(resized).logits
    expected = torch.nn.functional.interpolate(logits, size=(50, 70), mode="bilinear").argmax(1)[0].numpy()
    assert len(segments) > 1 and (classes >= 0).all()  # one mask per class found, covering the image
    assert (classes == expected).mean() > 0.95  # the model's argmax (resizing rounds a little differently)


def old_folder(folder: Path, old: Path) -> Path:
    """``folder`` as ``save_upernet`` wrote it before the model had its own model type: a BEiT config
    ("beit", no auto_map), no code, no image processor."""
    old.mkdir()
    for name in ("model.safetensors", "README.md"):
        (old / name).write_bytes((folder / name).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (old / "config.json").write_text(json.dumps({**config, "model_type": "beit"}))
    return old


def test_old_folders_load_with_the_same_logits_and_no_warning(upernet, folder, tmp_path):
    old = old_folder(folder, tmp_path / "old")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        loaded = load_segmentation_model(old).eval()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert type(loaded) is type(upernet) and loaded.config.model_type == "lsmae_upernet"
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    x = normalize(images(CROP, CROP))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, upernet(x).logits, rtol=0, atol=0)
    assert loaded.config.id2label == CLASSES and loaded.config.lsmae_block_taps == [0, 1, 2, 3]


def test_a_beit_folder_not_written_by_lsmae_is_a_one_line_error(upernet, tmp_path):
    plain = tmp_path / "beit"
    transformers.BeitConfig().save_pretrained(plain)
    from pretrain.errors import LsmaeError

    with pytest.raises(LsmaeError, match="a beit model without lsmae_block_taps: not written by lsmae"):
        load_segmentation_model(plain)
