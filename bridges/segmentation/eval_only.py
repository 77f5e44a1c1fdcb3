"""``lsmae segment --eval-only MODEL_DIR``: a saved model folder evaluated on a validation split with the
settings stored in it (:func:`bridges.segmentation.training.evaluate`), its pictures drawn by the main process."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from pretrain.engine.backends import make_backend
from pretrain.engine.run_plan import resolve_precision
from pretrain.errors import LsmaeError

from bridges.segmentation.data import MaskFolder
from bridges.segmentation.data_spec import data_splits
from bridges.segmentation.model import load_upernet
from bridges.segmentation.pictures import FOLDER as PICTURES, pictures_line
from bridges.segmentation.recipes import EVAL_KEYS, SegRecipe, apply_overrides, get_recipe, recipe_for_depth
from bridges.segmentation.training import class_table, evaluate, save_pictures, stored_rule


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


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    unused = [o for o in args.overrides if o.partition("=")[0] not in EVAL_KEYS]
    if unused:
        raise LsmaeError(f"--eval-only takes only the evaluation overrides ({', '.join(EVAL_KEYS)}), not {unused[0]}")
    if args.train:
        raise LsmaeError("--eval-only reads only --val IMAGES:MASKS (or --data-path), not --train")
    if args.compile:
        raise LsmaeError("--compile compiles training steps: --eval-only runs the model uncompiled (its windows "
                         "take other sizes, each one a compilation)")
    val = data_splits(args).get("val")
    if val is None:
        raise LsmaeError("--eval-only needs --data-path DIR or --val IMAGES:MASKS")
    model = load_segmentation_model(args.eval_only)
    rule = stored_rule(model.config)
    given = {"--num-labels": (args.num_labels, rule.num_labels), "--ignore-index": (args.ignore_index, rule.ignore_index),
             "--reduce-zero-label": (args.reduce_zero_label, rule.reduce_zero_label)}
    for option, (value, stored) in given.items():
        if value is not None and value != stored:
            raise LsmaeError(f"{option} {value}: {args.eval_only} was trained with {stored} (stored in its config)")
    recipe = apply_overrides(recipe_of(model), args.overrides)[0]
    dataset = MaskFolder(val, rule)
    backend = make_backend(args.device)
    try:
        model.to(backend.device)
        dtype = resolve_precision(args.precision, backend)
        result = evaluate(model, dataset, recipe, backend, dtype, args.aug_test)
    finally:
        backend.shutdown()  # the pictures below run no collective: the other processes may end
    result["pictures"] = []
    if backend.is_main:
        print(f"mIoU {100 * result['mIoU']:.2f} mAcc {100 * result['mAcc']:.2f} aAcc {100 * result['aAcc']:.2f} "
              f"on {result['images']} images" + (" (multi-scale + flip)" if args.aug_test else ""))
        print(class_table(result, rule))
        folder = Path(args.output_dir or args.eval_only).expanduser() / PICTURES
        result["pictures"] = save_pictures(model, dataset, recipe, backend, dtype, args.save_pictures, folder,
                                           args.aug_test)
        if result["pictures"]:
            print(pictures_line(result["pictures"], folder))
    return result
