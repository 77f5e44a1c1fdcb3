"""ViTDet Mask R-CNN shrunk to the embedded ``demo`` checkpoint (micro ViT: width 96, depth 4, 3 heads,
patch 8, pretrained at 64 px), on CPU at 128 px: what ``lsmae demo`` trains for a few iterations.

Patch 8 puts the ViT's output at stride 8, so the simple feature pyramid is built from scales
2, 1, 0.5 (strides 4, 8, 16: p2-p4) without the max-pooled level, and the anchors and RoI poolers
follow those three levels. For testing the chain only: the numbers it reaches mean nothing.
"""
from .common import coco_lsj_dataloader, mask_rcnn, step_schedule, train_settings, vit_adamw, vit_backbone

IMAGE_SIZE = 128
LEVELS = ["p2", "p3", "p4"]
SCALES = [1.0 / 4, 1.0 / 8, 1.0 / 16]
MAX_ITER = 4

backbone = vit_backbone(embed_dim=96, depth=4, num_heads=3, drop_path_rate=0.0, global_blocks=(1, 3),
                        image_size=IMAGE_SIZE, patch_size=8, window_size=4)
backbone.net.pretrain_img_size = 64
backbone.scale_factors = (2.0, 1.0, 0.5)
backbone.top_block = None
model = mask_rcnn(backbone)
model.proposal_generator.in_features = LEVELS
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64]]
model.proposal_generator.anchor_generator.strides = [4, 8, 16]
model.proposal_generator.pre_nms_topk = (200, 100)
model.proposal_generator.post_nms_topk = (100, 50)
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_in_features = LEVELS
model.roi_heads.mask_in_features = LEVELS
model.roi_heads.box_pooler.scales = SCALES
model.roi_heads.mask_pooler.scales = SCALES
# a detector after a few iterations scores below the usual 0.05: keep every box so AP is a number
model.roi_heads.box_predictor.test_score_thresh = 0.0

dataloader = coco_lsj_dataloader(image_size=IMAGE_SIZE, total_batch_size=2, num_workers=0)
optimizer = vit_adamw(num_layers=4, lr_decay_rate=0.7)
lr_multiplier = step_schedule(max_iter=MAX_ITER, milestones=(3,), warmup_iters=1)
train = train_settings(init_checkpoint="lsmae://demo", max_iter=MAX_ITER)
train.update(device="cpu", amp=dict(enabled=False), eval_period=MAX_ITER, log_period=1)
