"""``lsmae segment`` on a data set of one's own: IMAGES:MASKS folders, --num-labels, --ignore-index,
--reduce-zero-label, --class-names; what the plan prints, what the model folder keeps, the one-line errors."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridges.cli import main
from pretrain.panels import GAP, labelled_grid, scale_factor

transformers = pytest.importorskip("transformers")

CLASSES = ("brick", "grass", "gravel", "coins", "moon")
# PASCAL VOC's colour map, entries 0..6 (class k is drawn in entry k + 1; 0, black, is "ignored")
VOC = np.array([(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128)],
               np.uint8)


def _paint(classes: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] of class indices: class k in VOC entry k + 1, ignored pixels black."""
    return np.where(ignored[..., None], 0, VOC[np.clip(classes, 0, len(VOC) - 2) + 1]).astype(np.uint8)


def check_pictures(folder: Path, images: Path, masks: Path, count: int, names, reduce: bool,
                   model_dir: Path | None = None, precision: str = "auto") -> None:
    """``folder`` holds exactly the pictures and label PNGs of the first ``count`` images (by stem); each picture
    is one row of 3 panels as labelled_grid lays them out, the ground-truth panel the mask's classes, the
    prediction panel the label PNG beside it (its own palette and the class colours), the PNG in the masks'
    values (class + 1 with ``reduce``), the legend the classes present and no other. With ``model_dir``,
    the PNG is that model's prediction as the evaluation makes it (at the mask's resolution), under the
    autocast of the ``--precision`` the drawing command ran with (``auto`` is bf16 on CPUs that have it)."""
    from bridges.segmentation.pictures import TITLES

    stems = sorted(p.stem for p in images.iterdir())[:count]
    evaluation_prediction = _evaluation_predictor(model_dir, images, masks, precision) if model_dir else None
    expected = [f"{s}.png" for s in stems] + [f"{s}_pred.png" for s in stems]
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    shift, n = int(reduce), len(names)
    for stem in stems:
        mask = np.asarray(Image.open(masks / f"{stem}.png"))
        ignored = (mask == 255) | (reduce & (mask == 0))
        truth = mask.astype(np.int64) - shift
        label_png = Image.open(folder / f"{stem}_pred.png")
        values = np.asarray(label_png)
        assert label_png.mode == "P" and values.shape == mask.shape  # at the ground truth's resolution
        assert shift <= values.min() and values.max() < n + shift  # the masks' convention
        pred = values.astype(np.int64) - shift
        if evaluation_prediction is not None:
            assert np.array_equal(pred, evaluation_prediction(stem))
        page = np.asarray(Image.open(folder / f"{stem}.png").convert("RGB"))
        h, w = mask.shape
        k = scale_factor(w, h)
        blank = Image.new("RGB", (w, h))
        scored = ~ignored
        note = f"pixel accuracy {(pred[scored] == truth[scored]).mean():.0%}"
        present = sorted(set(truth[scored].tolist()) | set(pred.ravel().tolist()))
        legend = [(tuple(VOC[c + 1]), names[c]) for c in present] + ([((0, 0, 0), "ignored")] if ignored.any() else [])
        _, layout = labelled_grid([[blank] * 3], TITLES, notes=[note], legend=legend)
        assert page.shape[:2] == layout.size[::-1]
        panels = []
        for c in range(3):
            left, top, right, bottom = layout.panel_box(c, 0)
            assert (page[top:bottom, left - GAP:left] == 255).all()
            assert (page[top:bottom, right:right + GAP] == 255).all()
            panels.append(page[top:bottom, left:right])
            assert panels[-1].shape[:2] == (h * k, w * k) and not (panels[-1] == 255).all()
        photo = np.asarray(Image.open(images / f"{stem}.jpg").convert("RGB")).astype(int)
        assert np.abs(panels[0][::k, ::k].astype(int) - photo).max() <= 2
        assert np.array_equal(panels[1][::k, ::k], _paint(truth, ignored))
        assert np.array_equal(panels[2][::k, ::k], _paint(pred, np.zeros_like(ignored)))
        assert np.array_equal(panels[2][::k, ::k], np.asarray(label_png.convert("RGB")))  # the PNG's own palette
        legend_area = page[layout.panel_box(0, 0)[3] + GAP:].reshape(-1, 3)
        swatches = {tuple(c) for c in np.unique(legend_area, axis=0)}
        assert {tuple(VOC[c + 1]) for c in range(n)} & swatches == {tuple(VOC[c + 1]) for c in present}


