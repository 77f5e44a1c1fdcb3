"""``lsmae segment --eval-only MODEL_DIR`` (:func:`evaluate_segmentation`): a saved model folder evaluated on a
validation split with the settings stored in it (:func:`bridges.segmentation.training.evaluate`), its pictures
drawn by the main process."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bridges.segmentation.config import SegmentEvalConfig, SegmentEvaluation
from bridges.segmentation.data import MaskFolder
from bridges.segmentation.data_spec import data_splits
from bridges.segmentation.model import load_upernet
from bridges.segmentation.pictures import FOLDER as PICTURES
from bridges.segmentation.pictures import pictures_line
from bridges.segmentation.recipes import EVAL_KEYS, SegRecipe, apply_overrides, get_recipe, recipe_for_depth
from bridges.segmentation.training import class_table, evaluate, save_pictures, stored_rule
from pretrain.configs import configure
from pretrain.engine.backends import make_backend
from pretrain.engine.run_plan import resolve_precision
from pretrain.errors import LsmaeError, OptionError


def load_segmentation_model(folder: str | Path) -> Any:
    """The model of a folder of ``lsmae segment`` or ``lsmae convert --to upernet``, old folders included."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise LsmaeError(f"{folder}: not a segmentation model folder (no config.json); give a folder written by "
                         "`lsmae segment` (OUTPUT_DIR/model_final) or `lsmae convert --to upernet`")
    return load_upernet(folder)


def recipe_of(model: Any) -> SegRecipe:
    """The evaluation settings stored with a model folder (crop, stride, scale, classes); a folder
    straight from ``convert --to upernet`` gets its depth's recipe at its own crop and classes."""
    stored = dict(model.config.lsmae.get("recipe") or {})
    if stored:
        for key in ("out_indices", "betas", "scale", "ratio_range", "aug_test_scales"):
            stored[key] = tuple(stored[key])
        return SegRecipe(**stored)
    base = get_recipe(recipe_for_depth(model.config.num_hidden_layers) or "upernet_vit_b_ade20k_160k")
    return dataclasses.replace(base, crop_size=model.config.image_size, num_labels=model.config.num_labels,
                               out_indices=tuple(model.config.lsmae_block_taps))


def evaluate_segmentation(config: SegmentEvalConfig | None = None, /, **options: Any) -> SegmentEvaluation:
    """``lsmae segment --eval-only MODEL_DIR`` as a function: mIoU/mAcc/aAcc of a model folder on the validation
    split, with the settings stored in it (:class:`SegmentEvalConfig`); its pictures drawn by the main process."""
    config = configure(SegmentEvalConfig, config, options)
    unused = [o for o in config.overrides if o.partition("=")[0] not in EVAL_KEYS]
    if unused:
        raise OptionError(f"{{eval_only}} takes only the evaluation overrides ({', '.join(EVAL_KEYS)}), not "
                          f"{unused[0]}")
    val = data_splits(config.data_path, None, config.val).get("val")
    if val is None:
        raise OptionError("{eval_only} needs {data_path} DIR or {val} IMAGES:MASKS")
    model = load_segmentation_model(config.eval_only)
    rule = stored_rule(model.config)
    given = {"num_labels": (config.num_labels, rule.num_labels), "ignore_index": (config.ignore_index,
                                                                                  rule.ignore_index),
             "reduce_zero_label": (config.reduce_zero_label, rule.reduce_zero_label)}
    for field, (value, stored) in given.items():
        if value is not None and value != stored:
            raise OptionError(f"{{{field}}} {value}: {config.eval_only} was trained with {stored} (stored in its "
                              "config)")
    recipe = apply_overrides(recipe_of(model), config.overrides)[0]
    dataset = MaskFolder(val, rule)
    backend = make_backend(config.device)
    try:
        model.to(backend.device)
        dtype = resolve_precision(config.precision, backend)
        result = evaluate(model, dataset, recipe, backend, dtype, config.aug_test)
    finally:
        backend.shutdown()  # the pictures below run no collective: the other processes may end
    pictures: list[Path] = []
    if backend.is_main:
        print(f"mIoU {100 * result['mIoU']:.2f} mAcc {100 * result['mAcc']:.2f} aAcc {100 * result['aAcc']:.2f} "
              f"on {result['images']} images" + (" (multi-scale + flip)" if config.aug_test else ""))
        print(class_table(result, rule))
        folder = Path(config.output_dir or config.eval_only).expanduser() / PICTURES
        pictures = save_pictures(model, dataset, recipe, backend, dtype, config.save_pictures, folder,
                                 config.aug_test)
        if pictures:
            print(pictures_line(pictures, folder))
    per_class = {k: v for k, v in result.items() if k not in ("mIoU", "mAcc", "aAcc", "images")}
    return SegmentEvaluation(result["mIoU"], result["mAcc"], result["aAcc"], result["images"], per_class,
                             tuple(pictures))
