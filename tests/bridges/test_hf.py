"""The Hugging Face bridge: ``convert --to hf-mae|hf-vit`` loads in plain transformers with our losses
and features, and transformers folders are MAE sources everywhere (both key generations, exact round trip)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain
from bridges.cli import main
from bridges.mae_weights import ConversionError, load_mae_weights
from bridges.operations import convert, visualize
from pretrain.errors import CheckpointError, LsmaeError
from pretrain.models.masking import block_mask_indices, block_mask_noise
from tests.conftest import TINY_MODEL, perturbed_mae
from zoo.cache import sha256_file
from zoo.checkpoint import load_checkpoint, model_state_dict, read_checkpoint

transformers = pytest.importorskip("transformers")

VIT_B = "mae_vit_base_patch16_dec384d12h8b"


def release_file(path: Path, model: str = TINY_MODEL, seed: int = 0, encoder_only: bool = False,
                 **overrides) -> Path:
    """A release-format file of random weights (biases, norms and tokens too, so that nothing is trivially zero)."""
    sd = perturbed_mae(model, seed, scale=0.02, **overrides).state_dict()
    if encoder_only:
        sd = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, path)
    return path


def ours(path: Path) -> pretrain.MaskedAutoencoderViT:
    from zoo.models import load_model

    model = load_model(path)
    model.norm_pix_loss = True  # the released checkpoints' loss (the export's config says so)
    return model


def compare_mae(file: Path, folder: Path, batch: int) -> dict[str, float]:
    """Loss, prediction and encoder output of our model and of transformers' on the same images and masks."""
    model = ours(file)
    hf = transformers.ViTMAEForPreTraining.from_pretrained(folder).eval()
    torch.manual_seed(1)
    images = torch.randn(batch, 3, model.img_size, model.img_size)
    ids_keep, ids_restore = block_mask_indices(batch, model.grid_size, 0.75, 2,
                                               generator=torch.Generator().manual_seed(2))
    noise = block_mask_noise(batch, model.grid_size, hf.config.mask_ratio, 2,
                             generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss, pred, mask = model(images, ids_keep, ids_restore)
        out = hf(pixel_values=images, noise=noise)
        features = model.forward_encoder(images, ids_keep)
        hf_features = hf.vit(images, noise=noise).last_hidden_state
    assert torch.equal(out.mask, mask) and torch.equal(out.ids_restore, ids_restore)
    return {"loss_rel": abs(float(out.loss) - float(loss)) / float(loss), "loss": float(loss),
            "pred_abs": float((out.logits - pred).abs().max()),
            "features_abs": float((hf_features - features).abs().max()),
            "features_rel": float((hf_features - features).norm() / features.norm())}


def assert_equal_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# --------------------------------------------------------------------------- ViT-B shape at 448
@pytest.fixture(scope="module")
def vit_b(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vitb")
    file = release_file(root / "vitb.pth", VIT_B, img_size=448)
    return {"file": file, "hf-mae": convert(file, "hf-mae", root / "vitb_hf_mae").path,
            "hf-vit": convert(file, "hf-vit", root / "vitb_hf_vit").path}


def test_vit_b_448_hf_mae_loads_strictly_with_the_long_seq_config(vit_b):
    model, loading = transformers.ViTMAEForPreTraining.from_pretrained(vit_b["hf-mae"], output_loading_info=True)
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched weights
    c = model.config
    shape = (c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads)
    assert shape == (448, 16, 768, 12, 12)
    assert (c.decoder_hidden_size, c.decoder_num_attention_heads, c.decoder_num_hidden_layers) == (384, 12, 8)
    assert c.decoder_intermediate_size == 4 * 384 and c.intermediate_size == 4 * 768
    assert c.norm_pix_loss is True and c.mask_ratio == 0.75 and c.layer_norm_eps == 1e-6
    files = sorted(p.name for p in vit_b["hf-mae"].iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    record = c.lsmae
    assert record["source"] == str(vit_b["file"].resolve()) and record["source_sha256"] == sha256_file(vit_b["file"])
    assert record["arch"] == VIT_B and record["attention"] == "qkv.bias" and record["lsmae_version"]


def test_vit_b_448_loss_and_features_equal_ours(vit_b):
    diff = compare_mae(vit_b["file"], vit_b["hf-mae"], batch=2)
    print("ViT-B 448 hf-mae:", diff)
    assert diff["loss_rel"] < 1e-5 and diff["features_rel"] < 1e-5 and diff["features_abs"] < 1e-3


def test_vit_b_448_hf_vit_is_the_encoder_at_448_and_224(vit_b):
    model, loading = transformers.ViTModel.from_pretrained(vit_b["hf-vit"], add_pooling_layer=False,
                                                           output_loading_info=True)
    assert not any(loading.values()), loading
    assert model.config.layer_norm_eps == 1e-6 and model.pooler is None
    torch.manual_seed(3)
    images = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        theirs = model(images).last_hidden_state
        mine = ours(vit_b["file"]).forward_encoder(images)
        small = model(torch.randn(1, 3, 224, 224), interpolate_pos_encoding=True).last_hidden_state
    diff = {"features_abs": float((theirs - mine).abs().max()),
            "features_rel": float((theirs - mine).norm() / mine.norm())}
    print("ViT-B 448 hf-vit:", diff)
    assert theirs.shape == (1, 785, 768) and diff["features_rel"] < 1e-5
    assert small.shape == (1, 197, 768) and torch.isfinite(small).all()
    with pytest.raises(ValueError):  # another size needs interpolate_pos_encoding=True
        model(torch.randn(1, 3, 224, 224))


# --------------------------------------------------------------------------- the micro architecture
@pytest.fixture
def micro(tmp_path) -> Path:
    return release_file(tmp_path / "micro.pth")


def test_micro_loss_and_features_equal_ours(micro, tmp_path):
    diff = compare_mae(micro, convert(micro, "hf-mae", tmp_path / "hf").path, batch=4)
    print("micro hf-mae:", diff)
    assert diff["loss_rel"] < 1e-5 and diff["features_rel"] < 1e-5


@pytest.mark.parametrize("no_k_bias", [False, True])
def test_loss_is_ours_to_1e_6_relative(tmp_path, no_k_bias):
    """README: with ``block_mask_noise`` transformers' loss equals ours to 1e-6 relative or better (8e-8 measured
    here: float32 rounding differs between CPUs, so the bound leaves a margin)."""
    file = release_file(tmp_path / "release.pth", no_k_bias=no_k_bias)
    diff = compare_mae(file, convert(file, "hf-mae", tmp_path / "hf").path, batch=4)
    assert diff["loss_rel"] <= 1e-6, diff


def test_k_bias_checkpoint_keeps_its_key_bias(micro, tmp_path):
    model = transformers.ViTMAEForPreTraining.from_pretrained(convert(micro, "hf-mae", tmp_path / "hf").path)
    sd = model_state_dict(load_checkpoint(micro))
    k_bias = sd["blocks.1.attn.qkv.bias"].chunk(3)[1]
    assert k_bias.abs().max() > 0 and torch.equal(model.vit.layers[1].attention.k_proj.bias, k_bias)


def test_no_k_bias_exports_a_zero_key_bias_and_comes_back(tmp_path):
    file = release_file(tmp_path / "nokb.pth", no_k_bias=True)
    result = convert(file, "hf-mae", tmp_path / "hf")
    assert "zero key bias in 6 blocks" in result.report  # 4 encoder + 2 decoder blocks
    model = transformers.ViTMAEForPreTraining.from_pretrained(result.path)
    assert model.config.lsmae["attention"] == "q_bias/v_bias"
    layers = [*model.vit.layers, *model.decoder.decoder_layers]
    assert all(torch.count_nonzero(layer.attention.k_proj.bias) == 0 for layer in layers)
    assert compare_mae(file, result.path, batch=2)["loss_rel"] < 1e-5
    back = convert(result.path, "release", tmp_path / "back.pth").path
    restored = model_state_dict(load_checkpoint(back))
    assert "blocks.0.attn.q_bias" in restored and "blocks.0.attn.qkv.bias" not in restored
    assert_equal_dicts(restored, model_state_dict(load_checkpoint(file)))


def test_encoder_only_source_is_refused_for_hf_mae_and_exported_by_hf_vit(tmp_path, capsys):
    file = release_file(tmp_path / "enc.pth", encoder_only=True)
    with pytest.raises(ConversionError, match="--to hf-vit"):
        convert(file, "hf-mae", tmp_path / "hf")
    assert main(["convert", str(file), "--to", "hf-mae", "-o", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "encoder-only" in err and "--to hf-vit" in err
    assert not (tmp_path / "hf").exists()
    vit = convert(file, "hf-vit", tmp_path / "vit")
    assert "dropped 0" in vit.report and (vit.path / "model.safetensors").is_file()


@pytest.mark.parametrize("no_k_bias", [False, True])
def test_round_trip_is_exact(tmp_path, no_k_bias, capsys):
    """release -> hf-mae -> timm == release -> timm; release -> hf-mae -> release gives the file's tensors."""
    from safetensors.torch import load_file

    from zoo.verify import verify

    file = release_file(tmp_path / "release.pth", no_k_bias=no_k_bias)
    folder = convert(file, "hf-mae", tmp_path / "hf").path
    direct = load_file(convert(file, "timm", tmp_path / "direct.safetensors").path)
    via_hf = load_file(convert(folder, "timm", tmp_path / "via_hf.safetensors").path)
    assert_equal_dicts(via_hf, direct)
    via_vit = load_file(convert(convert(file, "hf-vit", tmp_path / "vit").path, "timm",
                                tmp_path / "via_vit.safetensors").path)
    assert_equal_dicts(via_vit, direct)
    assert main(["convert", str(folder), "--to", "release", "-o", str(tmp_path / "back.pth")]) == 0
    assert "release format" in capsys.readouterr().out
    back = load_checkpoint(tmp_path / "back.pth")
    assert list(back) == ["model"]
    assert_equal_dicts(back["model"], model_state_dict(load_checkpoint(file)))
    assert verify(str(tmp_path / "back.pth")).startswith("OK: ")


def test_loading_is_offline(micro, tmp_path):
    """The folders load with HF_HUB_OFFLINE=1 and any network connection refused."""
    mae = convert(micro, "hf-mae", tmp_path / "mae").path
    vit = convert(micro, "hf-vit", tmp_path / "vit").path
    script = f"""
import socket
def refuse(*args, **kwargs):
    raise AssertionError("network access attempted")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
from transformers import AutoImageProcessor, ViTMAEForPreTraining, ViTModel
ViTMAEForPreTraining.from_pretrained({str(mae)!r})
ViTModel.from_pretrained({str(vit)!r}, add_pooling_layer=False)
processor = AutoImageProcessor.from_pretrained({str(mae)!r})
print(type(processor).__name__, processor.size.height)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ViTImageProcessor", "64"]


def test_model_card_config_and_preprocessor_of_a_released_entry(tiny_zoo, tmp_path):
    folder = convert("vit_micro/in1k/800", "hf-mae", tmp_path / "hf").path
    record = json.loads((folder / "config.json").read_text())["lsmae"]
    assert record["source"] == "vit_micro/in1k/800" and record["source_url"].endswith(tiny_zoo.paths[record["source"]])
    assert record["source_sha256"] == hashlib.sha256(tiny_zoo.files["vit_micro/in1k/800"]).hexdigest()
    assert record["dataset"] == "in1k" and record["epochs"] == "800" and record["arch"] == TINY_MODEL
    card = (folder / "README.md").read_text()
    for text in ("license: cc-by-nc-4.0", "library_name: transformers", "Exploring Long-Sequence Masked Autoencoders",
                 "arxiv.org/abs/2210.07224", "in1k, 800 epochs", "L = 8x8 = 64 tokens", "2x2-patch blocks",
                 "norm-pix loss", "CC-BY-NC-4.0 (https://creativecommons.org/licenses/by-nc/4.0/): non-commercial",
                 record["source_sha256"], 'ViTMAEForPreTraining.from_pretrained("hf")', "block_mask_noise(",
                 "noise=noise"):
        assert text in card, text
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "ViTImageProcessor" and processor["size"] == {"height": 64, "width": 64}
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["image_std"] == [0.229, 0.224, 0.225]
    vit_card = (convert("vit_micro/in1k/800", "hf-vit", tmp_path / "vit").path / "README.md").read_text()
    assert "add_pooling_layer=False" in vit_card and "interpolate_pos_encoding=True" in vit_card


# --------------------------------------------------------------------------- transformers folders as sources
def _rename(sd: dict[str, torch.Tensor], renames: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.contiguous()
    return out


def test_both_key_generations_are_read(micro, tmp_path):
    """4.x names (as the hub's facebook/vit-mae-* files have them) and 5.x's default save_pretrained
    (4.x names, the decoder's layers as decoder_encoder.layer) read back the same weights."""
    from safetensors.torch import load_file, save_file

    folder = convert(micro, "hf-mae", tmp_path / "v5").path
    expected = read_checkpoint(folder)["model"]
    assert_equal_dicts(expected, model_state_dict(load_checkpoint(micro)))
    v4 = tmp_path / "v4"
    v4.mkdir()
    (v4 / "config.json").write_text((folder / "config.json").read_text())
    save_file(_rename(load_file(folder / "model.safetensors"), [
        ("vit.layers.", "vit.encoder.layer."), ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense")]), v4 / "model.safetensors")
    assert_equal_dicts(read_checkpoint(v4)["model"], expected)
    default = tmp_path / "default_save"
    transformers.ViTMAEForPreTraining.from_pretrained(folder).save_pretrained(default)
    assert_equal_dicts(read_checkpoint(default)["model"], expected)
    assert_equal_dicts(read_checkpoint(default / "model.safetensors")["model"], expected)


def test_folders_are_read_without_importing_transformers(micro, tmp_path, monkeypatch):
    folder = convert(micro, "hf-mae", tmp_path / "hf").path
    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of it now raises
    assert_equal_dicts(read_checkpoint(folder)["model"], model_state_dict(load_checkpoint(micro)))


def test_a_folder_is_a_source_everywhere(micro, tmp_path, capsys):
    from bridges.classification.recipes import source_width
    from bridges.detection.source import prepare_source
    from zoo.cache import load_state_dict
    from zoo.models import load_model
    from zoo.verify import verify

    folder = convert(micro, "hf-mae", tmp_path / "hf").path
    expected = model_state_dict(load_checkpoint(micro))
    assert_equal_dicts(load_state_dict(folder), expected)
    assert_equal_dicts(load_model(folder).state_dict(), expected)
    sd, provenance = load_mae_weights(str(folder))
    assert provenance.source == str(folder.resolve())
    assert provenance.source_sha256 == sha256_file(folder / "model.safetensors")
    assert verify(str(folder)).startswith(f"OK: {folder} is a valid {TINY_MODEL} checkpoint")
    assert main(["inspect", str(folder)]) == 0
    assert f"{folder / 'model.safetensors'}" in capsys.readouterr().out
    assert source_width(str(folder)) == 96
    assert prepare_source(str(folder), str(tmp_path / "out"), convert=False).grid_size == 8
    assert "kept" in convert(folder, "vitdet", tmp_path / "vitdet.pth").report
    from PIL import Image
    Image.new("RGB", (64, 64), (120, 80, 40)).save(tmp_path / "photo.png")
    assert visualize(str(folder), [tmp_path / "photo.png"], tmp_path / "recon.png").path.is_file()


def test_a_path_wins_over_a_zoo_id_of_the_same_spelling(micro, tmp_path, monkeypatch):
    convert(micro, "hf-mae", tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    sd, provenance = load_mae_weights("demo")
    assert provenance.source == str(tmp_path / "demo")
    assert_equal_dicts(sd, model_state_dict(load_checkpoint(micro)))


def test_other_folders_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "config.json").write_text(json.dumps({"model_type": "beit", "lsmae_block_taps": [3, 5, 7, 11]}))
    (tmp_path / "plain").mkdir()
    for folder, message in (("bert", "a transformers 'bert' model"), ("seg", "lsmae segmentation model"),
                            ("plain", "without config.json")):
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(tmp_path / folder)
        assert main(["convert", str(tmp_path / folder), "--to", "timm", "-o", str(tmp_path / "x.safetensors")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and message in err


def test_without_transformers_the_export_says_how_to_install(micro, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    needs = r"--to hf-mae needs transformers \(not installed\): pip install -e '\.\[hf\]'"
    with pytest.raises(LsmaeError, match=needs):
        convert(micro, "hf-mae", tmp_path / "hf")


def test_demo_loss_in_transformers_is_the_visualize_loss(lsmae_home, photos, tmp_path):
    """What `lsmae demo` prints: transformers' loss on visualize's images and block masks equals ours."""
    from bridges.hf.export import hf_mae_loss

    images = sorted(photos.glob("*.jpg"))[:3]
    folder = convert("demo", "hf-mae", tmp_path / "demo_hf").path
    mine = visualize("demo", images, tmp_path / "recon.png").loss
    theirs = hf_mae_loss(folder, images)
    print("demo on photographs:", mine, theirs)
    assert abs(theirs - mine) / mine < 1e-5
