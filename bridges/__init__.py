"""Bridges from MAE checkpoints to downstream frameworks (timm, Detectron2) and the ``lsmae`` CLI."""
