"""Every trainable parameter of each model a training command builds gets a gradient from one
training step: DDP runs without ``find_unused_parameters`` (no graph walk per step) and would stop
at the second step on a parameter left out. Models as the commands build them, from the embedded
``demo`` checkpoint; ViTDet where detectron2 is installed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pretrain
from bridges.classification import FinetuneConfig, LinprobeConfig
from bridges.classification import model as classification_model
from bridges.segmentation.recipes import get_recipe
from bridges.segmentation.training import build_model as build_upernet
from pretrain.models.masking import block_mask_indices
from tests.conftest import TINY_MODEL


def without_gradient(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_mae_pretraining_step():
    torch.manual_seed(0)
    model = pretrain.create_model(TINY_MODEL).train()
    ids_keep, ids_restore = block_mask_indices(2, model.patch_embed.grid_size[0], 0.75, 2)
    model(torch.randn(2, 3, 64, 64), ids_keep, ids_restore)[0].backward()
    assert without_gradient(model) == []


@pytest.mark.parametrize("mode", ["finetune", "linprobe"])
def test_timm_classifier_step(mode, lsmae_home):
    torch.manual_seed(0)
    config = FinetuneConfig(source="demo", data_path="unused", drop_path=0.1, input_size=32) if mode == "finetune" \
        else LinprobeConfig(source="demo", data_path="unused", input_size=32)
    model, _, _ = classification_model.build_model(config, num_classes=3)
    model.train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    assert without_gradient(model) == []
    assert sum(p.requires_grad for p in model.parameters()) == (2 if mode == "linprobe" else
                                                                 len(list(model.parameters())))


def test_upernet_segmentation_step(lsmae_home):
    torch.manual_seed(0)
    recipe = get_recipe("demo")
    model, _ = build_upernet("demo", recipe)
    model.train()
    size = recipe.crop_size
    labels = torch.randint(0, recipe.num_labels, (2, size, size))
    model(torch.randn(2, 3, size, size), labels=labels).loss.backward()
    assert without_gradient(model) == []
    assert not any(isinstance(m, nn.LayerNorm) and "layernorm" == name.rsplit(".", 1)[-1]
                   for name, m in model.beit.named_children())  # no final norm off the taps' path


def test_vitdet_detection_step(lsmae_home):
    pytest.importorskip("detectron2")
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from bridges.detection.configs import resolve_config

    torch.manual_seed(0)
    cfg = LazyConfig.load(str(resolve_config("mask_rcnn_vitdet_demo")))
    model = instantiate(cfg.model).train()
    size = cfg.model.backbone.square_pad

    def item() -> dict:
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0]]))
        inst.gt_classes = torch.tensor([1, 5])
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 8:70, 8:60] = masks[1, 40:110, 50:120] = True
        inst.gt_masks = BitMasks(masks)
        return {"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8).float(), "instances": inst,
                "height": size, "width": size}

    with EventStorage():
        sum(model([item(), item()]).values()).backward()
    assert without_gradient(model) == []