def _evaluation_predictor(model_dir: Path, images: Path, masks: Path, precision: str) -> Callable[[str], np.ndarray]:
    """The model's prediction of an image (by stem) as the evaluation makes it; model and data loaded once."""
    from bridges.segmentation.data import MaskFolder
    from bridges.segmentation.data_spec import SplitFolders
    from bridges.segmentation.eval_only import load_segmentation_model, recipe_of
    from bridges.segmentation.evaluation import predict
    from bridges.segmentation.training import logits_function, stored_rule
    from pretrain.engine.backends import TorchBackend
    from pretrain.engine.run_plan import resolve_precision

    model = load_segmentation_model(model_dir).eval()
    dataset = MaskFolder(SplitFolders(images, masks), stored_rule(model.config))
    stems = [p.stem for p, _ in dataset.pairs]
    backend = TorchBackend("cpu")
    logits_of = logits_function(model, backend, resolve_precision(precision, backend))
    recipe = recipe_of(model)

    def prediction(stem: str) -> np.ndarray:
        image, label = dataset[stems.index(stem)]
        with torch.no_grad():
            return predict(logits_of, image, recipe, label.shape).numpy()

    return prediction


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """5 classes, mask value 0 a class (brick), 255 the borders (ignored)."""
    pytest.importorskip("skimage")
    from bridges.demo.sample_data import write_texture_masks

    return write_texture_masks(tmp_path_factory.mktemp("own"), CLASSES, train_images=8, val_images=3)


def _folders(root) -> list[str]:
    return ["--train", f"{root}/train/images:{root}/train/masks", "--val", f"{root}/val/images:{root}/val/masks"]


def _segment(root, out, *extra) -> int:
    return main(["segment", "demo", *_folders(root), "--output-dir", str(out), "--device", "cpu", "--num-workers",
                 "0", "--precision", "fp32", "--max-iter", "2", "--print-freq", "100", *extra])


def test_masks_generated_as_a_user_would_have_them(own):
    masks = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((own / "train" / "masks").iterdir())])
    assert set(np.unique(masks)) == {0, 1, 2, 3, 4, 255}
    assert (own / "classes.txt").read_text().splitlines() == list(CLASSES)


