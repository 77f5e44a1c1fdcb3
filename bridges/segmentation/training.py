"""Training and evaluation of ``lsmae segment``: a :class:`pretrain.engine.trainer.Task` counted in iterations.

Checkpoints: ``OUTPUT_DIR/last.pth`` (resume: weights, optimizer, position, best so far) every
``checkpoint_period`` iterations; ``OUTPUT_DIR/model_best`` and ``OUTPUT_DIR/model_final`` are
``save_pretrained`` folders (plain transformers weights, BatchNorm not Sync).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridges.segmentation.config import SegmentConfig, SegmentResult
from bridges.segmentation.data import MaskFolder, TrainingCrops, normalize_crops
from bridges.segmentation.data_spec import IGNORE_INDEX, LabelRule, SplitFolders
from bridges.segmentation.evaluation import Logits, SegMetrics, predict
from bridges.segmentation.model import convert_to_upernet, save_upernet
from bridges.segmentation.pictures import FOLDER as PICTURES
from bridges.segmentation.pictures import pictures_line, write_pictures
from bridges.segmentation.recipes import SegRecipe
from pretrain.engine.backends import TorchBackend, make_backend
from pretrain.engine.resume import resume_run, run_identity
from pretrain.engine.run_logging import setup_logging
from pretrain.engine.run_plan import precision_name, resolve_precision
from pretrain.engine.trainer import LoopConfig, Progress, Trainer
from pretrain.errors import CheckpointError
from pretrain.safe_load import load_checkpoint

CKPT_FORMAT = "lsmae segmentation"
log = logging.getLogger("bridges.segmentation")


def param_groups(model: Any, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Layer-wise lr decay over the ViT (embeddings = layer 0, block i = i + 1, pyramid and heads =
    last) and weight decay as BEiT's/mmsegmentation's LayerDecayOptimizerConstructor applies it: none on
    1-D tensors (norms, layer scales, BatchNorm) and biases only. Its ``pos_embed``/``cls_token`` name
    check never matches the ``backbone.``-prefixed names, so position embeddings, the cls token and
    the relative position tables are decayed there, and here."""
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
        no_decay = p.ndim == 1 or name.endswith(".bias")
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return list(groups.values())


def build_model(source: Any, recipe: SegRecipe, rule: LabelRule | None = None, *,
                from_scratch: bool = False) -> tuple[Any, str]:
    """The UperNet model from SOURCE (or, ``from_scratch``, its untrained architecture) and the conversion
    report; the label rule (class names, ignore value, reduction) goes into its config, for ``--eval-only``."""
    conversion = convert_to_upernet(source, img_size=recipe.crop_size, num_labels=recipe.num_labels,
                                    block_taps=list(recipe.out_indices), drop_path=recipe.drop_path,
                                    pretrained=not from_scratch, head_dropout=recipe.head_dropout)
    conversion.model.config.auxiliary_loss_weight = recipe.auxiliary_weight  # read by the loss at every step
    if rule is not None:
        store_rule(conversion.model.config, rule)
    return conversion.model, conversion.report.text()


def store_rule(config: Any, rule: LabelRule) -> None:
    """The labels' meaning in a model config: names as ``id2label``, the mask value ignored, the reduction."""
    config.id2label = dict(enumerate(rule.names()))
    config.label2id = {name: k for k, name in config.id2label.items()}
    config.lsmae_ignore_index, config.lsmae_reduce_zero_label = rule.ignore_index, rule.reduce_zero_label
    config.lsmae_class_names = list(rule.class_names)


def stored_rule(config: Any) -> LabelRule:
    """The label rule a model folder was trained with (ADE20K's for folders that predate the setting)."""
    return LabelRule(config.num_labels, getattr(config, "lsmae_ignore_index", IGNORE_INDEX),
                     getattr(config, "lsmae_reduce_zero_label", True), tuple(getattr(config, "lsmae_class_names", ())))


