"""ViTDet Cascade Mask R-CNN, ViT-L, COCO 100 epochs, from the long-seq MAE ViT-L pretrained on COCO (4000 ep).

Three class-agnostic box stages (IoU 0.5/0.6/0.7); backbone and schedule as mask_rcnn_vitdet_l_100ep.
"""
from .common import cascade_mask_rcnn, coco_lsj_dataloader, step_schedule, train_settings, vit_adamw, vit_backbone

model = cascade_mask_rcnn(
    vit_backbone(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4, global_blocks=(5, 11, 17, 23))
)
dataloader = coco_lsj_dataloader()
optimizer = vit_adamw(num_layers=24, lr_decay_rate=0.8)
lr_multiplier = step_schedule()
train = train_settings(init_checkpoint="lsmae://vit_large/coco/4000")
