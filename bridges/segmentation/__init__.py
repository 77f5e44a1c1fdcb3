"""UperNet on transformers' BEiT pieces: model, recipes, ADE20K data, evaluation and training.

The Python API of ``lsmae segment`` (importing the package costs no torch import until a function runs):
``segment(source=..., data_path=...)`` trains, ``segment_plan(...)`` is ``--dry-run``'s plan and
``evaluate_segmentation(eval_only=MODEL_DIR, data_path=...)`` is ``--eval-only``, with their configs and results."""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {
    "command": ("segment", "segment_plan"),
    "eval_only": ("evaluate_segmentation",),
    "config": ("SegmentConfig", "SegmentEvalConfig", "SegmentResult", "SegmentEvaluation"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
