"""The detection bridge: ViTDet LazyConfigs, the load contract, ``lsmae://``, ``lsmae convert --to
vitdet`` and ``lsmae detect``.

Tests that need detectron2 take the ``d2`` fixture and skip cleanly without it (CI); the load
contract, the conversion and the command line run everywhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain
from bridges.cli import build_parser, main
from bridges.demo.sample_data import write_shapes_coco
from bridges.detection.convert import (
    BACKBONE_PREFIX,
    REL_POS,
    VITDET_KEEP,
    LoadContractError,
    check_load_contract,
    convert_to_vitdet,
    save_vitdet,
)
from tests.conftest import REPO, TEST_DATA, TINY_MODEL
from zoo.checkpoint import expected_shapes

KEYS_DIR = TEST_DATA / "vitdet_keys"
CONFIG_DIR = REPO / "detection_configs"
# golden key lists (from a real detectron2 build) -> (shipped config, MAE architecture it is initialised from)
GOLDEN = {
    "vit_base_mask_rcnn": ("mask_rcnn_vitdet_b_100ep", "mae_vit_base_patch16_dec384d12h8b"),
    "vit_base_cascade_mask_rcnn": ("cascade_mask_rcnn_vitdet_b_100ep", "mae_vit_base_patch16_dec384d12h8b"),
    "vit_large_mask_rcnn": ("mask_rcnn_vitdet_l_100ep", "mae_vit_large_patch16_dec512d16h8b"),
    "vit_large_cascade_mask_rcnn": ("cascade_mask_rcnn_vitdet_l_100ep", "mae_vit_large_patch16_dec512d16h8b"),
}
DEMO_CONFIG = "mask_rcnn_vitdet_demo"  # the shipped config shrunk to the demo checkpoint, CPU, 128 px


def golden(name: str) -> dict[str, tuple[int, ...]]:
    lines = (KEYS_DIR / f"{name}.tsv").read_text().splitlines()
    assert lines[0].startswith("#")
    return {key: tuple(json.loads(shape)) for key, shape in (line.split("\t") for line in lines[1:] if line)}


def converted_shapes(model_name: str, img_size: int) -> dict[str, tuple[int, ...]]:
    """What ``convert_to_vitdet`` makes of ``model_name``'s keys, computed on the meta device."""
    return {BACKBONE_PREFIX + k: tuple(v) for k, v in expected_shapes(model_name, img_size=img_size).items()
            if k.startswith(VITDET_KEEP)}


@pytest.fixture
def d2():
    return pytest.importorskip("detectron2")


# --------------------------------------------------------------------------- without detectron2
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_contract_on_golden_model_keys(name):
    model = golden(name)
    ckpt = converted_shapes(GOLDEN[name][1], img_size=448)
    missing = check_load_contract(model, ckpt)
    assert set(missing) == {k for k in model if REL_POS.match(k) or not k.startswith(BACKBONE_PREFIX)}
    assert any(REL_POS.match(k) for k in missing) and not any(k.endswith("pos_embed") for k in missing)

    grid224 = dict(ckpt)
    width = ckpt[BACKBONE_PREFIX + "pos_embed"][-1]
    grid224[BACKBONE_PREFIX + "pos_embed"] = (1, 14 * 14 + 1, width)
    with pytest.raises(LoadContractError, match=r"14x14 grid: set model\.backbone\.net\.pretrain_img_size=224"):
        check_load_contract(model, grid224)

    dropped = dict(ckpt)
    del dropped[BACKBONE_PREFIX + "blocks.3.mlp.fc1.weight"]
    with pytest.raises(LoadContractError, match=r"does not provide.*blocks\.3\.mlp\.fc1\.weight"):
        check_load_contract(model, dropped)

    extra = {**ckpt, BACKBONE_PREFIX + "norm.weight": (width,)}
    with pytest.raises(LoadContractError, match=r"does not have.*backbone\.net\.norm\.weight"):
        check_load_contract(model, extra)


