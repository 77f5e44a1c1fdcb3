"""``lsmae segment`` / ``python -m bridges.segment`` (also under torchrun): UperNet on ADE20K from a
long-seq MAE checkpoint, with the recipes of :mod:`bridges.segment_recipes`.

Training runs on the shared skeleton (:mod:`pretrain.trainer`) in iterations: evaluation and
checkpoints every N iterations, resume mid-epoch, best checkpoint kept. ``model_final`` and
``model_best`` are ``save_pretrained`` folders (load with ``bridges.upernet.model_class()``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pretrain.errors import LsmaeError, report_errors

from .segment_args import build_parser
from .segment_recipes import SegRecipe, get_recipe, plan, scale_to_batch

log = logging.getLogger("bridges.segment")


# --------------------------------------------------------------------------- the plan
def _source_depth(source: str) -> int | None:
    """The encoder depth of a zoo id (from the registry, no download) or of a checkpoint file."""
    from pretrain.archs import model_config
    from zoo.registry import get_entry

    path = Path(source).expanduser()
    if path.exists():
        from zoo.checkpoint import describe, load_checkpoint, model_state_dict

        return describe(model_state_dict(load_checkpoint(path))).depth
    return model_config(get_entry(source).model)["depth"]


def resolve_recipe(args: argparse.Namespace) -> SegRecipe:
    """The recipe named by --config (or chosen by the encoder's depth), scaled to --batch-size, with
    the explicit --max-iter / --eval-period applied last."""
    from dataclasses import replace

    if args.config is None:
        if args.source is None:
            raise LsmaeError("name SOURCE (a zoo id or an MAE checkpoint) or --eval-only MODEL_DIR")
        depth = _source_depth(args.source)
        args.config = {12: "upernet_vit_b_ade20k_160k", 24: "upernet_vit_l_ade20k_160k", 4: "demo"}.get(depth)
        if args.config is None:
            raise LsmaeError(f"no recipe for a {depth}-block encoder: name one with --config")
    recipe = scale_to_batch(get_recipe(args.config), args.batch_size)
    overrides = {k: v for k, v in (("max_iter", args.max_iter), ("eval_period", args.eval_period)) if v is not None}
    return replace(recipe, **overrides)


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", 1))


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


# --------------------------------------------------------------------------- model and optimizer
def param_groups(model: Any, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Layer-wise lr decay over the ViT (embeddings = layer 0, block i = i + 1, pyramid and heads =
    last) and no weight decay on norms, biases, layer scales, position embeddings, cls token and
    relative position tables (BEiT's LayerDecayOptimizerConstructor)."""
    depth = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("beit.embeddings."):
            layer = 0
        elif name.startswith("beit.layers."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        no_decay = p.ndim == 1 or name.endswith((".bias", "position_embeddings", "cls_token")) \
            or "relative_position_bias_table" in name
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return list(groups.values())


def build_model(args: argparse.Namespace, recipe: SegRecipe) -> tuple[Any, str]:
    """The UperNet model from SOURCE (or its untrained architecture) and the conversion report."""
    import torch

    from .upernet import convert_to_upernet

    source: Any = args.source
    if args.from_scratch:  # the source names the architecture; its weights are not used
        from pretrain.models_mae import create_model
        from zoo.cache import load_state_dict
        from zoo.checkpoint import check_structure

        info = check_structure(load_state_dict(args.source))
        torch.manual_seed(args.seed)
        source = create_model(info.model, **info.model_overrides()).state_dict()
    conversion = convert_to_upernet(source, img_size=recipe.crop_size, num_labels=recipe.num_labels,
                                    block_taps=list(recipe.out_indices), drop_path=recipe.drop_path)
    if args.from_scratch:
        conversion.model.config.lsmae = {**conversion.model.config.lsmae, "source": str(args.source),
                                         "init": "untrained (from scratch)"}
    return conversion.model, conversion.report()


# --------------------------------------------------------------------------- evaluation
def evaluate(model: Any, data_path: str | Path, recipe: SegRecipe, backend: Any, dtype: Any,
             aug_test: bool = False) -> dict[str, Any]:
    """mIoU/mAcc/aAcc on the validation split; under DDP each image is measured by one process."""
    import torch

    from .segment_data import ADE20K
    from .segment_eval import SegMetrics, predict

    dataset = ADE20K(data_path, "val")
    metrics = SegMetrics.empty(recipe.num_labels, backend.device)
    was_training = model.training
    model.eval()

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with backend.autocast(dtype):
            return model(x).logits

    with torch.no_grad():
        for i in range(backend.rank, len(dataset), backend.world_size):
            image, label = dataset[i]
            pred = predict(logits_of, image.to(backend.device), recipe, label.shape, aug_test)
            metrics.add(pred, label.to(backend.device))
    model.train(was_training)
    total = backend.all_reduce_sum(metrics.as_tensor())
    return {**SegMetrics.from_tensor(total).summary(), "images": len(dataset)}


def load_segmentation_model(folder: str | Path) -> Any:
    from .upernet import model_class

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise LsmaeError(f"{folder}: not a segmentation model folder (no config.json); give a folder written by "
                         "`lsmae segment` (OUTPUT_DIR/model_final) or `lsmae convert --to upernet`")
    model = model_class().from_pretrained(str(folder))
    if not hasattr(model.config, "lsmae_block_taps"):
        raise LsmaeError(f"{folder}: a BEiT model without lsmae_block_taps: not written by lsmae")
    return model


def recipe_of(model: Any) -> SegRecipe:
    """The evaluation settings stored with a model folder (crop, stride, scale, classes)."""
    from .segment_recipes import SegRecipe

    stored = dict(model.config.lsmae.get("recipe") or {})
    if stored:
        for key in ("out_indices", "betas", "scale", "ratio_range", "aug_test_scales"):
            stored[key] = tuple(stored[key])
        return SegRecipe(**stored)
    base = get_recipe("upernet_vit_l_ade20k_160k" if model.config.num_hidden_layers == 24
                      else "upernet_vit_b_ade20k_160k")
    from dataclasses import replace

    return replace(base, crop_size=model.config.image_size, num_labels=model.config.num_labels,
                   out_indices=tuple(model.config.lsmae_block_taps))


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    from pretrain.backends import make_backend
    from pretrain.trainer import resolve_precision

    if args.data_path is None:
        raise LsmaeError("--eval-only needs --data-path")
    model = load_segmentation_model(args.eval_only)
    recipe = recipe_of(model)
    backend = make_backend(args.device)
    model.to(backend.device)
    result = evaluate(model, args.data_path, recipe, backend, resolve_precision(args.precision, backend),
                      args.aug_test)
    if backend.is_main:
        print(f"mIoU {100 * result['mIoU']:.2f} mAcc {100 * result['mAcc']:.2f} aAcc {100 * result['aAcc']:.2f} "
              f"on {result['images']} images" + (" (multi-scale + flip)" if args.aug_test else ""))
    return result


# --------------------------------------------------------------------------- entry points
def run(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.eval_only:
        return run_eval(args)
    recipe = resolve_recipe(args)
    record = plan(recipe, world_size(), args.source, grad_checkpointing=args.grad_checkpointing,
                  from_scratch=args.from_scratch)
    if args.dry_run:
        print_plan(record, args.json)
        return None
    if args.data_path is None:
        raise LsmaeError("--data-path DATA (an ADE20K-layout folder) is needed to train")
    from .segment_train import train

    return train(args, recipe, record)


def main(argv: list[str] | None = None) -> int:
    return report_errors("segment", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
