"""ViTDet Mask R-CNN, ViT-L, COCO 100 epochs, from the long-seq MAE ViT-L pretrained on COCO (4000 ep).

Global attention in blocks 5, 11, 17, 23 (windows of 14 elsewhere), drop path 0.4, layer decay 0.8.
``lsmae detect SOURCE --config mask_rcnn_vitdet_l_100ep`` replaces the init checkpoint by SOURCE.
"""
from .common import coco_lsj_dataloader, mask_rcnn, step_schedule, train_settings, vit_adamw, vit_backbone

model = mask_rcnn(
    vit_backbone(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4, global_blocks=(5, 11, 17, 23))
)
dataloader = coco_lsj_dataloader()
optimizer = vit_adamw(num_layers=24, lr_decay_rate=0.8)
lr_multiplier = step_schedule()
train = train_settings(init_checkpoint="lsmae://vit_large/coco/4000")
