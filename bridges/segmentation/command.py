"""``lsmae segment`` (under torchrun: ``-m bridges segment``) as functions: UperNet on ADE20K from a
long-seq MAE checkpoint, with the recipes of :mod:`bridges.segmentation.recipes`.

:func:`segment_plan` resolves the recipe and the plan (``--dry-run``; no torch), :func:`segment` trains
(:mod:`bridges.segmentation.training`, on the shared skeleton :mod:`pretrain.engine.trainer`); the evaluation
of a model folder is :func:`bridges.segmentation.eval_only.evaluate_segmentation`.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridges.segmentation.config import SegmentConfig, SegmentResult
from bridges.segmentation.data_spec import IGNORE_INDEX, LabelRule, data_splits, describe_data, label_rule
from bridges.segmentation.recipes import SegRecipe, apply_overrides, get_recipe, plan, recipe_for_depth, scale_to_batch
from pretrain.configs import configure
from pretrain.engine.launch_env import launched_processes
from pretrain.errors import OptionError


# --------------------------------------------------------------------------- the plan
def resolve_recipe(config: SegmentConfig) -> tuple[SegRecipe, dict[str, Any]]:
    """The recipe named by ``recipe`` (or chosen by the encoder's depth), scaled to ``batch_size``, then the
    explicit ``max_iter`` / ``eval_period`` / ``checkpoint_period``, then the KEY=VALUE overrides (returned too)."""
    name = config.recipe
    if name is None:
        if config.source is None:
            raise OptionError("name {source} (a zoo id or an MAE checkpoint) or {eval_only} MODEL_DIR")
        from zoo.registry import encoder_size

        depth = encoder_size(config.source)[1]
        name = recipe_for_depth(depth)
        if name is None:
            raise OptionError(f"no recipe for a {depth}-block encoder: name one with {{recipe}}")
    recipe = scale_to_batch(get_recipe(name), config.batch_size)
    overrides = {k: v for k, v in (("max_iter", config.max_iter), ("eval_period", config.eval_period),
                                   ("checkpoint_period", config.checkpoint_period)) if v is not None}
    return apply_overrides(replace(recipe, **overrides), config.overrides)


def print_plan(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record))
        return
    estimated = " (ESTIMATED: not published for this model; sources below)" if record["estimated"] else ""
    print(f"plan: {record['config']}{estimated} from {record['source']} on {record['devices']} device(s), "
          f"{record['batch_size']} images per step ({record['batch_per_device']} per device), crop "
          f"{record['crop_size']}")
    print(f"      {record['max_iter']} iterations, lr {record['lr']:.3g} (warmup {record['warmup_iters']}, poly "
          f"{record['poly_power']}), layer decay {record['layer_decay']}, drop path {record['drop_path']}, weight "
          f"decay {record['weight_decay']}, head dropout {record['head_dropout']}, taps {record['out_indices']}")
    print(f"      evaluation every {record['eval_period']} and checkpoints every {record['checkpoint_period']} "
          f"iterations; sliding window {record['crop_size']} stride {record['eval_stride']}")
    print_data(record)
    if record["compile"]:
        print("      training steps torch.compile'd (compilation before the first step); evaluation uncompiled")
    if record["pictures"]:
        pictures = record["pictures"]
        print(f"      pictures: the first {pictures['count']} validation images (image | ground truth | prediction, "
              f"and the prediction as a label PNG) from the final model into {pictures['folder']}")
    if record["overrides"]:
        print("      overrides: " + " ".join(f"{k}={_shown(v)}" for k, v in record["overrides"].items()))
    by_source: dict[str, list[str]] = {}
    for key, cited in record["citations"].items():
        replaced = " (overridden above; the recipe's value)" if key in record["overrides"] else ""
        by_source.setdefault(cited, []).append(key + replaced)
    for cited, keys in by_source.items():
        print(f"      source of {', '.join(keys)}: {cited}")


def print_data(record: dict[str, Any]) -> None:
    """The plan's data lines: folders and counts, classes and mask values, passes over the training images."""
    data = record["data"]
    folders = [f"{name} {data[name]['images']}:{data[name]['masks']} ({data[name]['count']} images)"
               for name in ("train", "val") if name in data]
    benchmark_labels = data["reduce_zero_label"] and data["ignore_index"] == IGNORE_INDEX and not data["class_names"]
    if not folders and benchmark_labels:
        return  # a benchmark plan without data: nothing to add
    reduce = "on (0 ignored, k is class k-1)" if data["reduce_zero_label"] else "off"
    print(f"      data: {'; '.join(folders) or 'none given'}; {data['num_labels']} classes, mask value "
          f"{data['ignore_index']} ignored, reduce-zero-label {reduce}")
    if data["class_names"]:
        print(f"      classes: {', '.join(data['class_names'])}")
    if "passes" in data:
        print(f"      the recipe applies unchanged: {record['max_iter']} iterations x {record['batch_size']} images = "
              f"{data['passes']:.1f} passes over the {data['train']['count']} training images")


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# --------------------------------------------------------------------------- the API
def picture_plan(config: SegmentConfig, data: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's pictures (``save_pictures``): how many (at most the validation images) and where."""
    if not config.save_pictures:
        return None
    count = min(config.save_pictures, data["val"]["count"]) if "val" in data else config.save_pictures
    return {"count": count, "folder": str(Path(config.output_dir) / "pictures")}


def _resolved(config: SegmentConfig) -> tuple[SegRecipe, dict[str, Any], dict[str, Any], LabelRule]:
    """The recipe, the plan record, the splits and the label rule of a training config."""
    recipe, overrides = resolve_recipe(config)
    rule = label_rule(config, recipe.num_labels, overrides.get("num_labels"))
    recipe = replace(recipe, num_labels=rule.num_labels)
    splits = data_splits(config.data_path, config.train, config.val)
    data = describe_data(splits, rule, recipe.max_iter, recipe.batch_size)
    record = plan(recipe, launched_processes(), config.source, overrides,
                  grad_checkpointing=config.grad_checkpointing, compile=config.compile,
                  from_scratch=config.from_scratch, data=data, pictures=picture_plan(config, data))
    return recipe, record, splits, rule


def segment_plan(config: SegmentConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """``lsmae segment --dry-run`` as a function: the resolved plan (recipe, batch per device, schedule, data,
    each value's source), without data loading, weights or torch; :func:`print_plan` shows it."""
    return _resolved(configure(SegmentConfig, config, options))[1]


def segment(config: SegmentConfig | None = None, /, **options: Any) -> SegmentResult:
    """``lsmae segment`` as a function: train (or resume) UperNet and evaluate it; the result is the final
    model's evaluation, the best periodic one beside it (:class:`SegmentConfig` holds the options)."""
    config = configure(SegmentConfig, config, options)
    recipe, record, splits, rule = _resolved(config)
    if not splits:
        raise OptionError("{data_path} DIR (the ADE20K layout) or {train} IMAGES:MASKS {val} IMAGES:MASKS is "
                          "needed to train")
    from bridges.segmentation.training import train

    return train(config, recipe, record, splits, rule)
