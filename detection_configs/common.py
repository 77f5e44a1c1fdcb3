"""Pieces shared by the ViTDet configs of this folder (a Detectron2 LazyConfig file).

The COCO 100-epoch ViTDet recipe ("Exploring Plain Vision Transformer Backbones for Object
Detection", Li et al. 2022) for the long-seq MAE encoders: 1024px large-scale jitter, a plain
ViT with 14x14 window attention and four global blocks, a simple feature pyramid, LayerNorm in
the heads, AdamW with layer-wise lr decay, and 184375 iterations at 64 images per batch.

The configs import from here with ``from .common import ...``; ``LazyConfig.load`` resolves that
relative to this file (no package needed). Importing :mod:`bridges.detection.paths` registers the
``lsmae://ID`` scheme for ``train.init_checkpoint`` in every process that loads a config.
"""
from functools import partial

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling import SimpleFeaturePyramid, ViT
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import (
    CascadeROIHeads,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf
from torch import nn

import bridges.detection.paths  # noqa: F401  (registers lsmae:// on detectron2's PathManager)

IMAGE_SIZE = 1024
PRETRAIN_IMG_SIZE = 448  # the long-seq MAE checkpoints: 28x28 patches of 16 px (+ cls) in pos_embed
# ImageNet statistics on the 0-255 scale, RGB order (the MAE encoders were trained on RGB)
PIXEL_MEAN_RGB = [123.675, 116.28, 103.53]
PIXEL_STD_RGB = [58.395, 57.12, 57.375]

# 100 epochs of COCO train2017 (~118k images) at 64 images per iteration
MAX_ITER = 184375
LR_STEPS = (163889, 177546)  # x0.1 at each
WARMUP_ITERS = 250

LEVELS = ["p2", "p3", "p4", "p5", "p6"]
ROI_LEVELS = LEVELS[:4]
ROI_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)


def vit_backbone(embed_dim, depth, num_heads, drop_path_rate, global_blocks, image_size=IMAGE_SIZE,
                 patch_size=16, window_size=14):
    """A plain ViT (window attention except in ``global_blocks``, relative positions) under a
    simple feature pyramid with strides 4, 8, 16, 32 (+ max-pooled 64)."""
    return L(SimpleFeaturePyramid)(
        net=L(ViT)(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            window_size=window_size,
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            window_block_indexes=[i for i in range(depth) if i not in global_blocks],
            residual_block_indexes=[],
            use_rel_pos=True,
            pretrain_img_size=PRETRAIN_IMG_SIZE,
            pretrain_use_cls_token=True,
            out_feature="last_feat",
        ),
        in_feature="${.net.out_feature}",
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=L(LastLevelMaxPool)(),
        norm="LN",
        square_pad=image_size,
    )


def _box_head():
    # 4 convs + 1 fc, LayerNorm after each conv
    return L(FastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=256, height=7, width=7),
        conv_dims=[256, 256, 256, 256],
        fc_dims=[1024],
        conv_norm="LN",
    )


def mask_rcnn(backbone, num_classes=80):
    """Mask R-CNN on the simple feature pyramid: 2-conv RPN, 4conv1fc box head, 4-conv mask head."""
    return L(GeneralizedRCNN)(
        backbone=backbone,
        proposal_generator=L(RPN)(
            in_features=LEVELS,
            head=L(StandardRPNHead)(in_channels=256, num_anchors=3, conv_dims=[-1, -1]),
            anchor_generator=L(DefaultAnchorGenerator)(
                sizes=[[32], [64], [128], [256], [512]],
                aspect_ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64],
                offset=0.0,
            ),
            anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
            box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_topk=(2000, 1000),
            post_nms_topk=(1000, 1000),
            nms_thresh=0.7,
        ),
        roi_heads=L(StandardROIHeads)(
            num_classes=num_classes,
            batch_size_per_image=512,
            positive_fraction=0.25,
            proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
            box_in_features=ROI_LEVELS,
            box_pooler=L(ROIPooler)(output_size=7, scales=ROI_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
            box_head=_box_head(),
            box_predictor=L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=1024),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
                num_classes="${..num_classes}",
            ),
            mask_in_features=ROI_LEVELS,
            mask_pooler=L(ROIPooler)(output_size=14, scales=ROI_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
            mask_head=L(MaskRCNNConvUpsampleHead)(
                input_shape=ShapeSpec(channels=256, width=14, height=14),
                num_classes="${..num_classes}",
                conv_dims=[256, 256, 256, 256, 256],  # 4 convs, then the 2x deconv
                conv_norm="LN",
            ),
        ),
        pixel_mean=PIXEL_MEAN_RGB,
        pixel_std=PIXEL_STD_RGB,
        input_format="RGB",
    )


def cascade_mask_rcnn(backbone, num_classes=80):
    """Cascade Mask R-CNN: three class-agnostic box stages trained at IoU 0.5, 0.6 and 0.7."""
    model = mask_rcnn(backbone, num_classes)
    for key in ("box_head", "box_predictor", "proposal_matcher"):
        model.roi_heads.pop(key)
    model.roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[_box_head() for _ in range(3)],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=1024),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=weights),
                cls_agnostic_bbox_reg=True,
                num_classes="${...num_classes}",
            )
            for weights in ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15))
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False) for iou in (0.5, 0.6, 0.7)
        ],
    )
    return model


def coco_lsj_dataloader(image_size=IMAGE_SIZE, total_batch_size=64, num_workers=4,
                        train_names="coco_2017_train", test_names="coco_2017_val"):
    """COCO with large-scale jitter (flip, resize 0.1-2.0x of ``image_size``, crop without padding)."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train_names),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.RandomFlip)(horizontal=True),
                L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
                L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
            ],
            image_format="RGB",
            use_instance_mask=True,
            recompute_boxes=True,  # the crop cuts masks: boxes follow the cropped masks
        ),
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test_names, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=num_workers,
    )
    dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
    return dataloader


def vit_adamw(num_layers, lr_decay_rate, lr=1e-4, weight_decay=0.1):
    """AdamW with layer-wise lr decay over the ViT blocks; no weight decay on norms and pos_embed."""
    return L(torch.optim.AdamW)(
        params=L(get_default_optimizer_params)(
            # params.model is set to the built model before the optimizer is instantiated
            base_lr="${..lr}",
            weight_decay_norm=0.0,
            overrides={"pos_embed": {"weight_decay": 0.0}},
            lr_factor_func=partial(get_vit_lr_decay_rate, num_layers=num_layers, lr_decay_rate=lr_decay_rate),
        ),
        lr=lr,
        betas=(0.9, 0.999),
        weight_decay=weight_decay,
    )


def step_schedule(max_iter=MAX_ITER, milestones=LR_STEPS, warmup_iters=WARMUP_ITERS):
    """Linear warmup from 0.001x, then x0.1 at each milestone."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[10.0 ** -i for i in range(len(milestones) + 1)],  # 1, 0.1, 0.01
            milestones=list(milestones),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=0.001,
    )


def train_settings(init_checkpoint, max_iter=MAX_ITER):
    """What ``lsmae detect`` (and detectron2's tools/lazyconfig_train_net.py) read from ``train``."""
    return dict(
        output_dir="./output",
        init_checkpoint=init_checkpoint,
        max_iter=max_iter,
        amp=dict(enabled=True),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=True),
        checkpointer=dict(period=5000, max_to_keep=100),
        eval_period=5000,
        log_period=20,
        device="cuda",
    )
