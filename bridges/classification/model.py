"""The classifier: the timm ViT built from SOURCE for fine-tuning or linear probing (BatchNorm1d +
linear head, encoder frozen), its optimizer (AdamW with layer decay, or LARS), and its checkpoints
(``best.pth``/``last.pth`` hold a plain timm state dict and what rebuilds the model)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from timm.optim import Lars, create_optimizer_v2
from torch import nn

from bridges.classification.config import ClassifierConfig
from bridges.classification.data import eval_crop_pct
from pretrain.engine.backends import TorchBackend
from pretrain.errors import CheckpointError
from pretrain.safe_load import load_checkpoint

log = logging.getLogger("bridges.classification")

CKPT_FORMAT = "lsmae classifier"
LINPROBE_HEAD_INIT_STD = 0.01  # main_linprobe.py


# --------------------------------------------------------------------------- model
def fold_probe_head(state: dict[str, torch.Tensor], eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """``head = Sequential(BatchNorm1d(affine=False), Linear)`` -> one plain ``head`` Linear (exact in eval mode)."""
    out = {k: v for k, v in state.items() if not k.startswith("head.")}
    mean, var = state["head.0.running_mean"].double(), state["head.0.running_var"].double()
    weight, bias = state["head.1.weight"].double(), state["head.1.bias"].double()
    inv_std = (var + eps).rsqrt()
    out["head.weight"] = (weight * inv_std).to(state["head.1.weight"].dtype)
    out["head.bias"] = (bias - weight @ (mean * inv_std)).to(state["head.1.bias"].dtype)
    return out


def build_model(config: ClassifierConfig, num_classes: int) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The timm classifier from the source, and the checkpoint metadata that rebuilds it."""
    mode = config.mode
    from bridges.classification.convert import create_timm_model

    global_pool = config.global_pool if mode == "finetune" else "token"
    drop_path = config.drop_path if mode == "finetune" else 0.0
    scratch = mode == "finetune" and config.from_scratch
    model, converted, missing = create_timm_model(config.source, num_classes, global_pool=global_pool,
                                                  img_size=config.input_size, pretrained=not scratch,
                                                  drop_path_rate=drop_path)
    name, arch_kwargs = converted.timm_model, converted.timm_kwargs
    if mode == "linprobe":
        nn.init.trunc_normal_(model.head.weight, std=LINPROBE_HEAD_INIT_STD)
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
        for n, p in model.named_parameters():
            p.requires_grad = n.startswith("head.")
        counts = [sum(p.numel() for p in model.parameters() if p.requires_grad is trained) for trained in (True, False)]
        log.info("linear probe: training %d head parameters, %d encoder parameters frozen", *counts)
    meta = {"format": CKPT_FORMAT, "mode": mode, "timm_model": name, "timm_kwargs": arch_kwargs,
            "num_classes": num_classes, "img_size": config.input_size, "global_pool": global_pool,
            "crop_pct": eval_crop_pct(config.input_size), "source": dict(converted.metadata),
            "init": "scratch" if scratch else "pretrained"}
    if scratch:
        log.info("%s with the architecture of %s, randomly initialised (--from-scratch)", name, config.source)
    else:
        log.info("%s from %s: %s; initialised here: %s", name, config.source,
                 converted.report.text().replace("\n", "; "), ", ".join(missing) or "nothing")
    return model, converted, meta


def plain_state_dict(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return fold_probe_head(state) if mode == "linprobe" else state


def make_optimizer(model: nn.Module, config: ClassifierConfig, backend: TorchBackend) -> torch.optim.Optimizer:
    if config.mode == "finetune":
        return create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay,
                                   layer_decay=config.layer_decay,
                                   **backend.optimizer_options())
    # MAE's LARS: trust ratio (and weight decay) on the weight, always; plain momentum SGD on the bias
    head = model.head[1]
    return Lars([{"params": [head.weight], "always_adapt": True},
                 {"params": [head.bias], "always_adapt": False, "weight_decay": 0.0}],
                lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, trust_coeff=0.001)


# --------------------------------------------------------------------------- checkpoints
def load_classifier_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ``lsmae finetune``/``lsmae linprobe`` (of a run folder: its ``best.pth``), read by
    the one safe loader; anything else is a :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pth"
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of `lsmae finetune`/`lsmae linprobe` (for an MAE "
                              "checkpoint, fine-tune it first)")
    return ckpt


def create_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """The plain timm model of a finetune/linprobe checkpoint, weights loaded strictly."""
    import timm

    model = timm.create_model(ckpt["timm_model"], pretrained=False, num_classes=ckpt["num_classes"],
                              global_pool=ckpt["global_pool"], img_size=ckpt["img_size"], **ckpt["timm_kwargs"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model
