"""``lsmae detect``: ViTDet (Cascade) Mask R-CNN on COCO from a long-seq MAE checkpoint, with Detectron2.

    lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --num-gpus 8 train.output_dir=out/vitl
    lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --eval-only \\
        train.init_checkpoint=out/vitl/model_final.pth

SOURCE (a zoo id, ``demo``, an MAE checkpoint file or the output of ``lsmae convert --to vitdet``)
is fetched, verified and converted; ``train.init_checkpoint`` points at the conversion unless an
override sets it, and ``model.backbone.net.pretrain_img_size`` follows the checkpoint's grid.
Before anything is launched, the model's state-dict shapes are compared with the checkpoint's
(:func:`bridges.vitdet_convert.check_load_contract`): Detectron2 itself would only warn about a
``pos_embed`` that does not fit and train with a random one.

``--batch-size N`` rescales the recipe (64 images per step) to N, as detectron2's ``auto_scale_workers``
does for yacs configs; ``--dry-run [--json]`` prints the resolved plan and stops before any fetch.

Detectron2 is imported only when the command runs (it is not on PyPI).
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretrain.errors import CheckpointError, DetectError, LsmaeError, UnknownEntryError
from pretrain.optional import installed, missing, require
from pretrain.pos_embed import grid_size_of
from zoo.checkpoint import check_structure, load_checkpoint, model_state_dict, read_checkpoint
from zoo.registry import get_entry, local_source

from .batch_scaling import scale_iterations
from .detect_args import resolve_config
from .vitdet_convert import BACKBONE_PREFIX, check_load_contract, convert_to_vitdet, save_vitdet

INIT_KEY = "train.init_checkpoint"
PRETRAIN_IMG_SIZE_KEY = "model.backbone.net.pretrain_img_size"
ACT_CHECKPOINT_KEY = "model.backbone.net.use_act_checkpoint"  # --grad-checkpointing
BATCH_KEY = "dataloader.train.total_batch_size"
# --batch-size N trains the recipe at N images per step, as detectron2's auto_scale_workers does for yacs configs
# (LazyConfigs have none): the lr times N / recipe batch (linear scaling), every length in iterations divided by it.
# The warmup is a fraction of max_iter (lr_multiplier.warmup_length): it follows max_iter unchanged.
LR_KEYS = ("optimizer.lr",)
ITERATION_KEYS = ("train.max_iter", "lr_multiplier.scheduler.num_updates", "lr_multiplier.scheduler.milestones",
                  "train.eval_period", "train.checkpointer.period")
CONVERTED_NAME = "lsmae_init_vitdet.pth"  # conversion of a SOURCE file, written into train.output_dir


# --------------------------------------------------------------------------- the source checkpoint
@dataclass
class Init:
    """What SOURCE provides: the converted checkpoint (when it is used) and its grid."""

    pretrain_img_size: int
    grid_size: int
    description: str
    checkpoint: str | None = None
    report: str = ""


def _grid_of(sd: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(grid, patch) of a ViTDet backbone state dict (``backbone.net.*``, pos_embed with cls)."""
    try:
        pos = sd[BACKBONE_PREFIX + "pos_embed"]
        patch = sd[BACKBONE_PREFIX + "patch_embed.proj.weight"].shape[-1]
    except KeyError as e:
        raise DetectError(f"the ViTDet checkpoint has no {e.args[0]} tensor") from None
    return grid_size_of(pos.shape), patch


def _backbone_only(sd: dict[str, Any]) -> bool:
    return bool(sd) and all(k.startswith(BACKBONE_PREFIX) for k in sd)


