"""Segmentation bridge: exact conversion, the recipe's taps, data, plans, training (evaluation:
test_segment_eval.py)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import pretrain
from bridges.cli import main
from bridges.segmentation.recipes import RECIPES, default_taps, get_recipe, scale_to_batch

transformers = pytest.importorskip("transformers")

from bridges.segmentation.data import MaskFolder  # noqa: E402
from bridges.segmentation.data_spec import LabelRule, layout_split  # noqa: E402
from bridges.segmentation.model import convert_to_upernet, model_class, save_upernet  # noqa: E402
from tests.bridges.test_segment_data import write_ade  # noqa: E402
from tests.bridges.test_segment_own_data import check_pictures  # noqa: E402
from tests.conftest import perturbed_mae  # noqa: E402


def mae_block_outputs(mae: pretrain.MaskedAutoencoderViT, x: torch.Tensor) -> list[torch.Tensor]:
    t = mae.patch_embed(x) + mae.pos_embed[:, 1:]
    t = torch.cat([(mae.cls_token + mae.pos_embed[:, :1]).expand(len(x), -1, -1), t], 1)
    outs = []
    for blk in mae.blocks:
        t = blk(t)
        outs.append(t)
    return outs


# --------------------------------------------------------------------------- conversion
def test_vit_b_448_conversion_is_exact_block_by_block(tmp_path):
    mae = perturbed_mae("mae_vit_base_patch16_dec384d12h8b", scale=0.02, img_size=448)
    path = tmp_path / "release.pth"
    torch.save({"model": mae.state_dict()}, path)
    conversion = convert_to_upernet(str(path), img_size=448)
    model = conversion.model.eval()
    assert model.config.lsmae_block_taps == [3, 5, 7, 11] and model.config.num_labels == 150
    assert "resampled" not in conversion.report.text()
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        hidden = model.beit(x, output_hidden_states=True).hidden_states
        ours = mae_block_outputs(mae, x)
        for i, block in enumerate(ours):
            torch.testing.assert_close(hidden[i + 1], block, atol=1e-4, rtol=0)
        taps = model.block_features(x)
    for k, feature in zip([3, 5, 7, 11], taps):  # the recipe's blocks, not transformers' hidden_states[i - 1]
        torch.testing.assert_close(feature, ours[k][:, 1:].transpose(1, 2).reshape(1, 768, 28, 28), atol=1e-4, rtol=0)
    assert {k.split(".")[0] for k in conversion.report.dropped} == {
        "norm", "mask_token", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "decoder_pos_embed"}


def test_no_k_bias_checkpoint_and_resampled_grid():
    mae = perturbed_mae(scale=0.02, img_size=64, no_k_bias=True)
    exact = convert_to_upernet(mae.state_dict(), img_size=64).model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = exact.beit(x, output_hidden_states=True).hidden_states
        for i, block in enumerate(mae_block_outputs(mae, x)):
            torch.testing.assert_close(hidden[i + 1], block, atol=1e-5, rtol=0)
    resampled = convert_to_upernet(mae.state_dict(), img_size=96)
    assert "resampled pos_embed 8x8 -> 12x12" in resampled.report.text()
    assert resampled.model.beit.embeddings.position_embeddings.shape == (1, 145, 96)
    with torch.no_grad():
        logits = resampled.model.eval()(torch.randn(1, 3, 96, 96)).logits
        assert logits.shape == (1, 150, 48, 48)  # patch 8: the x4 level is H/2


def test_save_and_load_round_trip_keeps_taps_and_outputs(tmp_path):
    conversion = convert_to_upernet(perturbed_mae(scale=0.02, img_size=64).state_dict(), img_size=64, num_labels=4)
    folder = save_upernet(conversion.model, tmp_path / "seg", "initialised (not trained)")
    config = json.loads((folder / "config.json").read_text())
    assert config["lsmae_block_taps"] == [0, 1, 2, 3]
    assert config["architectures"] == ["MaeUperNetForSemanticSegmentation"]
    assert (folder / "model.safetensors").is_file()
    assert "model_class().from_pretrained" in (folder / "README.md").read_text()
    loaded = model_class().from_pretrained(str(folder)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, conversion.model.eval()(x).logits)


def test_default_taps():
    assert default_taps(12) == [3, 5, 7, 11] and default_taps(24) == [7, 11, 15, 23] and default_taps(4) == [0, 1, 2, 3]
    assert list(RECIPES["upernet_vit_b_ade20k_160k"].out_indices) == default_taps(12)
    assert list(RECIPES["upernet_vit_l_ade20k_160k"].out_indices) == default_taps(24)


# --------------------------------------------------------------------------- data
def test_bad_data_folders_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(pretrain.LsmaeError, match="does not exist .*ADE20K layout"):
        MaskFolder(layout_split(tmp_path / "none", "val"), LabelRule(150))
    write_ade(tmp_path, names=("a", "b", "c"), split="validation")
    (tmp_path / "annotations" / "validation" / "b.png").unlink()
    (tmp_path / "images" / "validation" / "c.jpg").unlink()
    with pytest.raises(pretrain.LsmaeError, match="images without a mask: b; masks without an image: c"):
        MaskFolder(layout_split(tmp_path, "val"), LabelRule(150))


# --------------------------------------------------------------------------- plans
def _plan(capsys, *argv) -> dict:
    assert main(["segment", *argv, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_plans_print_the_recipes_and_scale_with_the_batch(lsmae_home, capsys):
    b = _plan(capsys, "vit_base/coco/4000")
    assert (b["config"], b["max_iter"], b["batch_size"], b["lr"], b["layer_decay"], b["drop_path"]) == (
        "upernet_vit_b_ade20k_160k", 160000, 16, 8e-5, 0.8, 0.1)
    assert (b["crop_size"], b["warmup_iters"], b["out_indices"], b["eval_stride"], b["devices"]) == (
        512, 1500, [3, 5, 7, 11], 341, 1)
    assert b["eval_period"] == b["checkpoint_period"] == 16000 and b["weight_decay"] == 0.05
    large = _plan(capsys, "vit_large/coco/4000", "--batch-size", "8")
    assert (large["config"], large["lr"], large["layer_decay"], large["drop_path"], large["out_indices"]) == (
        "upernet_vit_l_ade20k_160k", 4e-5, 0.9, 0.2, [7, 11, 15, 23])
    assert (large["batch_size"], large["max_iter"], large["warmup_iters"], large["eval_period"]) == (
        8, 320000, 3000, 32000)
    assert not any(lsmae_home.rglob("*.pth"))  # nothing fetched


def test_dry_run_under_torchrun_counts_the_launched_processes(lsmae_home, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")  # what torchrun --nproc_per_node 8 sets; a plan starts no process group
    plan = _plan(capsys, "vit_base/coco/4000")
    assert (plan["devices"], plan["batch_per_device"], plan["batch_size"]) == (8, 2, 16)


def test_scaling_rule_and_bad_batch():
    r = scale_to_batch(get_recipe("upernet_vit_b_ade20k_160k"), 32)
    assert (r.lr, r.max_iter, r.warmup_iters, r.checkpoint_period) == (1.6e-4, 80000, 750, 8000)
    with pytest.raises(pretrain.LsmaeError):
        scale_to_batch(r, 0)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def texture_set(tmp_path_factory):
    pytest.importorskip("skimage")
    from bridges.demo.sample_data import write_textures_ade20k

    return write_textures_ade20k(tmp_path_factory.mktemp("ade"), train_images=16, val_images=4)


def _segment(data, out, *extra):
    return main(["segment", "demo", "--data-path", str(data), "--output-dir", str(out), "--device", "cpu",
                 "--num-workers", "0", "--precision", "fp32", "--max-iter", "6", "--eval-period", "3",
                 "--checkpoint-period", "3", "--print-freq", "100", *extra])


def test_training_resumes_bit_identically_and_saves_transformers_folders(texture_set, tmp_path, lsmae_home,
                                                                         monkeypatch, capsys):
    from pretrain.engine import trainer

    assert _segment(texture_set, tmp_path / "whole") == 0
    original = trainer.Trainer._after_update

    def stop_after_the_first_checkpoint(self, task):
        original(self, task)
        if self.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "_after_update", stop_after_the_first_checkpoint)
    assert _segment(texture_set, tmp_path / "resumed") == 130  # interrupted: the one-line hint, exit 130
    monkeypatch.setattr(trainer.Trainer, "_after_update", original)
    assert torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)["progress"]["step"] == 3
    assert _segment(texture_set, tmp_path / "resumed") == 0
    whole = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert whole["best"] == resumed["best"]
    records = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and all(0 <= r["mIoU"] <= 1 for r in evals)
    out = capsys.readouterr().out.splitlines()
    final, best = evals[-1], max(evals, key=lambda r: r["mIoU"])  # the result is the final model's evaluation
    runs = (tmp_path / "whole", tmp_path / "resumed")  # bit-identical: the same numbers
    assert [line for line in out if line.startswith("final mIoU")] == [
        f"final mIoU {100 * final['mIoU']:.2f} mAcc {100 * final['mAcc']:.2f} aAcc {100 * final['aAcc']:.2f} at "
        f"iteration 6: the result ({run / 'model_final'})" for run in runs]
    assert [line for line in out if line.startswith("best of")] == [
        f"best of 2 evaluations: mIoU {100 * best['mIoU']:.2f} at iteration {best['step']} ({run / 'model_best'}; "
        "chosen on the validation set, so it reads higher than the recipe gives)" for run in runs]
    final = model_class().from_pretrained(str(tmp_path / "whole" / "model_final"))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in final.modules())
    assert final.config.lsmae["recipe"]["max_iter"] == 6
    capsys.readouterr()
    assert main(["segment", "--eval-only", str(tmp_path / "whole" / "model_final"), "--data-path", str(texture_set),
                 "--device", "cpu", "--save-pictures", "2"]) == 0
    assert capsys.readouterr().out.startswith("mIoU ")
    # ADE20K's masks: the label PNGs hold class + 1 (reduce-zero-label), 0 "other" drawn as ignored
    check_pictures(tmp_path / "whole" / "model_final" / "pictures", texture_set / "images" / "validation",
                   texture_set / "annotations" / "validation", 2, [f"class {k}" for k in range(4)], reduce=True,
                   model_dir=tmp_path / "whole" / "model_final")
    assert not (tmp_path / "whole" / "pictures").exists()  # training without --save-pictures draws none


def test_resuming_another_runs_checkpoint_is_a_one_line_error(texture_set, tmp_path, lsmae_home, capsys):
    """Another lr (a batch size scales it), another data set or another override than the run's last.pth:
    refused, naming the field."""
    out = tmp_path / "run"
    assert _segment(texture_set, out, "--max-iter", "3") == 0
    before = (out / "last.pth").read_bytes()
    other = tmp_path / "other_ade"
    shutil.copytree(texture_set, other)
    demo = get_recipe("demo")
    for data, extra, field in (
            (texture_set, ("--batch-size", "4"), f"recipe.lr {demo.lr!r} -> {scale_to_batch(demo, 4).lr!r}"),
            (other, (), f"data.path {str(texture_set.resolve())!r} -> {str(other.resolve())!r}"),
            (texture_set, ("head_dropout=0.2",), "recipe.head_dropout 0.1 -> 0.2")):
        capsys.readouterr()
        assert _segment(data, out, *extra) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"lsmae segment: error: {out / 'last.pth'} belongs to another run: {field}; use another " \
                      "--output-dir, or --resume '' to start over there"
    assert (out / "last.pth").read_bytes() == before


def test_eval_only_refuses_a_folder_that_is_not_a_segmentation_model(tmp_path, capsys):
    assert main(["segment", "--eval-only", str(tmp_path), "--data-path", str(tmp_path)]) == 1
    assert "not a segmentation model folder" in capsys.readouterr().err


def test_eval_only_of_a_converted_folder_uses_its_depth_recipe_at_its_crop(texture_set, tmp_path, lsmae_home, capsys):
    folder = tmp_path / "upernet"
    assert main(["convert", "demo", "--to", "upernet", "--img-size", "64", "--num-labels", "4", "-o",
                 str(folder)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(folder)
    from bridges.segmentation.eval_only import load_segmentation_model, recipe_of

    recipe = recipe_of(load_segmentation_model(folder))
    assert (recipe.name, recipe.crop_size, recipe.eval_stride, recipe.num_labels) == ("demo", 64, 43, 4)
    assert main(["segment", "--eval-only", str(folder), "--data-path", str(texture_set), "--device", "cpu"]) == 0
    assert "on 4 images" in capsys.readouterr().out
