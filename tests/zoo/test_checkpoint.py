import argparse
import os
import pickle

import pytest
import torch

import pretrain
from tests.conftest import TINY_MODEL
from zoo.checkpoint import (
    CheckpointError,
    VerificationError,
    check_structure,
    describe,
    load_checkpoint,
    model_state_dict,
)


class _Payload:
    """Unpickling this would create a marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_sd(**overrides):
    torch.manual_seed(0)
    return pretrain.create_model(TINY_MODEL, **overrides).state_dict()


def test_code_execution_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _tiny_sd(), "args": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load.*system"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refused to load.*nothing was executed"):
        load_checkpoint(path)
    assert not marker.exists()


def test_release_training_checkpoint_with_namespace_loads(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(model=TINY_MODEL, input_size=64, mask_ratio=0.75, blr=1.5e-4, data_path="/data")
    torch.save({"model": _tiny_sd(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": args}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["args"].input_size == 64 and ckpt["epoch"] == 799
    assert check_structure(model_state_dict(ckpt)).model == TINY_MODEL


def test_truncated_and_non_checkpoint_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": _tiny_sd()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match="not a PyTorch (checkpoint|weights file)"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")


def test_describe_release_layout():
    info = describe(_tiny_sd())
    assert (info.embed_dim, info.depth, info.patch_size, info.grid_size, info.img_size) == (96, 4, 8, 8, 64)
    assert info.has_decoder and (info.decoder_embed_dim, info.decoder_depth) == (64, 2)
    assert info.k_bias == "qkv.bias" and info.matching_models == [TINY_MODEL]
    assert describe(_tiny_sd(no_k_bias=True)).k_bias == "q_bias/v_bias"
    ds = describe(_tiny_sd(decoder_downsampling=2, pred_downsampling=2))
    assert (ds.decoder_downsampling, ds.pred_downsampling) == (2, 2)


def test_full_encoder_only_and_k_bias_styles_verify():
    check_structure(_tiny_sd(), TINY_MODEL, 64)
    encoder_only = {k: v for k, v in _tiny_sd().items()
                    if not (k.startswith("decoder") or k == "mask_token")}
    assert not check_structure(encoder_only, TINY_MODEL, 64).has_decoder
    check_structure(_tiny_sd(no_k_bias=True), TINY_MODEL, 64)
    check_structure(_tiny_sd(img_size=96))  # inferred architecture, other grid


def test_structure_mismatches_are_named():
    with pytest.raises(VerificationError, match="expected 448px"):
        check_structure(_tiny_sd(), TINY_MODEL, 448)
    with pytest.raises(VerificationError, match="does not match mae_vit_base_patch16_dec384d12h8b"):
        check_structure(_tiny_sd(), "mae_vit_base_patch16_dec384d12h8b", 64)
    sd = _tiny_sd()
    del sd["blocks.1.mlp.fc1.bias"]
    with pytest.raises(VerificationError, match="1 missing.*blocks.1.mlp.fc1.bias"):
        check_structure(sd, TINY_MODEL, 64)
    sd = _tiny_sd()
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    with pytest.raises(VerificationError, match="unexpected.*blocks.0.attn.extra"):
        check_structure(sd, TINY_MODEL, 64)
    sd = _tiny_sd()
    sd["norm.weight"] = torch.zeros(95)
    with pytest.raises(VerificationError, match="other shapes.*norm.weight"):
        check_structure(sd, TINY_MODEL, 64)
    sd = _tiny_sd()
    sd["blocks.2.attn.proj.weight"][0, 0] = float("nan")
    with pytest.raises(VerificationError, match="NaN"):
        check_structure(sd, TINY_MODEL, 64)


def test_foreign_checkpoints_are_recognised():
    vitdet = {f"backbone.net.{k}": v for k, v in _tiny_sd().items()}
    with pytest.raises(CheckpointError, match="ViTDet"):
        describe(vitdet)
    finetuned = {**_tiny_sd(), "head.weight": torch.zeros(10, 96), "head.bias": torch.zeros(10)}
    with pytest.raises(CheckpointError, match="fine-tuned classifier"):
        describe(finetuned)
    with pytest.raises(CheckpointError, match="no model weights"):
        model_state_dict({"epoch": 3, "optimizer": {}})
