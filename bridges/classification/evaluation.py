"""Top-1/top-5 of a classifier: the measurement every epoch of a run ends with (:func:`accuracy`), and
``lsmae eval`` as a function (:func:`evaluate`), a run's checkpoint on ``DATA/val``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bridges.classification.config import EvalConfig, EvalResult
from bridges.classification.data import differing, eval_transform, image_folder, val_loader
from bridges.classification.model import create_from_checkpoint, load_classifier_checkpoint
from pretrain.configs import configure
from pretrain.engine.backends import TorchBackend, make_backend
from pretrain.engine.run_plan import resolve_precision
from pretrain.errors import DataError


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, backend: TorchBackend, dtype: torch.dtype | None,
             num_classes: int) -> dict[str, float]:
    """Top-1, top-5 (top-k with k = min(5, classes)) and mean cross-entropy over the whole val set,
    each image counted once across all devices."""
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    stats = torch.zeros(4, dtype=torch.float64, device=backend.device)  # correct1, correct5, loss sum, count
    for images, target in backend.device_loader(loader):
        with backend.autocast(dtype):
            logits = model(images)
        logits = logits.float()
        topk = logits.topk(k, dim=1).indices
        hit = topk == target[:, None]
        stats[0] += hit[:, 0].sum()
        stats[1] += hit.any(dim=1).sum()
        stats[2] += nn.functional.cross_entropy(logits, target, reduction="sum").double()
        stats[3] += target.numel()
    stats = backend.all_reduce_sum(stats)
    model.train(was_training)
    c1, c5, loss, n = stats.tolist()
    n = max(n, 1)
    return {"top1": c1 / n, "top5": c5 / n, "val_loss": loss / n, "images": int(n)}


def evaluate(config: EvalConfig | None = None, /, **options: Any) -> EvalResult:
    """``lsmae eval`` as a function: top-1/top-5 of a finetune/linprobe checkpoint on ``DATA/val`` (the classes
    must match its own; under torchrun each image is counted once), printed by the main process."""
    config = configure(EvalConfig, config, options)
    ckpt = load_classifier_checkpoint(config.checkpoint)
    data = Path(config.data_path).expanduser()
    val_set = image_folder(data / "val", eval_transform(ckpt["img_size"]))
    if ckpt.get("classes") and val_set.classes != ckpt["classes"]:
        raise DataError(f"{data / 'val'} has other classes than the checkpoint was trained on: only in "
                        f"the checkpoint: {differing(ckpt['classes'], val_set.classes)}; only in val: "
                        f"{differing(val_set.classes, ckpt['classes'])}")
    backend = make_backend(config.device)
    try:
        model = create_from_checkpoint(ckpt).to(backend.device)
        stats = accuracy(model, val_loader(val_set, backend, config.batch_size, config.num_workers), backend,
                         resolve_precision(config.precision, backend), ckpt["num_classes"])
    finally:
        backend.shutdown()
    result = EvalResult(stats["top1"], stats["top5"], stats["val_loss"], stats["images"], ckpt.get("epoch"),
                        ckpt.get("top1"), backend.is_main)
    if backend.is_main:
        print(f"top-1 {100 * result.top1:.2f}% top-5 {100 * result.top5:.2f}% on {result.images} images "
              f"(val loss {result.val_loss:.4f})")
    return result
