"""``lsmae segment`` (under torchrun: ``-m bridges segment``): UperNet on ADE20K from a
long-seq MAE checkpoint, with the recipes of :mod:`bridges.segmentation.recipes`.

This module resolves the recipe and the plan (``--dry-run`` needs no torch); training and
evaluation are in :mod:`bridges.segmentation.training` and :mod:`bridges.segmentation.eval_only`, on the shared skeleton (:mod:`pretrain.engine.trainer`).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError
from pretrain.engine.launch_env import launched_processes
from pretrain.shared_options import TASKS

from bridges.segmentation.data_spec import IGNORE_INDEX, data_splits, describe_data, label_rule
from bridges.segmentation.recipes import (SegRecipe, apply_overrides, get_recipe, plan, recipe_for_depth,
                                          scale_to_batch)



# --------------------------------------------------------------------------- the plan
def split_positionals(args: argparse.Namespace) -> None:
    """SOURCE and the KEY=VALUE overrides in any order: argparse gives the first positional to SOURCE, also
    when it is an override (or there is no SOURCE, as with --eval-only)."""
    given = ([args.source] if args.source is not None else []) + list(args.overrides)
    sources = [p for p in given if "=" not in p or Path(p).exists()]
    if len(sources) > 1:
        raise LsmaeError(f"one SOURCE, got {', '.join(sources)} (overrides are KEY=VALUE)")
    args.source = sources[0] if sources else None
    args.overrides = [p for p in given if p not in sources]


def resolve_recipe(args: argparse.Namespace) -> tuple[SegRecipe, dict[str, Any]]:
    """The recipe named by --config (or chosen by the encoder's depth), scaled to --batch-size, then the
    explicit --max-iter / --eval-period / --checkpoint-period, then the KEY=VALUE overrides (returned too)."""
    if args.config is None:
        if args.source is None:
            raise LsmaeError("name SOURCE (a zoo id or an MAE checkpoint) or --eval-only MODEL_DIR")
        from zoo.registry import encoder_size

        depth = encoder_size(args.source)[1]
        args.config = recipe_for_depth(depth)
        if args.config is None:
            raise LsmaeError(f"no recipe for a {depth}-block encoder: name one with --config")
    recipe = scale_to_batch(get_recipe(args.config), args.batch_size)
    overrides = {k: v for k, v in (("max_iter", args.max_iter), ("eval_period", args.eval_period),
                                   ("checkpoint_period", args.checkpoint_period)) if v is not None}
    return apply_overrides(replace(recipe, **overrides), args.overrides)


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
        print(f"      pictures: the first {record['pictures']['count']} validation images (image | ground truth | "
              f"prediction, and the prediction as a label PNG) from the final model into {record['pictures']['folder']}")
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


# --------------------------------------------------------------------------- entry points
def picture_plan(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's pictures (``--save-pictures N``): how many (at most the validation images) and where."""
    if not args.save_pictures:
        return None
    count = min(args.save_pictures, data["val"]["count"]) if "val" in data else args.save_pictures
    return {"count": count, "folder": str(Path(args.output_dir) / "pictures")}


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    split_positionals(args)
    if args.save_pictures < 0:
        raise LsmaeError(f"--save-pictures {args.save_pictures}: the number of pictures must be 0 or more")
    if args.eval_only:
        from bridges.segmentation.eval_only import run_eval

        return run_eval(args)
    args.output_dir = args.output_dir or TASKS["segment"].output_dir
    recipe, overrides = resolve_recipe(args)
    rule = label_rule(args, recipe.num_labels, overrides.get("num_labels"))
    recipe = replace(recipe, num_labels=rule.num_labels)
    splits = data_splits(args)
    data = describe_data(splits, rule, recipe.max_iter, recipe.batch_size)
    record = plan(recipe, launched_processes(), args.source, overrides, grad_checkpointing=args.grad_checkpointing,
                  compile=args.compile, from_scratch=args.from_scratch, data=data, pictures=picture_plan(args, data))
    if args.dry_run:
        print_plan(record, args.json)
        return None
    if not splits:
        raise LsmaeError("--data-path DIR (the ADE20K layout) or --train IMAGES:MASKS --val IMAGES:MASKS is needed "
                         "to train")
    from bridges.segmentation.training import train

    return train(args, recipe, record, splits, rule)
