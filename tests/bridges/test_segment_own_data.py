"""``lsmae segment`` on a data set of one's own: IMAGES:MASKS folders, --num-labels, --ignore-index,
--reduce-zero-label, --class-names; what the plan prints, what the model folder keeps, the one-line errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from bridges.cli import main

transformers = pytest.importorskip("transformers")

CLASSES = ("brick", "grass", "gravel", "coins", "moon")


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
    assert _segment(own, out, "--num-labels", "5", "--class-names", str(own / "classes.txt")) == 0
    printed = capsys.readouterr().out.splitlines()
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
    assert _segment(own, out, "--reduce-zero-label", "--num-labels", "4", "--class-names", str(names)) == 0
    table = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and "IoU" in line]
    assert table == list(CLASSES[1:])
    config = json.loads((out / "model_final" / "config.json").read_text())
    assert len(config["id2label"]) == 4 and config["lsmae_reduce_zero_label"] is True


def test_the_plan_shows_the_data_the_classes_and_the_passes(own, lsmae_home, capsys):
    assert main(["segment", "vit_base/coco/4000", *_folders(own), "--num-labels", "5", "--class-names",
                 str(own / "classes.txt"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert (f"data: train {own}/train/images:{own}/train/masks (8 images); val {own}/val/images:{own}/val/masks "
            "(3 images); 5 classes, mask value 255 ignored, reduce-zero-label off") in text
    assert "classes: brick, grass, gravel, coins, moon" in text
    assert ("the recipe applies unchanged: 160000 iterations x 16 images = 320000.0 passes over the 8 training "
            "images") in text
    assert main(["segment", "vit_base/coco/4000", *_folders(own), "--num-labels", "5", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["num_labels"], plan["lr"], plan["max_iter"]) == (5, 8e-5, 160000)  # the recipe, sized by N
    assert plan["data"]["train"]["count"] == 8 and plan["data"]["passes"] == 320000.0
    # the benchmark plan without data is as before: no data lines
    assert main(["segment", "vit_base/coco/4000", "--dry-run"]) == 0
    assert "data:" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--num-labels", "3", "--num-workers", "1"], "RE:train/masks/train_\\d{4}.png: mask value [34] is neither a class "
                                                  "\\(0..2 with 3 labels\\) nor the ignore index 255"),
    (["--num-labels", "5", "--class-names", "NAMES4"], "--class-names NAMES4: 4 names for 5 classes"),
    (["--num-labels", "5", "num_labels=4"], "--num-labels 5 and num_labels=4 differ: give the number once"),
    (["--num-labels", "5", "--ignore-index", "3"], "--ignore-index 3 is one of the class values 0..4"),
    (["--num-labels", "5", "--train", "images_only"], "--train images_only: expected IMAGES:MASKS (an images folder and its masks folder)"),
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