# --------------------------------------------------------------------------- evaluation
def evaluate(model: Any, dataset: MaskFolder, recipe: SegRecipe, backend: Any, dtype: Any,
             aug_test: bool = False) -> dict[str, Any]:
    """mIoU/mAcc/aAcc on the validation split; under DDP each image is measured by one process."""
    metrics = SegMetrics.empty(recipe.num_labels, backend.device)
    was_training = model.training
    model.eval()
    logits_of = logits_function(model, backend, dtype)
    with torch.no_grad():
        for i in backend.eval_sampler(dataset):
            image, label = dataset[i]
            pred = predict(logits_of, image.to(backend.device), recipe, label.shape, aug_test)
            metrics.add(pred, label.to(backend.device))
    model.train(was_training)
    total = backend.all_reduce_sum(metrics.as_tensor())
    return {**SegMetrics.from_tensor(total).summary(), "images": len(dataset)}


def logits_function(model: Any, backend: Any, dtype: Any) -> Logits:
    """The model's logits of a normalised batch, under the run's autocast."""
    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with backend.autocast(dtype):
            return model(x).logits

    return logits_of


def save_pictures(model: Any, dataset: MaskFolder, recipe: SegRecipe, backend: Any, dtype: Any, count: int,
                  folder: Path, aug_test: bool = False) -> list[Path]:
    """The first ``count`` validation pictures (:mod:`bridges.segmentation.pictures`) from ``model`` (the
    unwrapped one: no DDP collective runs, so the main process alone calls this) in eval mode, named by
    the classes of its config (``id2label``)."""
    was_training = model.training
    model.eval()
    try:
        names = [model.config.id2label[k] for k in range(model.config.num_labels)]
        return write_pictures(logits_function(model, backend, dtype), dataset, recipe, names, count, folder,
                              backend.device, aug_test)
    finally:
        model.train(was_training)


def class_table(result: dict[str, Any], rule: LabelRule) -> str:
    """IoU and accuracy per class, by name (NaN: the class is in neither the predictions nor the labels)."""
    width = max(len(name) for name in rule.names())
    return "\n".join(f"  {name:<{width}}  IoU {100 * iou:6.2f}  Acc {100 * acc:6.2f}"
                     for name, iou, acc in zip(rule.names(), result["IoU"], result["Acc"]))


class SegmentationTask:
    """UperNet training on padded uint8 crops (normalised on the device), evaluated every N iterations."""

    def __init__(self, model: nn.Module, wrapped: nn.Module, val_set: MaskFolder, recipe: SegRecipe,
                 backend: TorchBackend, dtype: torch.dtype | None, output_dir: Path, logger: logging.Logger) -> None:
        self.plain, self.model, self.val_set = model, wrapped, val_set
        self.recipe, self.backend, self.dtype = recipe, backend, dtype
        self.output_dir, self.log = output_dir, logger
        self.best = {"mIoU": -1.0, "step": -1}
        self.latest: dict[str, Any] = {}  # the last evaluation: at the end of training, the final model's
        self.evaluations = 0

    def forward_loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        images, labels, sizes = batch
        with self.backend.autocast(self.dtype):
            return self.model(normalize_crops(images, sizes), labels=labels).loss

    def evaluate(self, at: Progress, train_loss: float) -> dict[str, Any]:
        result = evaluate(self.plain, self.val_set, self.recipe, self.backend, self.dtype)
        self.latest = {**{k: result[k] for k in ("mIoU", "mAcc", "aAcc", "IoU", "Acc")}, "step": at.step}
        self.evaluations += 1
        improved = result["mIoU"] > self.best["mIoU"]
        if improved:
            self.best = {"mIoU": result["mIoU"], "step": at.step}
            if self.backend.is_main:
                self._save_folder("model_best", f"trained {at.step} iterations (best mIoU so far)")
            self.backend.barrier()
        self.log.info("iteration %d/%d: train loss %.4f, val mIoU %.2f mAcc %.2f aAcc %.2f (%d images); best mIoU "
                      "%.2f at iteration %d", at.step, self.recipe.max_iter, train_loss, 100 * result["mIoU"],
                      100 * result["mAcc"], 100 * result["aAcc"], result["images"], 100 * self.best["mIoU"],
                      self.best["step"])
        names = self.val_set.rule.names()
        return {"kind": "eval", "step": at.step, "train_loss": train_loss, **result, "best_mIoU": self.best["mIoU"],
                "class_IoU": dict(zip(names, result["IoU"]))}

    def checkpoint_path(self, at: Progress) -> Path:
        return self.output_dir / "last.pth"

    def checkpoint_extra(self, at: Progress) -> dict[str, Any]:
        return {"format": CKPT_FORMAT, "model": {k: v.detach().cpu() for k, v in self.plain.state_dict().items()},
                "best": dict(self.best), "latest": dict(self.latest), "evaluations": self.evaluations,
                "recipe": dataclasses.asdict(self.recipe), "source": self.plain.config.lsmae}

    def _save_folder(self, name: str, state: str) -> Path:
        import copy

        model = copy.deepcopy(self.plain).cpu()
        model.config.lsmae = {**model.config.lsmae, "recipe": dataclasses.asdict(self.recipe)}
        return save_upernet(model, self.output_dir / name, state)


