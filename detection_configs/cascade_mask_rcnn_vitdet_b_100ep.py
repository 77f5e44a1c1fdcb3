"""ViTDet Cascade Mask R-CNN, ViT-B, COCO 100 epochs: mask_rcnn_vitdet_b_100ep (backbone, data, optimizer,
schedule, init checkpoint) with three class-agnostic box stages (IoU 0.5/0.6/0.7), imported from it as
detectron2's own ViTDet cascade configs import their Mask R-CNN siblings.
"""
from .common import cascade_mask_rcnn
from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model = cascade_mask_rcnn(model.backbone)