def prepare_source(source: str, output_dir: str, convert: bool) -> Init:
    """Fetch/verify/convert SOURCE (``convert``) or only read its grid (an override names the init)."""
    path = local_source(source)
    if path is not None:
        sd = model_state_dict(read_checkpoint(path))
        if any(k.startswith(BACKBONE_PREFIX) for k in sd):
            if not _backbone_only(sd):
                raise DetectError(
                    f"{path} is a whole detector checkpoint, not a backbone initialisation: name the MAE checkpoint "
                    f"it was trained from as SOURCE and pass {INIT_KEY}={path}")
            grid, patch = _grid_of(sd)
            return Init(grid * patch, grid, f"{path} (converted for ViTDet)",
                        str(path.resolve()) if convert else None)
        if not convert:
            info = check_structure(sd)
            return Init(info.img_size, info.grid_size, str(path))
        converted = convert_to_vitdet(path)
        out = save_vitdet(converted, Path(output_dir) / CONVERTED_NAME)
        grid, patch = _grid_of(converted.checkpoint["model"])
        return Init(grid * patch, grid, f"{path} -> {out}", str(out), converted.report())
    try:
        entry = get_entry(source)
    except UnknownEntryError as e:
        raise DetectError(f"SOURCE {source!r} is neither a checkpoint file or folder nor a zoo id ({e})") from None
    if not convert:
        return Init(entry.img_size, entry.img_size // entry.patch_size, entry.id)
    from .vitdet_paths import vitdet_checkpoint

    out = vitdet_checkpoint(entry.id)  # fetches (progress bar, license) unless already converted
    grid, patch = _grid_of(model_state_dict(load_checkpoint(out)))
    return Init(grid * patch, grid, f"{entry.id} -> {out}", str(out))


# --------------------------------------------------------------------------- building the config
@dataclass
class Plan:
    """Everything a worker needs to rebuild the config (picklable, for the spawned processes)."""

    config: str
    settings: dict[str, Any]
    overrides: list[str]
    eval_only: bool = False
    resume: bool = False
    argv: list[str] = field(default_factory=list)


_ABSENT = object()


def _override_key(override: str) -> str:
    if "=" not in override:
        raise DetectError(f"override {override!r} is not KEY=VALUE")
    return override.split("=", 1)[0].strip().lstrip("+~")


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig, ListConfig

    keys = []
    if isinstance(node, DictConfig):
        items = ((str(k), node._get_node(k)) for k in node.keys())
    elif isinstance(node, ListConfig):
        items = ((str(i), node._get_node(i)) for i in range(len(node)))
    else:
        return keys
    for k, child in items:
        keys.append(prefix + k)
        if isinstance(child, (DictConfig, ListConfig)):
            keys.extend(_all_keys(child, prefix + k + "."))
    return keys


def _target_accepts(node: Any, name: str) -> bool:
    """Whether a LazyCall node's target takes ``name`` (an argument the config leaves at its default)."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig) or "_target_" not in node:
        return False
    target = node._target_
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:  # noqa: BLE001 - unknown: let detectron2 report it at instantiation
            return True
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_key(cfg: Any, override: str) -> None:
    from omegaconf import OmegaConf

    key = _override_key(override)
    if override.lstrip().startswith("+") or OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
        return
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if _target_accepts(parent, leaf):
        return
    close = difflib.get_close_matches(key, _all_keys(cfg), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise DetectError(f"override {override!r}: the config has no {key}{hint}; write +{override} to add a new key")


def build_config(plan: Plan) -> Any:
    """Load the LazyConfig, apply what the source dictates, then the user's overrides."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    try:
        cfg = LazyConfig.load(plan.config)
    except Exception as e:  # noqa: BLE001 - a user's config file: report, don't trace
        raise DetectError(f"cannot load config {plan.config}: {type(e).__name__}: {e}") from None
    for key in ("model", "train"):
        if key not in cfg:
            raise DetectError(f"config {plan.config} has no `{key}`: not a detection LazyConfig")
    if OmegaConf.select(cfg, "model.backbone.net", default=None) is None:
        raise DetectError(f"config {plan.config} has no model.backbone.net: not a ViTDet config")
    for key, value in plan.settings.items():
        OmegaConf.update(cfg, key, value, merge=True)
    for override in plan.overrides:
        _check_key(cfg, override)
        try:
            LazyConfig.apply_overrides(cfg, [override])
        except Exception as e:  # noqa: BLE001 - hydra/omegaconf parse and type errors
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectError(f"override {override!r}: {msg}") from None
    if is_cpu(cfg):
        OmegaConf.update(cfg, "train.amp.enabled", False, merge=True)  # AMPTrainer asserts CUDA
    return cfg


def is_cpu(cfg: Any) -> bool:
    from omegaconf import OmegaConf

    return str(OmegaConf.select(cfg, "train.device", default="cuda")).startswith("cpu")


def _required(cfg: Any, key: str, why: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise DetectError(f"the config has no {key} ({why})")
    return value


# --------------------------------------------------------------------------- the recipe at another batch size
def batch_settings(recipe: Any, batch_size: int) -> dict[str, Any]:
    """The settings that train the config ``recipe`` at ``batch_size`` images per step (LR_KEYS, ITERATION_KEYS)."""
    from omegaconf import OmegaConf

    if batch_size < 1:
        raise DetectError(f"--batch-size {batch_size}: need at least one image per step")
    recipe_batch = _required(recipe, BATCH_KEY, "the recipe batch --batch-size scales from")
    ratio = batch_size / recipe_batch
    settings: dict[str, Any] = {BATCH_KEY: batch_size}
    for key in LR_KEYS:
        settings[key] = _required(recipe, key, "the lr --batch-size scales") * ratio
    for key in ITERATION_KEYS:
        value = OmegaConf.select(recipe, key, default=None)
        if isinstance(value, int):
            settings[key] = scale_iterations(value, recipe_batch, batch_size)
        elif value is not None:  # the milestones
            settings[key] = [scale_iterations(v, recipe_batch, batch_size) for v in value]
    return settings


# --------------------------------------------------------------------------- the plan
def resolve_plan(args: argparse.Namespace, config: Path, convert: bool) -> tuple[Plan, Any, Init]:
    """The plan every process rebuilds the config from: the recipe at --batch-size, --grad-checkpointing and what
    SOURCE dictates (fetched and converted only when ``convert``), then the overrides; and the config it builds."""
    from omegaconf import OmegaConf

    plan = Plan(str(config), {}, list(args.overrides), args.eval_only, args.resume, argv=list(sys.argv))
    if args.batch_size is not None:
        plan.settings.update(batch_settings(build_config(Plan(plan.config, {}, [])), args.batch_size))
    if args.grad_checkpointing:
        plan.settings[ACT_CHECKPOINT_KEY] = True
    # the output folder (where a SOURCE file's conversion goes) as the overrides will set it
    output_dir = str(OmegaConf.select(build_config(plan), "train.output_dir", default="./output"))
    init = prepare_source(args.source, output_dir, convert)
    plan.settings[PRETRAIN_IMG_SIZE_KEY] = init.pretrain_img_size
    if convert:
        plan.settings[INIT_KEY] = init.checkpoint
    return plan, build_config(plan), init


def plan_report(plan: Plan, cfg: Any, source: str, devices: int) -> dict[str, Any]:
    """What the run will do, read from its final config (after the scaling and the overrides)."""
    from omegaconf import OmegaConf

    def get(key: str, default: Any = None) -> Any:
        return OmegaConf.select(cfg, key, default=default)

    max_iter = int(_required(cfg, "train.max_iter", "the length of the run"))
    milestones = list(get("lr_multiplier.scheduler.milestones") or [])
    num_updates = get("lr_multiplier.scheduler.num_updates")
    if num_updates is None and milestones:  # fvcore's MultiStepParamScheduler: the last milestone is the end
        num_updates, milestones = milestones[-1], milestones[:-1]
    # the scheduler sees iteration / max_iter, so milestone m of num_updates falls at m * max_iter / num_updates
    lr_steps = [-(-m * max_iter // num_updates) for m in milestones]
    return {
        "config": plan.config,
        "source": source,
        "pretrain_img_size": get(PRETRAIN_IMG_SIZE_KEY),
        "devices": devices,
        "batch_size": int(_required(cfg, BATCH_KEY, "the images per step")),
        "lr": float(_required(cfg, "optimizer.lr", "the base learning rate")),
        "max_iter": max_iter,
        "lr_steps": lr_steps,
        "warmup_iters": round(float(get("lr_multiplier.warmup_length", 0.0)) * max_iter),
        "eval_period": int(get("train.eval_period", 0)),
        "checkpoint_period": int(get("train.checkpointer.period", 0)),
        "grad_checkpointing": bool(get(ACT_CHECKPOINT_KEY, False)),
        "output_dir": str(get("train.output_dir", "./output")),
    }


def plan_lines(report: dict[str, Any]) -> list[str]:
    """The plan in a few lines, to read before committing GPU time."""
    steps = ", ".join(map(str, report["lr_steps"])) or "none"
    return [
        f"plan: {Path(report['config']).stem} from {report['source']} (pretrain_img_size "
        f"{report['pretrain_img_size']}) -> {report['output_dir']}",
        f"  batch {report['batch_size']} images per step on {report['devices']} device(s), lr {report['lr']:g}, "
        f"activation checkpointing {'on' if report['grad_checkpointing'] else 'off'}",
        f"  max_iter {report['max_iter']}, lr steps at {steps}, warmup {report['warmup_iters']} iterations",
        f"  eval every {report['eval_period']}, checkpoint every {report['checkpoint_period']} iterations",
    ]


# --------------------------------------------------------------------------- checks before launching
def gpus_per_machine(args: argparse.Namespace, cpu: bool) -> int:
    """--num-gpus, else the visible GPUs (one on CPU, and in a plan made where none is visible)."""
    num_gpus = args.num_gpus if args.num_gpus is not None else (1 if cpu else torch.cuda.device_count() or 1)
    if num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise DetectError(f"--num-gpus {num_gpus}, --num-machines {args.num_machines}, --machine-rank "
                          f"{args.machine_rank}: need num-gpus >= 1 and 0 <= machine-rank < num-machines")
    return num_gpus


def check_batch(report: dict[str, Any]) -> None:
    """Detectron2's train loader splits the batch evenly over the processes (and asserts it)."""
    if report["batch_size"] % report["devices"]:
        raise DetectError(f"a batch of {report['batch_size']} images does not split over {report['devices']} "
                          f"devices: use a --batch-size that is a multiple of {report['devices']}")


def check_schedule(cfg: Any) -> None:
    """The lr schedule builds: a rescaled or overridden one can put an lr step at or past its end."""
    from detectron2.config import instantiate

    try:
        instantiate(_required(cfg, "lr_multiplier", "the lr schedule"))
    except DetectError:
        raise
    except Exception as e:  # noqa: BLE001 - fvcore's ValueError: one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DetectError(f"the lr schedule (lr_multiplier) does not build: {type(e).__name__}: {msg}") from None


def check_act_checkpoint(cfg: Any) -> None:
    """Detectron2's ViT wraps its blocks with fairscale's checkpoint_wrapper, which detectron2 does not install."""
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, ACT_CHECKPOINT_KEY, default=False) and not installed("fairscale"):
        raise missing("fairscale", f"--grad-checkpointing ({ACT_CHECKPOINT_KEY})")


def check_datasets(cfg: Any, eval_only: bool) -> None:
    """Every dataset the run reads is registered and its image folder and annotation file exist."""
    from omegaconf import OmegaConf

    import detectron2.data  # noqa: F401  (registers the builtin datasets under $DETECTRON2_DATASETS)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    sections = ["test"] if eval_only else ["train", "test"]
    if OmegaConf.select(cfg, "dataloader.test", default=None) is None:
        raise DetectError("the config has no dataloader.test: nothing to evaluate on")
    root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    for section in sections:
        names = OmegaConf.select(cfg, f"dataloader.{section}.dataset.names", default=None)
        if names is None:
            continue
        for name in [names] if isinstance(names, str) else list(names):
            if name not in DatasetCatalog:
                raise DetectError(f"dataset {name!r} ({section}) is not registered with detectron2 (builtin COCO: "
                                  "coco_2017_train, coco_2017_val)")
            meta = MetadataCatalog.get(name)
            for attr, what in (("image_root", "image folder"), ("json_file", "annotation file")):
                where = getattr(meta, attr, None)
                if where and not os.path.exists(where):
                    raise DetectError(
                        f"dataset {name} ({section}): {what} {where} not found; set DETECTRON2_DATASETS to the "
                        f"folder that holds coco/{{train2017,val2017,annotations}} (now {root!r})")


def _local_path(path: str) -> str | None:
    from detectron2.utils.file_io import PathManager

    path = path.split("?", 1)[0]
    try:
        local = PathManager.get_local_path(path)
    except LsmaeError:
        raise
    except Exception:  # noqa: BLE001 - a URL detectron2 will report itself
        return None
    return local if os.path.isfile(local) else None


def backbone_init_shapes(init_checkpoint: str) -> dict[str, tuple[int, ...]] | None:
    """Shapes of ``init_checkpoint`` when it is a backbone initialisation (only ``backbone.net.*``
    tensors, e.g. a conversion of an MAE checkpoint), else None (a detector checkpoint)."""
    local = _local_path(init_checkpoint) if init_checkpoint else None
    if local is None:
        return None
    try:
        sd = model_state_dict(load_checkpoint(local))
    except CheckpointError:
        return None  # not ours to judge (e.g. a detectron2 .pkl); detectron2 loads it
    if not _backbone_only(sd):
        return None
    return {k: tuple(v.shape) for k, v in sd.items()}


def check_architecture(cfg: Any, checkpoint_shapes: dict[str, tuple[int, ...]]) -> None:
    """Width, depth and patch of the checkpoint's ViT against the config's (before building anything)."""
    from omegaconf import OmegaConf

    proj = checkpoint_shapes.get(BACKBONE_PREFIX + "patch_embed.proj.weight")
    blocks = {int(k.split(".")[3]) for k in checkpoint_shapes if k.startswith(BACKBONE_PREFIX + "blocks.")}
    if proj is None or not blocks:
        return  # check_load_contract reports what is missing
    have = {"embed_dim": proj[0], "depth": max(blocks) + 1, "patch_size": proj[-1]}
    want = {k: OmegaConf.select(cfg, f"model.backbone.net.{k}", default=None) for k in have}
    if any(want[k] != v for k, v in have.items()):
        def fmt(d: dict[str, Any]) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items())

        raise DetectError(f"the checkpoint is a ViT with {fmt(have)} but the config builds {fmt(want)}: use the config "
                          "of that size (_b_ for ViT-B, _l_ for ViT-L) or override model.backbone.net.*")


def enforce_load_contract(cfg: Any, checkpoint_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Build the model on the CPU and check that the checkpoint loads into it without gaps."""
    from detectron2.config import instantiate

    check_architecture(cfg, checkpoint_shapes)
    try:
        model = instantiate(cfg.model)
    except Exception as e:  # noqa: BLE001 - a config or override that does not build: say so in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DetectError(f"cannot build the model of the config: {type(e).__name__}: {msg}") from None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    return check_load_contract(shapes, checkpoint_shapes)


def _summarise_missing(missing: list[str]) -> str:
    rel_pos = sum(1 for k in missing if k.startswith(BACKBONE_PREFIX))
    return f"{rel_pos} relative-position tables and {len(missing) - rel_pos} pyramid/RPN/head tensors"


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> None:
    config = resolve_config(args.config)
    keys = [_override_key(o) for o in args.overrides]
    if args.json and not args.dry_run:
        raise DetectError("--json prints the plan of --dry-run: add --dry-run")
    if args.batch_size is not None and BATCH_KEY in keys:
        raise DetectError(f"--batch-size and {BATCH_KEY}: give the batch once (--batch-size also scales the lr and "
                          "the schedule)")
    launch = require("detectron2.engine", "lsmae detect").launch
    from omegaconf import OmegaConf

    from . import vitdet_paths  # noqa: F401  (lsmae:// in train.init_checkpoint, whatever the config imports)

    plan, cfg, init = resolve_plan(args, config, convert=not args.dry_run and INIT_KEY not in keys)
    cpu = is_cpu(cfg)
    num_gpus = gpus_per_machine(args, cpu)
    report = plan_report(plan, cfg, init.description, num_gpus * args.num_machines)
    if not args.eval_only:
        check_batch(report)
        check_schedule(cfg)
    if args.dry_run:
        print(json.dumps(report) if args.json else "\n".join(plan_lines(report)))
        return

    if init.report:
        print(init.report)
    net_size = OmegaConf.select(cfg, PRETRAIN_IMG_SIZE_KEY)
    print(f"source {init.description}: {init.grid_size}x{init.grid_size} pos_embed grid -> "
          f"{PRETRAIN_IMG_SIZE_KEY}={init.pretrain_img_size}"
          + ("" if net_size == init.pretrain_img_size else f" (overridden to {net_size})"))
    if not args.eval_only:
        print("\n".join(plan_lines(report)))

    if cpu:
        print(f"note: train.device=cpu (AMP off): CPU runs are for testing only ({num_gpus * args.num_machines} "
              "process(es), gloo)")
    elif not torch.cuda.is_available():
        raise DetectError(f"train.device={cfg.train.device} but no GPU is visible; add train.device=cpu for a CPU "
                          "smoke run (testing only)")
    if not cpu and num_gpus > torch.cuda.device_count():
        raise DetectError(f"--num-gpus {num_gpus} but only {torch.cuda.device_count()} GPUs are visible")
    dist_url = args.dist_url
    if dist_url is None:
        if args.num_machines > 1:
            raise DetectError("--dist-url tcp://HOST:PORT (of machine 0) is needed with --num-machines > 1")
        dist_url = "auto"

    check_act_checkpoint(cfg)
    check_datasets(cfg, args.eval_only)

    output_dir = report["output_dir"]
    init_checkpoint = str(OmegaConf.select(cfg, INIT_KEY, default="") or "")
    resuming = args.resume and not args.eval_only and (Path(output_dir) / "last_checkpoint").is_file()
    if resuming:
        print(f"resuming from the last checkpoint in {output_dir} (the load contract applies to initialisation only)")
    else:
        shapes = backbone_init_shapes(init_checkpoint)
        if shapes is not None:
            missing = enforce_load_contract(cfg, shapes)
            print(f"load contract holds: {len(shapes)} checkpoint tensors load into backbone.net with their shapes; "
                  f"left to initialise: {_summarise_missing(missing)}")
            if args.eval_only:
                print(f"warning: evaluating a detector whose heads are untrained ({INIT_KEY} is a backbone "
                      f"initialisation); pass {INIT_KEY}=OUTPUT/model_final.pth", file=sys.stderr)
        elif not init_checkpoint:
            print(f"warning: {INIT_KEY} is empty: the model starts from random weights", file=sys.stderr)

    launch(_worker, num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=dist_url,
           args=(plan,))
    if args.eval_only:
        print(Path(output_dir) / "eval_results.json")
    else:
        print(Path(output_dir) / "model_final.pth")


# --------------------------------------------------------------------------- in each process
def _evaluate(cfg: Any, model: torch.nn.Module) -> dict[str, Any]:
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset, print_csv_format
    from detectron2.utils import comm

    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
        out = Path(cfg.train.output_dir) / "eval_results.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=float))
    return results


def _ddp(model: torch.nn.Module, cfg: Any, **options: Any) -> torch.nn.Module:
    """detectron2's ``create_ddp_model``; CPU processes (gloo, for testing) get neither ``device_ids``,
    which DDP refuses for a CPU model, nor fp16 gradient compression. GPUs: as the config says."""
    from detectron2.engine.defaults import create_ddp_model

    if is_cpu(cfg):
        options.update(device_ids=None, fp16_compression=False)
    return create_ddp_model(model, **options)


def _train(cfg: Any, plan: Plan) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
    from detectron2.utils import comm
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    model = instantiate(cfg.model)
    logging.getLogger("detectron2").info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    data = instantiate(cfg.dataloader.train)

    model = _ddp(model, cfg, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, data, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    # built in the main process only: JSONWriter opens metrics.json as it is made
    writers = [CommonMetricPrinter(cfg.train.max_iter),
               JSONWriter(os.path.join(cfg.train.output_dir, "metrics.json"))] if main else []
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: _evaluate(cfg, model)),
        hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=plan.resume)
    start_iter = trainer.iter + 1 if plan.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def _worker(plan: Plan) -> None:
    """The per-process main function ``detectron2.engine.launch`` runs (once per GPU)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.engine import default_setup

    from . import vitdet_paths  # noqa: F401  (registers lsmae:// in this process)

    cfg = build_config(plan)
    default_setup(cfg, argparse.Namespace(config_file=plan.config, eval_only=plan.eval_only, resume=plan.resume,
                                          opts=plan.overrides, command=" ".join(plan.argv)))
    if plan.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = _ddp(model, cfg)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        _evaluate(cfg, model)
    else:
        _train(cfg, plan)
