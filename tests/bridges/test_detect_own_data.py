"""``lsmae detect --train JSON:IMAGE_DIR --val JSON:IMAGE_DIR``: a COCO-format set of one's own, with
three classes whose ids are not 1..3 (7, 12, 40) and names of their own.

The mistakes in the sets are one-line errors before detectron2 is even imported (these tests run
everywhere); the plan, the training and the evaluation take the ``d2`` fixture and skip without it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridges.cli import build_parser, main
from bridges.demo.sample_data import OWN_CLASSES, write_shapes_own_classes
from pretrain.panels import scale_factor
from tests.bridges.test_detect import DEMO_CONFIG, d2, dry_run  # noqa: F401  (fixture)
from tests.conftest import REPO

NAMES = list(OWN_CLASSES.values())  # in id order: square (7), triangle (12), disc (40)


class Sets:
    """The generated sets (8 training images, 4 validation images) and their --train/--val values."""

    def __init__(self, root: Path):
        self.train_json, self.train_dir = root / "ann" / "train.json", root / "img" / "train"
        self.val_json, self.val_dir = root / "ann" / "val.json", root / "img" / "val"
        write_shapes_own_classes((self.train_json, self.train_dir), (self.val_json, self.val_dir))
        self.train, self.val = f"{self.train_json}:{self.train_dir}", f"{self.val_json}:{self.val_dir}"

    def argv(self) -> list[str]:
        return ["--train", self.train, "--val", self.val]


@pytest.fixture
def sets(tmp_path) -> Sets:
    return Sets(tmp_path / "shapes")


def edit(path: Path, change) -> None:
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))


# --------------------------------------------------------------------------- mistakes (no detectron2 needed)
def one_line_error(capsys, argv: list[str]) -> str:
    assert main(["detect", "demo", "--config", DEMO_CONFIG, *argv, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_not_json_and_not_coco_are_one_line(sets, capsys):
    sets.train_json.write_text("images: none")
    assert one_line_error(capsys, sets.argv()) == (
        f"lsmae detect: error: {sets.train_json}: not JSON (Expecting value: line 1 column 1 (char 0))")
    sets.train_json.write_text(json.dumps({"images": [], "annotations": {}}))
    assert one_line_error(capsys, sets.argv()) == (
        f'lsmae detect: error: {sets.train_json}: not COCO instances format: no "annotations", "categories" list '
        "(needs images, annotations, categories)")


def test_missing_image_names_the_entry(sets, capsys):
    (sets.val_dir / "000000000002.jpg").unlink()
    (sets.val_dir / "000000000003.jpg").unlink()
    assert one_line_error(capsys, sets.argv()) == (
        f'lsmae detect: error: {sets.val_json}: images[2] "000000000002.jpg" is not in {sets.val_dir} '
        "(and 1 more images)")


def test_undeclared_category_names_the_annotation(sets, capsys):
    edit(sets.train_json, lambda coco: coco["annotations"][4].update(category_id=13))
    assert one_line_error(capsys, sets.argv()) == (
        f'lsmae detect: error: {sets.train_json}: annotations[4] (id 5) has category_id 13, which "categories" '
        "does not declare (ids 7, 12, 40)")


def test_val_with_other_classes(sets, capsys):
    edit(sets.val_json, lambda coco: coco["categories"][2].update(name="circle"))
    assert one_line_error(capsys, sets.argv()) == (
        f"lsmae detect: error: --val {sets.val_json} has other classes than --train {sets.train_json}: "
        "only in val: circle (id 40); only in train: disc (id 40)")


@pytest.mark.parametrize("argv, message", [
    (["--train", "train.json", "--val", "v.json:v"],
     "--train train.json: expected JSON:IMAGE_DIR (a COCO-format annotation file and the folder its images are in)"),
    (["--train", "t.json:t"], "--train needs --val JSON:IMAGE_DIR: the set to evaluate on, with the same classes"),
    (["--val", "v.json:v"], "--val without --train would train on COCO's 80 classes: add --train JSON:IMAGE_DIR "
                            "(or --eval-only)"),
])
def test_option_mistakes(capsys, argv, message):
    assert one_line_error(capsys, argv) == f"lsmae detect: error: {message}"


@pytest.mark.parametrize("argv, message", [
    (["--save-pictures", "-1"], "--save-pictures -1: the number of validation images to draw (0: none)"),
    (["--save-pictures", "2", "--score-thresh", "1.5"], "--score-thresh 1.5: a score between 0 and 1"),
    (["--score-thresh", "-0.1"], "--score-thresh -0.1: a score between 0 and 1"),
])
def test_picture_mistakes(capsys, argv, message):
    assert one_line_error(capsys, argv) == f"lsmae detect: error: {message}"


def test_pictures_without_opencv_say_how_to_install_it(monkeypatch):
    import importlib.util

    from bridges.detection.pictures import check_visualizer
    from pretrain.errors import MissingDependencyError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "cv2" else find_spec(name, *rest))
    check_visualizer(0)  # no pictures: not needed
    with pytest.raises(MissingDependencyError) as raised:
        check_visualizer(2)
    assert str(raised.value) == ("--save-pictures (Detectron2's Visualizer) needs opencv-python-headless (not "
                                 "installed): pip install -e '.[detect]'")


def test_missing_files(sets, tmp_path, capsys):
    absent = tmp_path / "absent.json"
    assert one_line_error(capsys, ["--train", f"{absent}:{sets.train_dir}", "--val", sets.val]) == (
        f"lsmae detect: error: --train: annotation file {absent} not found")
    assert one_line_error(capsys, ["--train", f"{sets.train_json}:{tmp_path / 'absent'}", "--val", sets.val]) == (
        f"lsmae detect: error: --train: image folder {tmp_path / 'absent'} not found")


# --------------------------------------------------------------------------- the plan
def test_plan_shows_sets_classes_and_passes(d2, sets, lsmae_home, capsys):
    plan = dry_run(capsys, "demo", "--config", DEMO_CONFIG, *sets.argv())
    assert plan["datasets"] == {
        "train": {"json": str(sets.train_json), "image_dir": str(sets.train_dir), "images": 8, "instances": 24},
        "val": {"json": str(sets.val_json), "image_dir": str(sets.val_dir), "images": 4, "instances": 12}}
    assert plan["classes"] == [{"id": 7, "name": "square"}, {"id": 12, "name": "triangle"},
                               {"id": 40, "name": "disc"}]
    assert plan["max_iter"] == 4 and plan["batch_size"] == 2 and plan["passes"] == 1.0  # 4 x 2 / 8

    assert main(["detect", "demo", "--config", DEMO_CONFIG, *sets.argv(), "train.max_iter=10", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4:] == [
        f"  train: {sets.train_json} (8 images, 24 instances), images in {sets.train_dir}",
        f"  val: {sets.val_json} (4 images, 12 instances), images in {sets.val_dir}",
        "  3 classes: square (id 7), triangle (id 12), disc (id 40)",
        "  10 iterations x 2 images = 2.5 passes over the 8 training images",
    ]


def test_plan_says_which_pictures(d2, sets, lsmae_home, tmp_path, capsys):
    assert dry_run(capsys, "demo", "--config", DEMO_CONFIG, *sets.argv())["pictures"] is None  # the default: none
    argv = ["detect", "demo", "--config", DEMO_CONFIG, *sets.argv(), "--save-pictures", "3", "--score-thresh", "0.25",
            f"train.output_dir={tmp_path / 'out'}"]
    assert dry_run(capsys, *argv[1:])["pictures"] == {"images": 3, "score_thresh": 0.25,
                                                      "dir": str(tmp_path / "out" / "pictures")}
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"  pictures: 3 validation images with scores >= 0.25 to {tmp_path / 'out' / 'pictures'}")


def test_benchmark_plan_has_no_data_part(d2, lsmae_home, capsys):
    plan = dry_run(capsys, "demo", "--config", DEMO_CONFIG)
    assert not {"datasets", "classes", "passes"} & plan.keys()


def test_every_head_of_the_cascade_gets_the_classes(d2, sets, lsmae_home, capsys):
    from omegaconf import OmegaConf

    from bridges.detection.config import DetectConfig
    from bridges.detection.configs import resolve_config
    from bridges.detection.data import read_sets
    from bridges.detection.plan import resolve_plan
    from pretrain.configs import from_namespace

    args = build_parser().parse_args(["detect", "vit_base/coco/4000", "--config", "cascade_mask_rcnn_vitdet_b_100ep",
                                      *sets.argv()])
    config = from_namespace(DetectConfig, args)
    _, cfg, _ = resolve_plan(config, resolve_config(config.config), False, read_sets(config.train, config.val, False))
    heads = cfg.model.roi_heads
    assert [OmegaConf.select(p, "num_classes") for p in heads.box_predictors] == [3, 3, 3]
    assert heads.mask_head.num_classes == 3
    assert cfg.dataloader.train.dataset.names == "lsmae_train" and cfg.dataloader.evaluator.dataset_name == "lsmae_val"

    # a head written out (or overridden) would not follow --train/--val
    err = one_line_error(capsys, ["--train", sets.train, "--val", sets.val, "model.roi_heads.mask_head.num_classes=80"])
    assert err == ("lsmae detect: error: model.roi_heads.mask_head.num_classes is 80 but --train/--val need 3: "
                   "interpolate it in the config (as the shipped configs do) or drop its override")


# --------------------------------------------------------------------------- training and evaluating
def test_train_and_evaluate_on_own_classes(d2, sets, lsmae_home, tmp_path):
    env = {**os.environ, "LSMAE_HOME": str(lsmae_home), "DETECTRON2_DATASETS": str(tmp_path / "no_coco"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def detect(*args: str) -> str:
        cmd = [sys.executable, "-m", "bridges", "detect", "demo", "--config", DEMO_CONFIG, *args]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    out = tmp_path / "out"
    # every score (>= 0) of the 5 best boxes per image is drawn: something is, whatever 4 iterations learnt
    printed = detect(*sets.argv(), "train.max_iter=4", f"train.output_dir={out}", "--save-pictures", "2",
                     "--score-thresh", "0", "+train.seed=0", "model.roi_heads.box_predictor.test_topk_per_image=5")
    assert "  3 classes: square (id 7), triangle (id 12), disc (id 40)" in printed  # the plan, before the run
    assert_ap_per_class(printed, out / "eval_results.json")
    assert f"2 pictures (score >= 0) in {out / 'pictures'}\n" in printed
    for source, picture in pictures(sets.val_dir, out / "pictures", 2):
        assert (picture != source).any(-1).mean() > 0.05  # boxes, masks and labels over the image
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3 + 1  # + background
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 3 * 4
    assert state["roi_heads.mask_head.predictor.weight"].shape[0] == 3

    printed = detect("--eval-only", "--val", sets.val, f"train.init_checkpoint={out / 'model_final.pth'}",
                     f"train.output_dir={tmp_path / 'eval'}", "--save-pictures", "1", "--score-thresh", "1")
    assert_ap_per_class(printed, tmp_path / "eval" / "eval_results.json")
    # no score reaches 1 after 4 iterations: the picture is the image and a line saying so at its top
    assert (f"1 picture (score >= 1) in {tmp_path / 'eval' / 'pictures'}; nothing with score >= 1 in "
            "000000000000.png\n") in printed
    [(source, picture)] = pictures(sets.val_dir, tmp_path / "eval" / "pictures", 1)
    changed = (picture != source).any(-1)
    assert changed[:24].any() and not changed[24:].any()

    # the run's data is recorded; resuming it on other data is refused before anything is launched
    recorded = json.loads((out / "lsmae_run.json").read_text())["data"]
    assert recorded["datasets"]["train"]["json"] == str(sets.train_json.resolve()) and recorded["num_classes"] == 3
    other = Sets(tmp_path / "other")
    edit(other.train_json, lambda coco: coco["images"].pop())
    done = subprocess.run([sys.executable, "-m", "bridges", "detect", "demo", "--config", DEMO_CONFIG,
                           "--train", other.train, "--val", sets.val, "train.max_iter=8", f"train.output_dir={out}",
                           "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        f"lsmae detect: error: {out / 'lsmae_run.json'} belongs to another run: data.datasets.train")


def pictures(image_dir: Path, folder: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(source, picture) of each picture in ``folder``, which holds one PNG for each of the first ``count``
    images of ``image_dir``, of its size scaled up by the whole factor that makes it at least 192 px; the
    picture returned is taken back to the image's size (every k-th pixel)."""
    sources = sorted(image_dir.iterdir())[:count]
    assert sorted(p.name for p in folder.iterdir()) == [f"{s.stem}.png" for s in sources]
    pairs = []
    for source in sources:
        with Image.open(source) as image, Image.open(folder / f"{source.stem}.png") as picture:
            k = scale_factor(*image.size)
            assert picture.format == "PNG" and picture.size == (image.width * k, image.height * k)
            pairs.append((np.asarray(image.convert("RGB")).astype(int),
                          np.asarray(picture.convert("RGB"))[::k, ::k].astype(int)))
    return pairs


def assert_ap_per_class(printed: str, results: Path) -> None:
    """Detectron2's per-category tables (bbox and segm) in the output, and AP-NAME in the results."""
    lines = printed.splitlines()
    for task in ("bbox", "segm"):
        table = lines.index(next(line for line in lines if line.endswith(f"Per-category {task} AP: ")))
        assert all(f"| {name} " in "".join(lines[table + 1:table + 4]) for name in NAMES), lines[table:table + 4]
        assert {f"AP-{name}" for name in NAMES} <= json.loads(results.read_text())[task].keys()
