"""timm: MAE -> timm ViT classifiers, their recipes, fine-tuning, linear probing and evaluation.

The Python API (importing the package costs no torch import until a function runs):
``finetune(source=..., data_path=...)``, ``linprobe(...)`` and ``evaluate(checkpoint=..., data_path=...)``, the
commands ``lsmae finetune``, ``linprobe`` and ``eval``, with their configs and results."""
from pretrain.lazy_exports import lazy_getattr

_EXPORTS = {
    "training": ("finetune", "linprobe"),
    "evaluation": ("evaluate",),
    "config": ("FinetuneConfig", "LinprobeConfig", "EvalConfig", "ClassificationResult", "BestEpoch", "EvalResult"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
