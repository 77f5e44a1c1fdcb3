"""Detectron2 ViTDet: MAE -> backbone conversion, the lsmae:// path handler, plans and launch."""