def test_contract_names_pos_embed_among_other_mismatches():
    model = golden("vit_base_mask_rcnn")
    ckpt = converted_shapes(GOLDEN["vit_base_mask_rcnn"][1], img_size=448)
    ckpt[BACKBONE_PREFIX + "pos_embed"] = (1, 197, 768)
    ckpt[BACKBONE_PREFIX + "blocks.0.attn.proj.bias"] = (7,)
    with pytest.raises(LoadContractError, match="2 tensors.*pretrain_img_size=224"):
        check_load_contract(model, ckpt)


def test_convert_demo_to_vitdet(lsmae_home, tmp_path, capsys):
    out = tmp_path / "demo_vitdet.pth"
    assert main(["convert", "demo", "--to", "vitdet", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out) and any("pretrain_img_size=64" in line for line in printed)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["matching_heuristics"] is False and ckpt["pretrain_img_size"] == 64
    keys = set(ckpt["model"])
    assert all(k.startswith(BACKBONE_PREFIX) for k in keys)
    assert all(k[len(BACKBONE_PREFIX):].startswith(("pos_embed", "patch_embed.", "blocks.")) for k in keys)
    for dropped in ("cls_token", "norm.", "mask_token", "decoder"):
        assert not any(k[len(BACKBONE_PREFIX):].startswith(dropped) for k in keys), dropped
    # the meta-device mapping the golden tests use is what the converter does
    assert {k: tuple(v.shape) for k, v in ckpt["model"].items()} == converted_shapes(TINY_MODEL, img_size=64)


def test_detect_arguments_intermix():
    args = build_parser().parse_args(["detect", "vit_large/coco/4000", "--config", "mask_rcnn_vitdet_l_100ep",
                                      "--num-gpus", "8", "train.output_dir=out/vitl", "--eval-only",
                                      "dataloader.train.total_batch_size=64"])
    assert args.source == "vit_large/coco/4000" and args.num_gpus == 8 and args.eval_only
    assert args.overrides == ["train.output_dir=out/vitl", "dataloader.train.total_batch_size=64"]


def test_shipped_configs_are_found_and_self_contained():
    from bridges.detection.configs import config_dir, config_names, resolve_config

    assert config_dir() == CONFIG_DIR
    assert set(config_names()) == {c for c, _ in GOLDEN.values()} | {DEMO_CONFIG}
    assert resolve_config("mask_rcnn_vitdet_l_100ep.py") == CONFIG_DIR / "mask_rcnn_vitdet_l_100ep.py"
    for path in CONFIG_DIR.glob("*.py"):
        text = path.read_text()
        assert "model_zoo" not in text and "projects/ViTDet" not in text, path
    assert "import bridges.detection.paths" in (CONFIG_DIR / "common.py").read_text()


def test_detect_user_mistakes_are_one_line(lsmae_home, monkeypatch, capsys):
    assert main(["detect", "demo", "--config", "no_such_config"]) == 1
    err = capsys.readouterr().err
    assert "mask_rcnn_vitdet_b_100ep" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    monkeypatch.setitem(sys.modules, "detectron2", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "detectron2.engine", None)
    assert main(["detect", "demo", "--config", "mask_rcnn_vitdet_b_100ep"]) == 1
    err = capsys.readouterr().err
    assert "lsmae detect needs detectron2 (not installed): install it from source" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- with detectron2
def load_config(name: str, overrides: list[str] = ()):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(CONFIG_DIR / f"{name}.py"))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def build(cfg) -> torch.nn.Module:
    from detectron2.config import instantiate

    return instantiate(cfg.model)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_full_size_config_builds_golden_state_dict(d2, name):
    config, _ = GOLDEN[name]
    cfg = load_config(config, ["train.device=cpu"])
    net = cfg.model.backbone.net
    large = "_l_" in config
    assert net.pretrain_img_size == 448 and net.window_size == 14 and net.use_rel_pos
    assert [i for i in range(net.depth) if i not in net.window_block_indexes] == (
        [5, 11, 17, 23] if large else [2, 5, 8, 11])
    assert net.drop_path_rate == (0.4 if large else 0.1)
    lr_decay = cfg.optimizer.params.lr_factor_func.keywords
    assert lr_decay == {"num_layers": 24 if large else 12, "lr_decay_rate": 0.8 if large else 0.7}
    assert cfg.train.init_checkpoint == f"lsmae://vit_{'large' if large else 'base'}/coco/4000"
    assert cfg.train.amp.enabled and cfg.train.max_iter == 184375 and cfg.dataloader.train.total_batch_size == 64
    assert cfg.lr_multiplier.scheduler.milestones == [163889, 177546]
    assert cfg.model.input_format == "RGB" and cfg.dataloader.train.mapper.image_format == "RGB"

    state = {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}
    want = golden(name)
    backbone = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    assert backbone == {k: v for k, v in want.items() if k.startswith(BACKBONE_PREFIX)}
    assert state == want  # pyramid, RPN and (cascade) heads too


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_full_size_config_is_1024_lsj_and_adamw(d2, name):
    """README: 1024 LSJ, AdamW lr 1e-4 (weight decay 0.1), warmup 250 of 184375 iterations, in every shipped config."""
    cfg = load_config(GOLDEN[name][0])
    assert cfg.model.backbone.net.img_size == 1024
    flip, resize, crop = cfg.dataloader.train.mapper.augmentations
    assert flip.horizontal and (resize.min_scale, resize.max_scale) == (0.1, 2.0)
    assert (resize.target_height, resize.target_width) == (1024, 1024) and tuple(crop.crop_size) == (1024, 1024)
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length == 1024
    assert cfg.optimizer._target_ is torch.optim.AdamW
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-4, 0.1)
    assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(250)


