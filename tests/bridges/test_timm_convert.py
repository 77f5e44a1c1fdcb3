"""MAE checkpoint -> timm ViT: numerical equivalence, k-bias merge/split, pos_embed resampling,
kept/dropped keys, safetensors provenance, sources, bad inputs and the ``lsmae convert`` command."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import pretrain
from bridges.classification.convert import (
    HEAD_INIT_STD,
    convert_to_timm,
    create_timm_model,
    save_safetensors,
    timm_model_args,
)
from bridges.cli import main
from bridges.mae_weights import ConversionError, merge_qv_bias, split_qkv_bias
from pretrain.engine.checkpoints import export_release
from pretrain.errors import LsmaeError
from tests.conftest import TINY_MODEL, perturbed_mae
from zoo.checkpoint import check_structure, describe, expected_shapes
from zoo.registry import ASSETS_DIR, get_entry

# one intra-op thread: these tensors are tiny, and on a busy 2-core machine thread hand-offs cost 40x
pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
TINY_KWARGS = {"embed_dim": 96, "depth": 4, "num_heads": 3, "patch_size": 8}
DECODER_PREFIXES = ("decoder_", "mask_token")


def images(seed: int = 1, n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def release_file(tmp_path, model: nn.Module, name: str = "release.pth"):
    path = tmp_path / name
    torch.save({"model": model.state_dict()}, path)
    return path


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- 1. equivalence
@pytest.mark.parametrize("no_k_bias", [False, True])
def test_timm_forward_features_equals_mae_encoder(no_k_bias):
    mae = perturbed_mae(no_k_bias=no_k_bias)
    if no_k_bias:
        assert mae.blocks[0].attn.q_bias.abs().min() > 0 and mae.blocks[0].attn.v_bias.abs().min() > 0
    model, converted, missing = create_timm_model(mae.state_dict(), num_classes=0, img_size=64,
                                                  global_pool="token")
    assert missing == [] and converted.report.merged_k_bias == (4 if no_k_bias else 0)
    x = images()
    with torch.no_grad():
        ours = mae.forward_encoder(x)
        theirs = model.eval().forward_features(x)
    assert ours.shape == (2, 65, 96)
    assert max_diff(theirs, ours) < TOL


def test_avg_pool_model_is_the_encoder_without_its_final_norm():
    """With 'avg' the MAE norm is dropped: timm's features are the last block's output."""
    mae = perturbed_mae(seed=3)
    model, _, missing = create_timm_model(mae.state_dict(), num_classes=0, img_size=64, global_pool="avg")
    assert missing == ["fc_norm.bias", "fc_norm.weight"]
    assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm)
    mae.norm = nn.Identity()
    x = images(seed=4)
    with torch.no_grad():
        assert max_diff(model.eval().forward_features(x), mae.forward_encoder(x)) < TOL


# --------------------------------------------------------------------------- 2. k-bias
def test_merge_qv_bias_is_cat_q_zero_v_and_split_round_trips():
    mae = perturbed_mae(seed=5, no_k_bias=True)
    sd = mae.state_dict()
    merged, count = merge_qv_bias(sd)
    assert count == 4 + 2  # encoder and decoder blocks
    for prefix in ("blocks.1.attn.", "decoder_blocks.0.attn."):
        q, v = sd[prefix + "q_bias"], sd[prefix + "v_bias"]
        assert torch.equal(merged[prefix + "qkv.bias"], torch.cat([q, torch.zeros_like(q), v]))
    assert not any(k.endswith(("q_bias", "v_bias")) for k in merged)
    back = split_qkv_bias(merged)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert merged.keys() == pretrain.create_model(TINY_MODEL).state_dict().keys()  # the qkv-bias layout


def test_split_qkv_bias_with_nonzero_key_bias_keeps_the_outputs():
    """softmax ignores a key bias (it adds q.b_k to every logit of one query), so dropping it is exact."""
    mae = perturbed_mae(seed=6)
    qkv_bias = mae.blocks[0].attn.qkv.bias
    assert qkv_bias.chunk(3)[1].abs().min() > 0  # a nonzero key bias is being dropped
    split = split_qkv_bias(mae.state_dict())
    dim = 96
    q, k_dropped, v = qkv_bias.detach().split(dim)
    assert torch.equal(split["blocks.0.attn.q_bias"], q) and torch.equal(split["blocks.0.attn.v_bias"], v)
    no_k = pretrain.create_model(TINY_MODEL, no_k_bias=True).eval()
    no_k.load_state_dict(split, strict=True)
    x = images(seed=7)
    with torch.no_grad():
        expected = mae.forward_encoder(x)
        assert max_diff(no_k.forward_encoder(x), expected) < TOL
        # and the pretraining forward (decoder blocks were split too)
        ids_keep, ids_restore = pretrain.block_mask_indices(2, grid_size=8, mask_ratio=0.75, downsampling=2)
        assert max_diff(no_k(x, ids_keep, ids_restore)[1], mae(x, ids_keep, ids_restore)[1]) < TOL
    # a split that took the key slice for the value bias would change them
    wrong = dict(split, **{"blocks.0.attn.v_bias": k_dropped.clone()})
    no_k.load_state_dict(wrong, strict=True)
    with torch.no_grad():
        assert max_diff(no_k.forward_encoder(x), expected) > 1e-3


# --------------------------------------------------------------------------- 3. pos_embed
def test_pos_embed_resampling_shapes_and_cls_slot():
    sd = perturbed_mae(seed=8).state_dict()
    original = sd["pos_embed"]
    assert original.shape == (1, 65, 96)

    same = convert_to_timm(sd, img_size=64)
    assert torch.equal(same.state_dict["pos_embed"], original) and same.report.resampled == ""
    assert "resampled" not in same.report.text()

    up = convert_to_timm(sd, img_size=128)
    pos = up.state_dict["pos_embed"]
    assert pos.shape == (1, 257, 96) and pos.dtype == original.dtype
    assert torch.equal(pos[:, 0], original[:, 0])
    assert "8x8 -> 16x16" in up.report.text() and "128px" in up.report.text()
    assert up.metadata["img_size"] == "128" and up.metadata["pretrain_img_size"] == "64"
    # an interpolation of the grid: its mean over the positions is (nearly) preserved
    assert max_diff(pos[:, 1:].mean(1), original[:, 1:].mean(1)) < 0.05

    down = convert_to_timm(sd, img_size=48)
    assert down.state_dict["pos_embed"].shape == (1, 37, 96) and "8x8 -> 6x6" in down.report.text()
    assert torch.equal(down.state_dict["pos_embed"][:, 0], original[:, 0])

    with pytest.raises(ConversionError, match="not a multiple of the patch size 8"):
        convert_to_timm(sd, img_size=60)


def test_resampled_model_runs_at_the_new_resolution():
    model, converted, _ = create_timm_model(perturbed_mae(seed=9).state_dict(), num_classes=5,
                                            img_size=128, global_pool="token")
    assert model.pos_embed.shape == (1, 257, 96)
    assert torch.equal(model.pos_embed.detach(), converted.state_dict["pos_embed"])
    with torch.no_grad():
        assert model.eval()(images(size=128)).shape == (2, 5)


def test_vit_base_448_pos_embed():
    """The released ViT-B geometry (448px, patch 16: a 28x28 grid), ~2 s on one CPU thread."""
    shapes = expected_shapes("mae_vit_base_patch16_dec384d12h8b", img_size=448)
    # one shared zero buffer viewed per shape: real tensors without ~400 MB of allocations
    zeros = torch.zeros(max(s.numel() for s in shapes.values()))
    sd = {k: zeros[: s.numel()].view(s) for k, s in shapes.items()}
    sd["pos_embed"] = torch.randn(1, 785, 768, generator=torch.Generator().manual_seed(0))
    converted = convert_to_timm(sd, img_size=224)
    assert converted.state_dict["pos_embed"].shape == (1, 197, 768)
    assert torch.equal(converted.state_dict["pos_embed"][:, 0], sd["pos_embed"][:, 0])
    assert "28x28 -> 14x14" in converted.report.text()
    assert converted.metadata["timm_model"] == "vit_base_patch16_224"
    kept = convert_to_timm(sd, img_size=448)
    assert torch.equal(kept.state_dict["pos_embed"], sd["pos_embed"])



def _timms_own_resampling(pos_embed: torch.Tensor, img_size: int, patch_size: int) -> torch.Tensor:
    """What timm itself does to a pretrained ``pos_embed`` loaded into a ViT at ``img_size``."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    with torch.device("meta"):
        model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=pos_embed.shape[-1], depth=1,
                                  num_heads=1)
    return checkpoint_filter_fn({"pos_embed": pos_embed}, model)["pos_embed"]


