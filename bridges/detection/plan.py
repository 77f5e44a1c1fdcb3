"""The plan of ``lsmae detect``: the LazyConfig with the source's settings, ``--batch-size`` scaling,
``--train``/``--val`` sets and ``KEY=VALUE`` overrides (each checked against the config), what
``--dry-run`` prints, and the checks made before launching (batch, schedule, activation checkpointing,
classes, data sets, processes)."""
from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bridges.batch_scaling import scale_iterations
from bridges.detection.config import DetectConfig
from bridges.detection.data import EVALUATOR_KEY, NUM_CLASSES_KEY, CocoSet, data_lines, data_report, data_settings
from bridges.detection.errors import DetectError
from bridges.detection.pictures import pictures_lines, pictures_report
from bridges.detection.source import INIT_KEY, PRETRAIN_IMG_SIZE_KEY, Init, prepare_source
from pretrain.configs import command_line
from pretrain.errors import OptionError
from pretrain.optional import installed, missing

ACT_CHECKPOINT_KEY = "model.backbone.net.use_act_checkpoint"  # --grad-checkpointing
BATCH_KEY = "dataloader.train.total_batch_size"
# --batch-size N trains the recipe at N images per step, as detectron2's auto_scale_workers does for yacs configs
# (LazyConfigs have none): the lr times N / recipe batch (linear scaling), every length in iterations divided by it.
# The warmup is a fraction of max_iter (lr_multiplier.warmup_length): it follows max_iter unchanged.
LR_KEYS = ("optimizer.lr",)
ITERATION_KEYS = ("train.max_iter", "lr_multiplier.scheduler.num_updates", "lr_multiplier.scheduler.milestones",
                  "train.eval_period", "train.checkpointer.period")


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
    datasets: list[CocoSet] = field(default_factory=list)  # --train/--val: registered in each process
    pictures: int = 0  # --save-pictures: drawn after the (final) evaluation
    score_thresh: float = 0.5  # --score-thresh


_ABSENT = object()


def override_key(override: str) -> str:
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

    key = override_key(override)
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
        raise OptionError(f"{{batch_size}} {batch_size}: need at least one image per step")
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
def resolve_plan(options: DetectConfig, config: Path, convert: bool,
                 datasets: Sequence[CocoSet] = ()) -> tuple[Plan, Any, Init]:
    """The plan every process rebuilds the config from: the recipe at --batch-size, --grad-checkpointing, the
    ``datasets`` of --train/--val and what SOURCE dictates (fetched and converted only when ``convert``), then the
    overrides; and the config it builds."""
    from omegaconf import OmegaConf

    plan = Plan(str(config), {}, list(options.overrides), options.eval_only, options.resume,
                argv=["lsmae", *command_line("detect", options)], datasets=list(datasets),
                pictures=options.save_pictures, score_thresh=options.score_thresh)
    if options.batch_size is not None:
        plan.settings.update(batch_settings(build_config(Plan(plan.config, {}, [])), options.batch_size))
    if options.grad_checkpointing:
        plan.settings[ACT_CHECKPOINT_KEY] = True
    if datasets:
        plan.settings.update(data_settings(plan.datasets))
    # the output folder (where a SOURCE file's conversion goes) as the overrides will set it
    output_dir = str(OmegaConf.select(build_config(plan), "train.output_dir", default="./output"))
    init = prepare_source(options.source, output_dir, convert)
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
    report = {
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
    if plan.datasets:
        report.update(data_report(plan.datasets, max_iter, report["batch_size"]))
    report["pictures"] = pictures_report(plan.pictures, plan.score_thresh, report["output_dir"])
    return report


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
        *data_lines(report),
        *pictures_lines(report),
    ]


# --------------------------------------------------------------------------- checks before launching
def gpus_per_machine(options: DetectConfig, cpu: bool) -> int:
    """``num_gpus``, else the visible GPUs (one on CPU, and in a plan made where none is visible)."""
    num_gpus = options.num_gpus if options.num_gpus is not None else (1 if cpu else torch.cuda.device_count() or 1)
    if num_gpus < 1 or options.num_machines < 1 or not 0 <= options.machine_rank < options.num_machines:
        raise OptionError(f"{{num_gpus}} {num_gpus}, {{num_machines}} {options.num_machines}, {{machine_rank}} "
                          f"{options.machine_rank}: need num-gpus >= 1 and 0 <= machine-rank < num-machines")
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


def check_classes(cfg: Any, datasets: list[CocoSet]) -> None:
    """The config reads --train/--val and sizes every head to their classes: a config that writes a dataset name
    or a head's num_classes out (instead of interpolating it), or an override of one, would not follow them."""
    from omegaconf import OmegaConf

    settings = data_settings(datasets)
    heads = [k for k in _all_keys(_required(cfg, "model.roi_heads", "the heads --train/--val size"),
                                  "model.roi_heads.") if k.endswith(".num_classes")]
    wanted = {**settings, **{k: settings[NUM_CLASSES_KEY] for k in heads}, EVALUATOR_KEY: datasets[-1].name}
    for key, value in wanted.items():
        have = OmegaConf.select(cfg, key, default=None)
        if have != value:
            raise DetectError(f"{key} is {have!r} but --train/--val need {value!r}: interpolate it in the config "
                              f"(as the shipped configs do) or drop its override")


def check_datasets(cfg: Any, eval_only: bool) -> None:
    """Every dataset the run reads is registered and its image folder and annotation file exist."""
    import detectron2.data  # noqa: F401  (registers the builtin datasets under $DETECTRON2_DATASETS)
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from omegaconf import OmegaConf

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