def loop_config(recipe: SegRecipe, seed: int, print_freq: int) -> LoopConfig:
    """The recipe's schedule in iterations: linear warmup from ``lr * warmup_ratio``, then poly decay to
    ``min_lr`` (mmsegmentation's ``poly`` policy with ``warmup='linear'``), evaluation and checkpoints
    every period."""
    return LoopConfig(seed=seed, min_lr=recipe.min_lr, print_freq=print_freq, max_steps=recipe.max_iter,
                      warmup=recipe.warmup_iters, eval_every=recipe.eval_period, ckpt_every=recipe.checkpoint_period,
                      schedule="poly", poly_power=recipe.poly_power, warmup_lr_init=recipe.lr * recipe.warmup_ratio)


def _load_resumable(path: Path) -> dict[str, Any]:
    """A ``last.pth`` of ``lsmae segment``."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a segmentation checkpoint of lsmae segment")
    return ckpt


def _run_identity(config: SegmentConfig, recipe: SegRecipe, overrides: dict[str, Any], provenance: dict[str, Any],
                  splits: dict[str, SplitFolders], rule: LabelRule, images: int) -> dict[str, Any]:
    """This run's identity (:func:`pretrain.engine.resume.run_identity`): the encoder, the digest of its
    source, the recipe at this batch size and the KEY=VALUE overrides (not the run's length or cadence,
    ``max_iter``, ``eval_period``, ``checkpoint_period``: a rerun may extend it, by flag or override), the
    initialisation and seed, and the data: its folders, size and label rule. Not how the steps run
    (``--compile``, gradient checkpointing): a run resumes with or without them."""
    left_out = {"source", "max_iter", "eval_period", "checkpoint_period"}  # ``source``: the recipe's citation
    folders = {"path": str(Path(config.data_path).expanduser().resolve())} if config.data_path is not None else {
        name: [str(split.images.resolve()), str(split.masks.resolve())] for name, split in splits.items()}
    return run_identity(
        "segment", input_size=recipe.crop_size, source=provenance.get("source_sha256"),
        model={"arch": provenance["arch"]},
        recipe={**{k: v for k, v in dataclasses.asdict(recipe).items() if k not in left_out},
                "overrides": {k: v for k, v in overrides.items() if k not in left_out},
                "init": "scratch" if config.from_scratch else "pretrained", "seed": config.seed},
        data={**folders, "images": images, "ignore_index": rule.ignore_index,
              "reduce_zero_label": rule.reduce_zero_label, "class_names": list(rule.class_names)})


def train(config: SegmentConfig, recipe: SegRecipe, plan: dict[str, Any], splits: dict[str, SplitFolders],
          rule: LabelRule) -> SegmentResult:
    """Train (or resume) and evaluate. The result is the final model's evaluation (``mIoU``, as the reference
    reports it); the best of the periodic evaluations is returned beside it (``best_mIoU``, ``best_step``),
    with the folders ``final`` and ``best``."""
    backend = make_backend(config.device)
    try:
        return _train(config, recipe, plan, splits, rule, backend)
    finally:
        backend.shutdown()


def _train(config: SegmentConfig, recipe: SegRecipe, plan: dict[str, Any], splits: dict[str, SplitFolders],
           rule: LabelRule, backend: TorchBackend) -> SegmentResult:
    setup_logging(log, backend.is_main)
    output_dir = Path(config.output_dir)
    dtype = resolve_precision(config.precision, backend)
    per_device = plan["batch_per_device"]
    dataset = TrainingCrops(MaskFolder(splits["train"], rule), recipe)
    val_set = MaskFolder(splits["val"], rule)  # a missing validation split fails now, not after the first period
    torch.manual_seed(config.seed)
    model, report = build_model(config.source, recipe, rule, from_scratch=config.from_scratch)
    if config.grad_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(backend.device)
    synced = backend.sync_batchnorm(model, log)
    # --compile: the training steps only; evaluation slides windows of other sizes through the plain model
    wrapped = backend.wrap_model(torch.compile(synced) if config.compile else synced)
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay, recipe.layer_decay), lr=recipe.lr,
                                  betas=recipe.betas, **backend.optimizer_options())
    trainer = Trainer(backend, optimizer, dataset, batch=per_device, accum=1, num_workers=config.num_workers,
                      dtype=dtype, config=loop_config(recipe, config.seed, config.print_freq), output_dir=output_dir,
                      log=log,
                      stop_hint=f"Resume from {output_dir / 'last.pth'} (the default) after lowering the lr or "
                                "switching --precision",
                      identity=_run_identity(config, recipe, plan["overrides"], model.config.lsmae, splits, rule,
                                             len(dataset)))
    task = SegmentationTask(model, wrapped, val_set, recipe, backend, dtype, output_dir, log)
    resumed = resume_run(trainer, model, config.resume, [output_dir / "last.pth"], load=_load_resumable, log=log)
    resumed_from = None
    if resumed is not None:
        resumed_from, ckpt = resumed
        task.best, task.latest, task.evaluations = dict(ckpt["best"]), dict(ckpt["latest"]), ckpt["evaluations"]
        log.info("resumed from %s at iteration %d (best mIoU %.2f)", resumed_from, trainer.step,
                 100 * task.best["mIoU"])
    else:
        log.info("%s", report.replace("\n", "; "))
    log.info("segment %s: %d train images, %d devices x %d = %d per step, %d iterations, lr %.3g, precision %s%s",
             recipe.name, len(dataset), backend.world_size, per_device, recipe.batch_size, recipe.max_iter,
             recipe.lr, precision_name(dtype), " (torch.compile'd steps)" if config.compile else "")
    trainer.fit(task)
    pictures: list[Path] = []
    if backend.is_main:
        final = task._save_folder("model_final", f"trained {recipe.max_iter} iterations")
        print(report_lines(task.latest, task.best, task.evaluations, output_dir))
        print(class_table(task.latest, rule))
        print(final)
        pictures = save_pictures(model, val_set, recipe, backend, dtype, config.save_pictures, output_dir / PICTURES)
        if pictures:
            log.info(pictures_line(pictures, output_dir / PICTURES))
    backend.barrier()  # the other processes wait here while the main one saves and draws
    latest = task.latest
    return SegmentResult(latest["mIoU"], latest["mAcc"], latest["aAcc"], task.best["mIoU"], task.best["step"],
                         output_dir / "model_final", output_dir / "model_best", output_dir, tuple(pictures),
                         resumed_from)


def report_lines(final: dict[str, Any], best: dict[str, Any], evaluations: int, output_dir: Path) -> str:
    """The run's result (the final model, as the reference reports it) and, labelled, the best evaluation."""
    return (f"final mIoU {100 * final['mIoU']:.2f} mAcc {100 * final['mAcc']:.2f} aAcc {100 * final['aAcc']:.2f} "
            f"at iteration {final['step']}: the result ({output_dir / 'model_final'})\n"
            f"best of {evaluations} evaluations: mIoU {100 * best['mIoU']:.2f} at iteration {best['step']} "
            f"({output_dir / 'model_best'}; chosen on the validation set, so it reads higher than the recipe gives)")
