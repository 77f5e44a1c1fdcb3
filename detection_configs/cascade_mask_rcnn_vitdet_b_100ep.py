"""ViTDet Cascade Mask R-CNN, ViT-B, COCO 100 epochs, from the long-seq MAE ViT-B pretrained on COCO (4000 ep).

Three class-agnostic box stages (IoU 0.5/0.6/0.7); backbone and schedule as mask_rcnn_vitdet_b_100ep.
"""
from .common import cascade_mask_rcnn, coco_lsj_dataloader, step_schedule, train_settings, vit_adamw, vit_backbone

model = cascade_mask_rcnn(
    vit_backbone(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1, global_blocks=(2, 5, 8, 11))
)
dataloader = coco_lsj_dataloader()
optimizer = vit_adamw(num_layers=12, lr_decay_rate=0.7)
lr_multiplier = step_schedule()
train = train_settings(init_checkpoint="lsmae://vit_base/coco/4000")
