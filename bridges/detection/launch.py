"""``lsmae detect`` (:func:`detect`, :func:`detect_plan`): ViTDet (Cascade) Mask R-CNN on COCO, or on a
COCO-format set of your own (``--train``, ``--val``), from a long-seq MAE checkpoint, with Detectron2.

    lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --num-gpus 8 train.output_dir=out/vitl
    lsmae detect vit_large/coco/4000 --config mask_rcnn_vitdet_l_100ep --eval-only \\
        train.init_checkpoint=out/vitl/model_final.pth

SOURCE (a zoo id, ``demo``, an MAE checkpoint file or the output of ``lsmae convert --to vitdet``)
is fetched, verified and converted; ``train.init_checkpoint`` points at the conversion unless an
override sets it, and ``model.backbone.net.pretrain_img_size`` follows the checkpoint's grid.
Before anything is launched, the load contract is checked (:mod:`bridges.detection.source`) and the
plan printed (:mod:`bridges.detection.plan`; ``--dry-run [--json]`` stops there, before any fetch).
This module launches the processes through Detectron2's own ``launch`` and holds what each runs.

Detectron2 is imported only when the command runs (it is not on PyPI).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from bridges.detection.config import DetectConfig, DetectResult
from bridges.detection.configs import resolve_config
from bridges.detection.data import NAMES_KEYS, NUM_CLASSES_KEY, read_sets, register
from bridges.detection.errors import DetectError
from bridges.detection.pictures import check_pictures, check_visualizer, save_pictures
from bridges.detection.plan import (
    BATCH_KEY,
    Plan,
    build_config,
    check_act_checkpoint,
    check_batch,
    check_classes,
    check_datasets,
    check_schedule,
    gpus_per_machine,
    is_cpu,
    override_key,
    plan_lines,
    plan_report,
    resolve_plan,
)
from bridges.detection.source import (
    INIT_KEY,
    PRETRAIN_IMG_SIZE_KEY,
    backbone_init_shapes,
    enforce_load_contract,
    summarise_missing,
)
from pretrain.atomic import write_json
from pretrain.configs import configure
from pretrain.engine.resume import check_same_run, run_identity
from pretrain.errors import OptionError
from pretrain.optional import require

log = logging.getLogger("bridges.detection")
RUN_DATA = "lsmae_run.json"  # in the output folder: the data a run trains on, checked when it resumes


# --------------------------------------------------------------------------- the API
def _prepared(options: DetectConfig, fetch: bool) -> tuple[Plan, Any, Any, dict[str, Any], int]:
    """The plan, its config, SOURCE's initialisation, the plan's report and the processes per machine; SOURCE
    is fetched and converted only when ``fetch`` (not for a plan, nor when an override names the weights)."""
    config = resolve_config(options.config)
    keys = [override_key(o) for o in options.overrides]
    if options.batch_size is not None and BATCH_KEY in keys:
        raise OptionError(f"{{batch_size}} and {BATCH_KEY}: give the batch once ({{batch_size}} also scales the lr "
                          "and the schedule)")
    check_pictures(options.save_pictures, options.score_thresh)
    datasets = read_sets(options.train, options.val, options.eval_only)
    require("detectron2.engine", "lsmae detect")
    from bridges.detection import paths as vitdet_paths  # noqa: F401  (lsmae:// in train.init_checkpoint)

    plan, cfg, init = resolve_plan(options, config, fetch and INIT_KEY not in keys, datasets)
    if datasets:
        check_classes(cfg, datasets)
    num_gpus = gpus_per_machine(options, is_cpu(cfg))
    report = plan_report(plan, cfg, init.description, num_gpus * options.num_machines)
    if not options.eval_only:
        check_batch(report)
        check_schedule(cfg)
    return plan, cfg, init, report, num_gpus


def detect_plan(config: DetectConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """``lsmae detect --dry-run`` as a function: the plan (lr, schedule, devices, data, pictures) read from the
    final config, before anything is fetched or converted; :func:`bridges.detection.plan.plan_lines` shows it."""
    return _prepared(configure(DetectConfig, config, options), fetch=False)[3]


def detect(config: DetectConfig | None = None, /, **options: Any) -> DetectResult:
    """``lsmae detect`` as a function: check SOURCE's load contract, print the plan, then train (or evaluate,
    ``eval_only``) through Detectron2's ``launch``, one process per GPU (:class:`DetectConfig`)."""
    config = configure(DetectConfig, config, options)
    plan, cfg, init, report, num_gpus = _prepared(config, fetch=True)  # detectron2's absence first, in one line
    from omegaconf import OmegaConf

    if init.report:
        print(init.report)
    net_size = OmegaConf.select(cfg, PRETRAIN_IMG_SIZE_KEY)
    print(f"source {init.description}: {init.grid_size}x{init.grid_size} pos_embed grid -> "
          f"{PRETRAIN_IMG_SIZE_KEY}={init.pretrain_img_size}"
          + ("" if net_size == init.pretrain_img_size else f" (overridden to {net_size})"))
    if not config.eval_only:
        print("\n".join(plan_lines(report)))
    dist_url = _check_devices(config, cfg, num_gpus)
    check_act_checkpoint(cfg)
    check_visualizer(config.save_pictures)
    register(plan.datasets)
    check_datasets(cfg, config.eval_only)
    output_dir = Path(report["output_dir"])
    resuming = config.resume and not config.eval_only and (output_dir / "last_checkpoint").is_file()
    if not config.eval_only:
        record_or_check_data(output_dir, run_data(report, cfg), resuming)
    if resuming:
        print(f"resuming from the last checkpoint in {output_dir} (the load contract applies to initialisation only)")
    else:
        _check_initialisation(config, cfg)
    launch = require("detectron2.engine", "lsmae detect").launch
    launch(_worker, num_gpus, num_machines=config.num_machines, machine_rank=config.machine_rank,
           dist_url=dist_url, args=(plan,))
    print(output_dir / ("eval_results.json" if config.eval_only else "model_final.pth"))
    return _result(output_dir, config, resuming)