@pytest.mark.parametrize("grid, img_size", [(8, 32), (8, 128)])
def test_micro_pos_embed_resampling_equals_timms_own(grid, img_size):
    """8x8 -> 4x4 (downsampling: timm antialiases) and 8x8 -> 16x16, the cls slot untouched."""
    sd = perturbed_mae(seed=10).state_dict()
    pos = convert_to_timm(sd, img_size=img_size).state_dict["pos_embed"]
    assert torch.equal(pos, _timms_own_resampling(sd["pos_embed"], img_size, 8))
    assert torch.equal(pos[:, 0], sd["pos_embed"][:, 0])


def test_release_grid_pos_embed_resampling_equals_timms_own():
    """The released 28x28 grid (448px at patch 16) to 32x32 (512px) and to 14x14 (224px)."""
    from bridges.mae_weights import resample_pos_embed

    info = describe({"cls_token": torch.zeros(1, 1, 32), "pos_embed": torch.zeros(1, 785, 32),
                     "patch_embed.proj.weight": torch.zeros(32, 3, 16, 16)})
    original = torch.randn(1, 785, 32, generator=torch.Generator().manual_seed(3))
    for img_size, grid in ((512, 32), (224, 14)):
        resampled, line = resample_pos_embed(original, info, img_size)
        assert resampled.shape == (1, 1 + grid * grid, 32) and f"28x28 -> {grid}x{grid}" in line
        assert torch.equal(resampled, _timms_own_resampling(original, img_size, 16))
        assert torch.equal(resampled[:, 0], original[:, 0])


