"""``lsmae segment`` (under torchrun: ``-m bridges segment``): UperNet on ADE20K from a
long-seq MAE checkpoint, with the recipes of :mod:`bridges.segmentation.recipes`.

This module resolves the recipe and the plan (``--dry-run`` needs no torch); training and
evaluation are in :mod:`bridges.segmentation.training`, on the shared skeleton (:mod:`pretrain.engine.trainer`).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from pretrain.errors import LsmaeError
from pretrain.engine.launch_env import launched_processes

from bridges.segmentation.recipes import SegRecipe, get_recipe, plan, recipe_for_depth, scale_to_batch


# --------------------------------------------------------------------------- the plan
def resolve_recipe(args: argparse.Namespace) -> SegRecipe:
    """The recipe named by --config (or chosen by the encoder's depth), scaled to --batch-size, with
    the explicit --max-iter / --eval-period / --checkpoint-period applied last."""
    from dataclasses import replace

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
    return replace(recipe, **overrides)


def print_plan(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record))
        return
    print(f"plan: {record['config']} from {record['source']} on {record['devices']} device(s), "
          f"{record['batch_size']} images per step ({record['batch_per_device']} per device), crop "
          f"{record['crop_size']}")
    print(f"      {record['max_iter']} iterations, lr {record['lr']:.3g} (warmup {record['warmup_iters']}, poly "
          f"{record['poly_power']}), layer decay {record['layer_decay']}, drop path {record['drop_path']}, weight "
          f"decay {record['weight_decay']}, taps {record['out_indices']}")
    print(f"      evaluation every {record['eval_period']} and checkpoints every {record['checkpoint_period']} "
          f"iterations; sliding window {record['crop_size']} stride {record['eval_stride']}")


# --------------------------------------------------------------------------- entry points
def run(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.eval_only:
        from bridges.segmentation.training import run_eval

        return run_eval(args)
    recipe = resolve_recipe(args)
    record = plan(recipe, launched_processes(), args.source, grad_checkpointing=args.grad_checkpointing,
                  from_scratch=args.from_scratch)
    if args.dry_run:
        print_plan(record, args.json)
        return None
    if args.data_path is None:
        raise LsmaeError("--data-path DATA (an ADE20K-layout folder) is needed to train")
    from bridges.segmentation.training import train

    return train(args, recipe, record)