def _check_devices(config: DetectConfig, cfg: Any, num_gpus: int) -> str:
    """The devices the config asks for are there; the rendezvous address of the processes."""
    if is_cpu(cfg):
        print(f"note: train.device=cpu (AMP off): CPU runs are for testing only ({num_gpus * config.num_machines} "
              "process(es), gloo)")
    elif not torch.cuda.is_available():
        raise DetectError(f"train.device={cfg.train.device} but no GPU is visible; add train.device=cpu for a CPU "
                          "smoke run (testing only)")
    if not is_cpu(cfg) and num_gpus > torch.cuda.device_count():
        raise OptionError(f"{{num_gpus}} {num_gpus} but only {torch.cuda.device_count()} GPUs are visible")
    if config.dist_url is not None:
        return config.dist_url
    if config.num_machines > 1:
        raise OptionError("{dist_url} tcp://HOST:PORT (of machine 0) is needed with {num_machines} > 1")
    return "auto"


def _check_initialisation(config: DetectConfig, cfg: Any) -> None:
    """A fresh run's backbone checkpoint loads into the model without gaps (the load contract), or the run
    says that it starts from random weights."""
    from omegaconf import OmegaConf

    init_checkpoint = str(OmegaConf.select(cfg, INIT_KEY, default="") or "")
    shapes = backbone_init_shapes(init_checkpoint)
    if shapes is not None:
        missing = enforce_load_contract(cfg, shapes)
        print(f"load contract holds: {len(shapes)} checkpoint tensors load into backbone.net with their shapes; "
              f"left to initialise: {summarise_missing(missing)}")
        if config.eval_only:
            print(f"warning: evaluating a detector whose heads are untrained ({INIT_KEY} is a backbone "
                  f"initialisation); pass {INIT_KEY}=OUTPUT/model_final.pth", file=sys.stderr)
    elif not init_checkpoint:
        print(f"warning: {INIT_KEY} is empty: the model starts from random weights", file=sys.stderr)


def _result(output_dir: Path, config: DetectConfig, resumed: bool) -> DetectResult:
    """What the processes left in the output folder."""
    results = output_dir / "eval_results.json"
    pictures = tuple(sorted((output_dir / "pictures").glob("*.png"))) if config.save_pictures else ()
    return DetectResult(output_dir, None if config.eval_only else output_dir / "model_final.pth",
                        results if results.is_file() else None,
                        json.loads(results.read_text()) if results.is_file() else {}, pictures, resumed)


def run_data(report: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The data of this run: its own sets (absolute files, counts, classes) or the config's dataset names,
    and the size of the class heads."""
    from omegaconf import OmegaConf

    if "datasets" in report:
        sets = report["datasets"]
    else:
        sets = {option: OmegaConf.to_container(OmegaConf.create({"names": OmegaConf.select(cfg, key)}))["names"]
                for option, key in NAMES_KEYS.items()}
    return {"datasets": sets, "classes": report.get("classes"),
            "num_classes": OmegaConf.select(cfg, NUM_CLASSES_KEY, default=None)}


def record_or_check_data(output_dir: Path, data: dict[str, Any], resuming: bool) -> None:
    """A fresh run records its data in ``OUTPUT/lsmae_run.json``; a resumed one must train on the same
    (Detectron2's checkpointer would load a checkpoint of other classes with its heads skipped)."""
    identity = run_identity("detect", model={}, input_size=0, source=None, recipe={}, data=data)
    path = output_dir / RUN_DATA
    if resuming:
        check_same_run(path, json.loads(path.read_text()) if path.is_file() else None, identity, log)
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, identity, indent=1)


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
        write_json(out, results, indent=1, default=float)
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

    ddp = _ddp(model, cfg, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(ddp, data, optimizer)
    checkpointer = DetectionCheckpointer(ddp, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    # built in the main process only: JSONWriter opens metrics.json as it is made
    writers = [CommonMetricPrinter(cfg.train.max_iter),
               JSONWriter(os.path.join(cfg.train.output_dir, "metrics.json"))] if main else []
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: _evaluate(cfg, ddp)),
        hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=plan.resume)
    start_iter = trainer.iter + 1 if plan.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    _pictures(cfg, model, plan)


def _pictures(cfg: Any, model: torch.nn.Module, plan: Plan) -> None:
    """--save-pictures with ``model`` (not its DDP wrapper): drawn by the main process alone while the others
    wait at a barrier, so that no process leaves the process group before the main one is done."""
    from detectron2.utils import comm

    if not plan.pictures:
        return
    if comm.is_main_process():
        save_pictures(cfg, model, plan.pictures, plan.score_thresh)
    comm.synchronize()


def _worker(plan: Plan) -> None:
    """The per-process main function ``detectron2.engine.launch`` runs (once per GPU)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.engine import default_setup

    from bridges.detection import paths as vitdet_paths  # noqa: F401  (registers lsmae:// in this process)

    register(plan.datasets)  # a spawned worker inherits no registration from the launcher
    cfg = build_config(plan)
    default_setup(cfg, argparse.Namespace(config_file=plan.config, eval_only=plan.eval_only, resume=plan.resume,
                                          opts=plan.overrides, command=" ".join(plan.argv)))
    if plan.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        ddp = _ddp(model, cfg)
        DetectionCheckpointer(ddp).load(cfg.train.init_checkpoint)
        _evaluate(cfg, ddp)
        _pictures(cfg, model, plan)
    else:
        _train(cfg, plan)
