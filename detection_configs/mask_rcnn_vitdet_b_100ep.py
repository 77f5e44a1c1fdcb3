"""ViTDet Mask R-CNN, ViT-B, COCO 100 epochs, from the long-seq MAE ViT-B pretrained on COCO (4000 ep).

Global attention in blocks 2, 5, 8, 11 (windows of 14 elsewhere), drop path 0.1, layer decay 0.7.
``lsmae detect SOURCE --config mask_rcnn_vitdet_b_100ep`` replaces the init checkpoint by SOURCE.
"""
from .common import coco_lsj_dataloader, mask_rcnn, step_schedule, train_settings, vit_adamw, vit_backbone

model = mask_rcnn(vit_backbone(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1, global_blocks=(2, 5, 8, 11)))
dataloader = coco_lsj_dataloader()
optimizer = vit_adamw(num_layers=12, lr_decay_rate=0.7)
lr_multiplier = step_schedule()
train = train_settings(init_checkpoint="lsmae://vit_base/coco/4000")
