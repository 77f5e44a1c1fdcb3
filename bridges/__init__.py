"""Bridges from MAE checkpoints to the frameworks users train in (timm classification, Detectron2
ViTDet detection, transformers export and UperNet segmentation), their launchers, and the ``lsmae`` CLI."""