# --------------------------------------------------------------------------- 4. kept / dropped
def test_avg_drops_norm_mask_token_and_decoder_token_keeps_norm():
    sd = perturbed_mae(seed=10).state_dict()
    encoder = {k for k in sd if k.startswith(("cls_token", "pos_embed", "patch_embed.", "blocks."))}
    decoder = {k for k in sd if k.startswith(DECODER_PREFIXES)}
    assert decoder and "mask_token" in decoder and encoder | decoder | {"norm.weight", "norm.bias"} == set(sd)

    avg = convert_to_timm(sd, global_pool="avg", img_size=64)
    assert set(avg.state_dict) == encoder == set(avg.report.kept)
    assert set(avg.report.dropped) == decoder | {"norm.weight", "norm.bias"}
    assert all(torch.equal(avg.state_dict[k], sd[k]) for k in encoder)
    report = avg.report.text()
    assert report.startswith(f"kept {len(encoder)} tensors; dropped {len(decoder) + 2}")
    for group in ("decoder_blocks", "decoder_embed", "decoder_pred", "decoder_pos_embed", "mask_token", "norm"):
        assert re.search(rf"\b{group}\b", report), group

    token = convert_to_timm(sd, global_pool="token", img_size=64)
    assert set(token.state_dict) == encoder | {"norm.weight", "norm.bias"}
    assert set(token.report.dropped) == decoder and not re.search(r"\bnorm\b", token.report.text())

    with pytest.raises(ConversionError, match="global_pool"):
        convert_to_timm(sd, global_pool="max")


def test_state_dict_is_independent_of_the_source():
    sd = perturbed_mae(seed=11).state_dict()
    converted = convert_to_timm(sd, img_size=64)
    converted.state_dict["blocks.0.attn.qkv.weight"].zero_()
    assert sd["blocks.0.attn.qkv.weight"].abs().sum() > 0


def meta_info(name: str, **overrides):
    """What check_structure reports for architecture ``name`` (built on the meta device: no values to check)."""
    info = describe({k: torch.empty(s, device="meta") for k, s in expected_shapes(name, **overrides).items()})
    info.model = name
    return info


def test_timm_model_args():
    assert timm_model_args(meta_info("mae_vit_base_patch16_dec384d12h8b", img_size=448)) == (
        "vit_base_patch16_224", {})
    assert timm_model_args(meta_info("mae_vit_large_patch16_dec512d16h8b", img_size=448)) == (
        "vit_large_patch16_224", {})
    assert timm_model_args(meta_info("mae_vit_huge_patch14_dec512d8b")) == ("vit_huge_patch14_224", {})
    # a ViT-B width at another patch size is not timm's vit_base_patch16
    assert timm_model_args(meta_info("mae_vit_base_patch8_dec384d12h8b")) == (
        "vit_base_patch16_224", {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 8})
    assert timm_model_args(meta_info(TINY_MODEL)) == ("vit_base_patch16_224", TINY_KWARGS)