@pytest.fixture(scope="module")
def vit_b_converted():
    """The ViTDet conversion of a full-size long-seq MAE ViT-B (448 px, decoder included)."""
    torch.manual_seed(0)
    sd = pretrain.create_model("mae_vit_base_patch16_dec384d12h8b", img_size=448).state_dict()
    return convert_to_vitdet(sd)


def test_converted_vit_base_loads_under_contract(d2, vit_b_converted, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from bridges.detection.source import enforce_load_contract

    assert vit_b_converted.pretrain_img_size == 448
    ckpt = vit_b_converted.checkpoint["model"]
    shapes = {k: tuple(v.shape) for k, v in ckpt.items()}
    cfg = load_config("mask_rcnn_vitdet_b_100ep", ["train.device=cpu"])
    missing = enforce_load_contract(cfg, shapes)
    assert all(REL_POS.match(k) or not k.startswith(BACKBONE_PREFIX) for k in missing)

    path = save_vitdet(vit_b_converted, tmp_path / "vitb_vitdet.pth")
    model = build(cfg)
    DetectionCheckpointer(model).load(str(path))
    loaded = model.state_dict()
    assert torch.equal(loaded[BACKBONE_PREFIX + "pos_embed"], ckpt[BACKBONE_PREFIX + "pos_embed"])
    assert all(torch.equal(loaded[k], v) for k, v in ckpt.items())


def test_pretrain_img_size_224_breaks_contract(d2, vit_b_converted):
    from bridges.detection.source import enforce_load_contract

    shapes = {k: tuple(v.shape) for k, v in vit_b_converted.checkpoint["model"].items()}
    cfg = load_config("mask_rcnn_vitdet_b_100ep", ["model.backbone.net.pretrain_img_size=224", "train.device=cpu"])
    with pytest.raises(LoadContractError, match=r"pretrain_img_size=448") as err:
        enforce_load_contract(cfg, shapes)
    assert "backbone.net.pos_embed: checkpoint (1, 785, 768) vs model (1, 197, 768)" in str(err.value)


def test_lsmae_demo_resolves_in_checkpointer(d2, lsmae_home):
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = load_config(DEMO_CONFIG)
    model = build(cfg)
    DetectionCheckpointer(model).load("lsmae://demo")
    expected = convert_to_vitdet("demo").checkpoint["model"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert loaded[BACKBONE_PREFIX + "pos_embed"].shape == (1, 65, 96)
    assert list((lsmae_home / "checkpoints" / "demo").glob("vitdet-*.pth"))  # converted once, cached


def test_missing_dataset_names_the_folder(d2, tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from bridges.detection.plan import DetectError, check_datasets

    name = "lsmae_test_missing_coco"
    if name not in DatasetCatalog:
        register_coco_instances(name, {}, str(tmp_path / "ann.json"), str(tmp_path / "images"))
    cfg = load_config("mask_rcnn_vitdet_b_100ep", [f"dataloader.train.dataset.names={name}"])
    with pytest.raises(DetectError, match=f"image folder {tmp_path / 'images'} not found.*DETECTRON2_DATASETS"):
        check_datasets(cfg, eval_only=False)
    (tmp_path / "images").mkdir()
    with pytest.raises(DetectError, match=f"annotation file {tmp_path / 'ann.json'} not found"):
        check_datasets(cfg, eval_only=False)


def test_override_typo_is_one_line(d2, lsmae_home, capsys):
    assert main(["detect", "demo", "--config", "mask_rcnn_vitdet_b_100ep", "train.max_iters=3"]) == 1
    err = capsys.readouterr().err
    assert "did you mean train.max_iter?" in err and len(err.strip().splitlines()) == 1


def test_train_two_iterations_and_evaluate_tiny_vitdet(d2, lsmae_home, tmp_path):
    datasets = tmp_path / "datasets"
    write_shapes_coco(datasets, train_images=4, val_images=2)
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets), "LSMAE_HOME": str(lsmae_home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def detect(*args: str) -> list[str]:
        cmd = [sys.executable, "-m", "bridges", "detect", "demo", "--config", DEMO_CONFIG, *args]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        return done.stdout.strip().splitlines()

    out = tmp_path / "out"
    lines = detect("dataloader.train.total_batch_size=2", "train.max_iter=2", "train.eval_period=2",
                   "train.log_period=1", f"train.output_dir={out}")
    assert Path(lines[-1]) == out / "model_final.pth" and (out / "model_final.pth").is_file()
    assert any("pretrain_img_size=64" in line for line in lines)
    assert any("load contract holds" in line for line in lines)
    assert any("CPU runs are for testing only" in line for line in lines)
    assert "  max_iter 2, lr steps at 2, warmup 0 iterations" in lines  # the plan, announced before the run
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1]
    assert any("bbox/AP" in m for m in metrics)
    assert "AP" in json.loads((out / "eval_results.json").read_text())["bbox"]
    assert not (out / "pictures").exists()  # --save-pictures 0, the default: none

    # evaluate the trained detector (a detector checkpoint: no load contract, no conversion)
    lines = detect("--eval-only", f"train.init_checkpoint={out / 'model_final.pth'}",
                   f"train.output_dir={tmp_path / 'eval'}")
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert Path(lines[-1]) == tmp_path / "eval" / "eval_results.json"
    assert not any("load contract" in line for line in lines)
    assert results["bbox"]["AP"] == results["bbox"]["AP"] and "AP" in results["segm"]  # predictions: not NaN


# --------------------------------------------------------------------------- --batch-size, --dry-run
RECIPE_STEPS = [163889, 177546]
FULL_SIZE = {"mask_rcnn_vitdet_b_100ep": "vit_base/coco/4000", "mask_rcnn_vitdet_l_100ep": "vit_large/coco/4000"}


def dry_run(capsys, *argv: str) -> dict:
    """``lsmae detect ARGV --dry-run --json``: stdout is one JSON object."""
    assert main(["detect", *argv, "--dry-run", "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("config", sorted(FULL_SIZE))
def test_dry_run_plans_the_recipe_and_scales_it(d2, lsmae_home, capsys, config):
    args = (FULL_SIZE[config], "--config", config, "--num-gpus", "8")
    recipe = dry_run(capsys, *args)
    assert recipe == dry_run(capsys, *args, "--batch-size", "64")
    assert recipe["config"] == str(CONFIG_DIR / f"{config}.py") and recipe["source"] == FULL_SIZE[config]
    assert recipe["pretrain_img_size"] == 448 and recipe["devices"] == 8 and recipe["grad_checkpointing"] is False
    assert {k: recipe[k] for k in ("batch_size", "lr", "max_iter", "lr_steps", "warmup_iters", "eval_period",
                                   "checkpoint_period")} == {
        "batch_size": 64, "lr": 1e-4, "max_iter": 184375, "lr_steps": RECIPE_STEPS, "warmup_iters": 250,
        "eval_period": 5000, "checkpoint_period": 5000}

    small = dry_run(capsys, *args, "--batch-size", "8")
    assert small["batch_size"] == 8 and small["lr"] == pytest.approx(1.25e-5) and small["max_iter"] == 1475000
    assert small["lr_steps"] == [8 * s for s in RECIPE_STEPS] and small["warmup_iters"] == 2000
    assert small["eval_period"] == small["checkpoint_period"] == 40000

    assert main(["detect", *args, "--batch-size", "8", "--dry-run"]) == 0  # the same plan, in lines
    text = capsys.readouterr().out
    assert "batch 8 images per step on 8 device(s), lr 1.25e-05" in text
    assert "max_iter 1475000, lr steps at 1311112, 1420368, warmup 2000 iterations" in text


def test_overrides_apply_after_the_scaling(d2, lsmae_home, capsys):
    args = ("vit_base/coco/4000", "--config", "mask_rcnn_vitdet_b_100ep", "--batch-size", "8")
    plan = dry_run(capsys, *args, "train.max_iter=100", "optimizer.lr=3e-4", "train.eval_period=7")
    assert plan["max_iter"] == 100 and plan["lr"] == 3e-4 and plan["eval_period"] == 7
    assert plan["checkpoint_period"] == 40000 and plan["batch_size"] == 8
    # the milestones stay where the scaling put them, relative to the scheduler's num_updates (1475000)
    assert plan["lr_steps"] == [89, 97] and plan["warmup_iters"] == 0


def test_grad_checkpointing_reaches_the_vit(d2, lsmae_home, capsys, monkeypatch):
    from bridges.detection import DetectConfig
    from bridges.detection.configs import resolve_config
    from bridges.detection.plan import ACT_CHECKPOINT_KEY, check_act_checkpoint, resolve_plan
    from pretrain.errors import MissingDependencyError

    config = DetectConfig(source="vit_large/coco/4000", config="mask_rcnn_vitdet_l_100ep", grad_checkpointing=True)
    plan, cfg, _ = resolve_plan(config, resolve_config(config.config), convert=False)
    assert cfg.model.backbone.net.use_act_checkpoint is True
    assert plan.settings[ACT_CHECKPOINT_KEY] is True  # what each worker rebuilds its config from
    assert dry_run(capsys, "vit_large/coco/4000", "--config", "mask_rcnn_vitdet_l_100ep",
                   "--grad-checkpointing")["grad_checkpointing"] is True

    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "fairscale" else find_spec(name, *rest))
    needs = r"needs fairscale \(not installed\): pip install -e '\.\[detect\]'"
    with pytest.raises(MissingDependencyError, match=needs):
        check_act_checkpoint(cfg)


def test_dry_run_fetches_and_reads_nothing(d2, lsmae_home, capsys, monkeypatch, tmp_path):
    import bridges.detection.paths

    def refuse(*_args, **_kwargs):
        raise AssertionError("a dry run fetched or converted")

    monkeypatch.setenv("LSMAE_MIRROR", "http://127.0.0.1:9/unreachable")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets"))
    monkeypatch.setattr(bridges.detection.paths, "vitdet_checkpoint", refuse)
    plan = dry_run(capsys, "vit_large/coco/4000", "--config", "mask_rcnn_vitdet_l_100ep", "--batch-size", "16")
    assert plan["pretrain_img_size"] == 448 and plan["max_iter"] == 737500 and plan["devices"] >= 1
    assert not lsmae_home.exists() or not any(lsmae_home.rglob("*"))


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "12", "--num-gpus", "8", "--dry-run"], "12 images does not split over 8 devices"),
    (["--batch-size", "0", "--dry-run"], "need at least one image per step"),
    (["--batch-size", "8", "dataloader.train.total_batch_size=8", "--dry-run"], "give the batch once"),
    (["--json"], "add --dry-run"),
])
def test_batch_mistakes_are_one_line(d2, lsmae_home, capsys, argv, message):
    assert main(["detect", "vit_base/coco/4000", "--config", "mask_rcnn_vitdet_b_100ep", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_rescaled_schedule_that_cannot_build_is_one_line(d2, lsmae_home, capsys):
    # the demo's 4 iterations at twice its batch: 2 iterations, the lr step (3 -> 2) no longer before the end
    assert main(["detect", "demo", "--config", DEMO_CONFIG, "--batch-size", "4", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "lr schedule (lr_multiplier) does not build" in err and len(err.strip().splitlines()) == 1
