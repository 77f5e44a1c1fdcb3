"""Detectron2 ViTDet: MAE -> backbone conversion, the lsmae:// path handler, plans and launch.

The Python API of ``lsmae detect`` (importing the package costs no torch or detectron2 import until a function
runs): ``detect(source=..., config=...)`` trains or evaluates, ``detect_plan(...)`` is ``--dry-run``'s plan."""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {"launch": ("detect", "detect_plan"), "config": ("DetectConfig", "DetectResult")}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