def test_non_rgb_checkpoint_builds_a_matching_timm_model():
    torch.manual_seed(12)
    mae = pretrain.create_model(TINY_MODEL, in_chans=1).eval()
    name, kwargs = timm_model_args(check_structure(mae.state_dict()))
    assert (name, kwargs) == ("vit_base_patch16_224", {**TINY_KWARGS, "in_chans": 1})
    model, _, _ = create_timm_model(mae.state_dict(), num_classes=0, img_size=64, global_pool="token")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert max_diff(model.eval().forward_features(x), mae.forward_encoder(x)) < TOL


# --------------------------------------------------------------------------- 5. safetensors
def test_safetensors_metadata_and_timm_pretrained_loading(tmp_path):
    mae = perturbed_mae(seed=13)
    src = release_file(tmp_path, mae)
    converted = convert_to_timm(src, img_size=64, global_pool="avg")
    out = save_safetensors(converted, tmp_path / "out" / "tiny.safetensors")
    assert out == tmp_path / "out" / "tiny.safetensors" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["tiny.safetensors"]  # no temp file left

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["source"] == str(src.resolve())
    assert meta["source_sha256"] == sha256(src)
    assert meta["mae_model"] == TINY_MODEL and meta["img_size"] == "64" and meta["global_pool"] == "avg"
    assert meta["timm_model"] == "vit_base_patch16_224" and json.loads(meta["timm_kwargs"]) == TINY_KWARGS

    sd = mae.state_dict()
    saved = load_file(str(out))
    assert saved.keys() == converted.state_dict.keys()
    assert all(torch.equal(saved[k], sd[k]) for k in saved)

    model = timm.create_model("vit_base_patch16_224", pretrained=True, **TINY_KWARGS, img_size=64,
                              global_pool="avg", num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=0))
    loaded = model.state_dict()
    for k in sd:
        if k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed")):
            assert torch.equal(loaded[k], sd[k]), k

    # the same file with strict=True once the fine-tuning head and fc_norm are added
    fresh = timm.create_model("vit_base_patch16_224", **TINY_KWARGS, img_size=64, global_pool="avg",
                              num_classes=10)
    full = dict(saved, **{"head.weight": torch.zeros(10, 96), "head.bias": torch.zeros(10),
                          "fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96)})
    fresh.load_state_dict(full, strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(saved, strict=True)


def test_save_safetensors_replaces_an_existing_file(tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_text("old")
    save_safetensors(convert_to_timm(perturbed_mae(seed=14).state_dict(), img_size=64), out)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source"] == "in-memory state dict" and "source_sha256" not in f.metadata()


# --------------------------------------------------------------------------- 6. create_timm_model
@pytest.mark.parametrize("pool, expected_missing", [
    ("avg", ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]),
    ("token", ["head.bias", "head.weight"]),
])
def test_create_timm_model_missing_keys_and_head_init(pool, expected_missing):
    torch.manual_seed(15)
    model, converted, missing = create_timm_model(perturbed_mae(seed=15).state_dict(), num_classes=200,
                                                  img_size=64, global_pool=pool)
    assert missing == expected_missing
    assert isinstance(model.head, nn.Linear) and model.head.weight.shape == (200, 96)
    std = model.head.weight.std().item()
    assert 0.9 * HEAD_INIT_STD < std < 1.1 * HEAD_INIT_STD and HEAD_INIT_STD == 2e-5
    assert torch.count_nonzero(model.head.bias) == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in converted.state_dict.items())


def test_create_timm_model_refuses_weights_timm_does_not_take():
    with pytest.raises(ConversionError, match=r"unexpected \['blocks.0.attn.qkv.bias'"):
        create_timm_model(perturbed_mae(seed=16).state_dict(), num_classes=0, img_size=64,
                          global_pool="token", qkv_bias=False)
    # LayerScale parameters the MAE does not have are not silently left at their init
    with pytest.raises(ConversionError, match=r"missing \['blocks.0.ls1.gamma'"):
        create_timm_model(perturbed_mae(seed=16).state_dict(), num_classes=0, img_size=64,
                          global_pool="avg", init_values=1e-5)


# --------------------------------------------------------------------------- 7. bad inputs
def test_vitdet_checkpoint_is_refused(tmp_path):
    sd = {f"backbone.net.{k}": v for k, v in perturbed_mae(seed=17).state_dict().items()
          if not k.startswith(DECODER_PREFIXES)}
    path = tmp_path / "model_final.pth"
    torch.save({"model": sd}, path)
    for source in (path, sd):
        with pytest.raises(LsmaeError, match="ViTDet"):
            convert_to_timm(source)


def test_fine_tuned_checkpoint_is_refused(tmp_path):
    sd = {k: v for k, v in perturbed_mae(seed=18).state_dict().items() if not k.startswith(DECODER_PREFIXES)}
    sd.update({"head.weight": torch.zeros(1000, 96), "head.bias": torch.zeros(1000)})
    path = tmp_path / "finetuned.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(LsmaeError, match="fine-tuned"):
        convert_to_timm(path)


@pytest.mark.parametrize("source", ["vit_base/in1k/1234", "no-such-model", "missing.pth"])
def test_unknown_source_lists_valid_ids(tmp_path, lsmae_home, source):
    with pytest.raises(ConversionError) as raised:
        convert_to_timm(str(tmp_path / source) if source.endswith(".pth") else source)
    message = str(raised.value)
    assert "neither a file nor a zoo id" in message and "valid ids" in message
    assert "demo" in message and "vit_large/coco/4000" in message and "\n" not in message


@pytest.mark.parametrize("content", [
    b"", b"hello world\n", b'{"model": {}}', b"PK\x03\x04 truncated zip", b"\x89PNG\r\n\x1a\n" + bytes(range(64)),
    b"this is not a checkpoint\n",  # pickle TUPLE opcode first: the unpickler raises IndexError
])
def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(LsmaeError, match="notes.pth: .*(checkpoint|weights file)"):
        convert_to_timm(path)


def test_a_checkpoint_of_another_architecture_is_refused():
    sd = perturbed_mae(seed=19).state_dict()
    del sd["blocks.3.mlp.fc2.bias"]
    with pytest.raises(LsmaeError, match="missing.*blocks.3.mlp.fc2.bias"):
        convert_to_timm(sd)


# --------------------------------------------------------------------------- 8. sources
def test_zoo_demo_source(lsmae_home):
    converted = convert_to_timm("demo", img_size=64, global_pool="token")
    entry = get_entry("demo")
    assert converted.metadata["source"] == "demo"
    assert converted.metadata["source_sha256"] == entry.sha256 == hashlib.sha256(
        (ASSETS_DIR / entry.path).read_bytes()).hexdigest()
    assert converted.metadata["epochs"] == "10240" and converted.metadata["mae_model"] == TINY_MODEL
    assert (lsmae_home / "checkpoints" / "demo").is_dir()  # fetched through the cache
    demo = torch.load(ASSETS_DIR / entry.path, weights_only=True)["model"]  # the packaged file itself
    assert all(torch.equal(v, demo[k]) for k, v in converted.state_dict.items())


def test_file_sources_release_export_and_in_memory(tmp_path):
    mae = perturbed_mae(seed=20, no_k_bias=True)
    sd = mae.state_dict()
    reference = convert_to_timm(sd, img_size=64).state_dict

    release = release_file(tmp_path, mae)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": sd, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}},
               run / "checkpoint-3.pth")
    exported = export_release(run, tmp_path / "exported.pth")
    encoder_only = tmp_path / "encoder.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}, encoder_only)

    for source in (release, str(release), exported, encoder_only, {"model": sd}):
        converted = convert_to_timm(source, img_size=64)
        assert converted.report.merged_k_bias == 4
        assert converted.state_dict.keys() == reference.keys()
        assert all(torch.equal(converted.state_dict[k], reference[k]) for k in reference)
        if not isinstance(source, dict):
            assert converted.metadata["source_sha256"] == sha256(Path(source))
            assert converted.metadata["source"] == str(Path(source).resolve())


# --------------------------------------------------------------------------- 9. CLI
def test_cli_convert_demo(tmp_path, lsmae_home, capsys):
    out = tmp_path / "demo_128.safetensors"
    assert main(["convert", "demo", "-o", str(out), "--img-size", "128"]) == 0
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    assert lines[-1] == str(out) and out.is_file()
    assert "resampled" in printed and "8x8 -> 16x16" in printed and "dropped" in printed
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source"] == "demo" and f.metadata()["img_size"] == "128"
        assert f.get_tensor("pos_embed").shape == (1, 257, 96)
    # the printed loading recipe works as written
    recipe = next(line for line in lines if line.startswith("load with: "))
    model = eval(recipe.removeprefix("load with: ").replace("num_classes=N", "num_classes=7"), {"timm": timm})
    with torch.no_grad():
        assert model.eval()(images(size=128)).shape == (2, 7)


def test_cli_convert_bad_source(tmp_path, lsmae_home, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(tmp_path / "nope.pth"), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("lsmae convert: error: ") and "valid ids" in captured.err