def test_five_classes_with_zero_a_class_train_and_evaluate_by_name(own, tmp_path, lsmae_home, capsys):
    out = tmp_path / "run"
    assert _segment(own, out, "--num-labels", "5", "--class-names", str(own / "classes.txt"), "--save-pictures",
                    "2") == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    # the final model's pictures of the first 2 validation images, what the evaluation scored
    val = (own / "val" / "images", own / "val" / "masks")
    check_pictures(out / "pictures", *val, 2, CLASSES, reduce=False, model_dir=out / "model_final", precision="fp32")
    assert captured.err.count(" pictures in ") == 1 and f" 2 pictures in {out / 'pictures'}\n" in captured.err
    table = [line.split() for line in printed if line.startswith("  ") and "IoU" in line]
    assert [row[0] for row in table] == list(CLASSES)
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    [final] = [r for r in evals if r["kind"] == "eval"]
    assert list(final["class_IoU"]) == list(CLASSES)
    config = json.loads((out / "model_final" / "config.json").read_text())
    assert list(config["id2label"].values()) == list(CLASSES)  # num_labels = len(id2label) in transformers 5
    assert (config["lsmae_ignore_index"], config["lsmae_reduce_zero_label"]) == (255, False)
    # --eval-only needs none of the label options again
    assert main(["segment", "--eval-only", str(out / "model_final"), "--val",
                 f"{own}/val/images:{own}/val/masks", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mIoU ") and [line.split()[0] for line in lines[1:]] == list(CLASSES)
    assert not (out / "model_final" / "pictures").exists()  # --save-pictures 0, the default
    # ... and draws its pictures into the model folder
    assert main(["segment", "--eval-only", str(out / "model_final"), "--val", f"{own}/val/images:{own}/val/masks",
                 "--device", "cpu", "--save-pictures", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 pictures in {out / 'model_final' / 'pictures'}"
    check_pictures(out / "model_final" / "pictures", *val, 2, CLASSES, reduce=False, model_dir=out / "model_final")
    # ... or into --output-dir when one is given
    assert main(["segment", "--eval-only", str(out / "model_final"), "--val", f"{own}/val/images:{own}/val/masks",
                 "--device", "cpu", "--save-pictures", "1", "--output-dir", str(tmp_path / "looked")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"1 picture in {tmp_path / 'looked' / 'pictures'}"
    check_pictures(tmp_path / "looked" / "pictures", *val, 1, CLASSES, reduce=False, model_dir=out / "model_final")
    # ... and refuses one that differs from the folder's
    assert main(["segment", "--eval-only", str(out / "model_final"), "--val", f"{own}/val/images:{own}/val/masks",
                 "--num-labels", "4"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after transformers' loading bar
        f"lsmae segment: error: --num-labels 4: {out / 'model_final'} was trained with 5 (stored in its config)")
    # the data is part of the run's identity: another ignore value does not resume this run
    assert _segment(own, out, "--num-labels", "5", "--class-names", str(own / "classes.txt"),
                    "--ignore-index", "254") == 1
    assert "belongs to another run: data.ignore_index 255 -> 254" in capsys.readouterr().err


def test_the_same_folder_with_zero_reduced_has_four_classes(own, tmp_path, lsmae_home, capsys):
    names = tmp_path / "four.txt"
    names.write_text("\n".join(CLASSES[1:]) + "\n")
    out = tmp_path / "run"
    assert _segment(own, out, "--reduce-zero-label", "--num-labels", "4", "--class-names", str(names),
                    "--save-pictures", "0") == 0
    captured = capsys.readouterr()
    table = [line.split()[0] for line in captured.out.splitlines() if line.startswith("  ") and "IoU" in line]
    assert table == list(CLASSES[1:])
    assert not (out / "pictures").exists() and "pictures in" not in captured.err
    config = json.loads((out / "model_final" / "config.json").read_text())
    assert len(config["id2label"]) == 4 and config["lsmae_reduce_zero_label"] is True
    # the label PNGs hold class + 1, as these masks do (0 ignored)
    assert main(["segment", "--eval-only", str(out / "model_final"), "--val", f"{own}/val/images:{own}/val/masks",
                 "--device", "cpu", "--save-pictures", "5"]) == 0  # more than the 3 images: all 3
    check_pictures(out / "model_final" / "pictures", own / "val" / "images", own / "val" / "masks", 3, CLASSES[1:],
                   reduce=True, model_dir=out / "model_final")


def test_a_legend_names_only_the_classes_in_its_picture():
    from bridges.segmentation.pictures import legend, picture

    label = torch.tensor([[0, 0, 255], [2, 2, 2]])
    pred = torch.tensor([[0, 2, 2], [2, 2, 0]])
    assert legend(label, pred, CLASSES) == [(tuple(VOC[1]), "brick"), (tuple(VOC[3]), "gravel"), ((0, 0, 0), "ignored")]
    page = np.asarray(picture(torch.zeros(3, 2, 3, dtype=torch.uint8), label, pred, CLASSES))
    swatches = {tuple(c) for c in np.unique(page.reshape(-1, 3), axis=0)}
    assert {tuple(VOC[c]) for c in range(1, 6)} & swatches == {tuple(VOC[1]), tuple(VOC[3])}


def test_the_plan_shows_the_data_the_classes_and_the_passes(own, lsmae_home, capsys):
    assert main(["segment", "vit_base/coco/4000", *_folders(own), "--num-labels", "5", "--class-names",
                 str(own / "classes.txt"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert (f"data: train {own}/train/images:{own}/train/masks (8 images); val {own}/val/images:{own}/val/masks "
            "(3 images); 5 classes, mask value 255 ignored, reduce-zero-label off") in text
    assert "classes: brick, grass, gravel, coins, moon" in text
    assert "pictures:" not in text
    assert main(["segment", "vit_base/coco/4000", *_folders(own), "--num-labels", "5", "--dry-run", "--save-pictures",
                 "9", "--output-dir", "OUT"]) == 0
    assert ("      pictures: the first 3 validation images (image | ground truth | prediction, and the prediction as "
            "a label PNG) from the final model into OUT/pictures") in capsys.readouterr().out.splitlines()
    assert ("the recipe applies unchanged: 160000 iterations x 16 images = 320000.0 passes over the 8 training "
            "images") in text
    assert main(["segment", "vit_base/coco/4000", *_folders(own), "--num-labels", "5", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["num_labels"], plan["lr"], plan["max_iter"]) == (5, 8e-5, 160000)  # the recipe, sized by N
    assert plan["data"]["train"]["count"] == 8 and plan["data"]["passes"] == 320000.0 and plan["pictures"] is None
    assert main(["segment", "vit_base/coco/4000", *_folders(own), "--num-labels", "5", "--dry-run", "--json",
                 "--save-pictures", "2", "--output-dir", "OUT"]) == 0
    assert json.loads(capsys.readouterr().out)["pictures"] == {"count": 2, "folder": "OUT/pictures"}
    # the benchmark plan without data is as before: no data lines
    assert main(["segment", "vit_base/coco/4000", "--dry-run"]) == 0
    assert "data:" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--num-labels", "3", "--num-workers", "1"], "RE:train/masks/train_\\d{4}.png: mask value [34] is neither a class "
                                                  "\\(0..2 with 3 labels\\) nor the ignore index 255"),
    (["--num-labels", "5", "--class-names", "NAMES4"], "--class-names NAMES4: 4 names for 5 classes"),
    (["--num-labels", "5", "num_labels=4"], "--num-labels 5 and num_labels=4 differ: give the number once"),
    (["--num-labels", "5", "--ignore-index", "3"], "--ignore-index 3 is one of the class values 0..4"),
    (["--num-labels", "5", "--save-pictures", "-1"], "--save-pictures -1: the number of pictures must be 0 or more"),
    (["--num-labels", "5", "--train", "images_only"],
     "--train images_only: expected IMAGES:MASKS (an images folder and its masks folder)"),
])
def test_bad_label_settings_are_one_line_errors(own, tmp_path, lsmae_home, capsys, extra, message):
    names4 = tmp_path / "four.txt"
    names4.write_text("a\nb\nc\nd\n")
    extra = [str(names4) if e == "NAMES4" else e for e in extra]
    message = message.replace("NAMES4", str(names4))
    argv = _folders(own)
    if "--train" in extra:
        argv = argv[2:]
    assert main(["segment", "demo", *argv, "--output-dir", str(tmp_path / "run"), "--device", "cpu",
                 "--precision", "fp32", "--max-iter", "1", "--print-freq", "100", *extra]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's log lines, where it got that far
    pattern = message[3:] if message.startswith("RE:") else re.escape(message)  # which file a worker reads first varies
    assert re.fullmatch(f"lsmae segment: error: .*{pattern}", last), last  # a worker's error too: no traceback


def test_train_without_val_and_both_ways_in_are_refused(own, lsmae_home, capsys):
    assert main(["segment", "demo", "--train", f"{own}/train/images:{own}/train/masks", "--dry-run"]) == 1
    assert capsys.readouterr().err.strip().endswith("--train needs --val IMAGES:MASKS (the evaluation set)")
    assert main(["segment", "demo", *_folders(own), "--data-path", str(own), "--dry-run"]) == 1
    assert "give --data-path DIR or --train IMAGES:MASKS --val IMAGES:MASKS, not both" in capsys.readouterr().err
