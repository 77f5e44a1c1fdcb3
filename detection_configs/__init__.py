"""Detectron2 LazyConfig files for ViTDet on the long-seq MAE checkpoints (shipped as package data).

They are loaded with ``detectron2.config.LazyConfig.load(path)`` (``lsmae detect --config NAME``
finds them here), not imported as modules; importing this package needs no detectron2.
"""
