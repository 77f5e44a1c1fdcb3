"""The targets of ``lsmae convert`` as one table of data, read by :func:`bridges.operations.convert`, the
command's ``--to`` choices and its ``--help``.

Each row names its converter and saver by dotted path (``module:function``), imported only when a
conversion runs (timm's ``pretrained_cfg`` / ``checkpoint_filter_fn`` spirit: variants as data). So the
table is plain data: the command line reads it without importing torch, and the modules directly under
``bridges/`` reach the task packages only through these names.
"""
from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.errors import ConversionError

OPTIONS = ("img_size", "global_pool", "num_labels")  # the keyword options of convert() a converter may take


@dataclass(frozen=True)
class ConvertTarget:
    """One ``--to`` target. ``converter(source, **options)`` returns an object with a ``report`` (its
    ``text()`` is printed), ``saver(converted, output)`` writes it and returns the path; ``options`` are the
    keyword options of :data:`OPTIONS` it takes (plus ``fixed`` ones of its own), ``img_size`` the default
    input size (``img_size_is`` what the size means); ``load_hint`` is formatted with ``path`` and
    ``converted`` ('' when the report says enough)."""

    name: str
    summary: str  # what it writes, for --help
    output: str  # what -o names
    converter: str
    saver: str
    options: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    img_size: int | None = None
    img_size_is: str = ""
    load_hint: str = ""

    def function(self, role: str) -> Callable[..., Any]:
        """The converter or saver (``role``), imported now."""
        return pkgutil.resolve_name(getattr(self, role))

    def hint(self, path: Path, converted: Any) -> str:
        return self.load_hint.format(path=path, converted=converted)


TIMM_HINT = ("load with: timm.create_model('{converted.timm_model}', pretrained=True, img_size={converted.img_size}, "
             "global_pool='{converted.global_pool}', num_classes=N{converted.timm_kwargs_text}, "
             "pretrained_cfg_overlay=dict(file='{path}', num_classes=0))")
UPERNET_HINT = ("load with: transformers.AutoModelForSemanticSegmentation.from_pretrained('{path}', "
                "trust_remote_code=True), or bridges.segmentation.model.model_class().from_pretrained('{path}')")

TARGETS = (
    ConvertTarget("timm", "a timm ViT classifier's weights (safetensors with provenance metadata)",
                  "a .safetensors file", "bridges.classification.convert:convert_to_timm",
                  "bridges.classification.convert:save_safetensors", options=("img_size", "global_pool"),
                  img_size=224, img_size_is="fine-tuning resolution", load_hint=TIMM_HINT),
    ConvertTarget("vitdet", "Detectron2 ViTDet backbone weights (pos_embed kept whole: set "
                            "model.backbone.net.pretrain_img_size as printed; loads without matching heuristics)",
                  "a .pth file", "bridges.detection.convert:convert_to_vitdet",
                  "bridges.detection.convert:save_vitdet"),
    ConvertTarget("upernet", "an UperNet segmentation model as a transformers folder, heads initialised",
                  "a folder", "bridges.segmentation.model:convert_to_upernet",
                  "bridges.segmentation.model:save_conversion", options=("img_size", "num_labels"), img_size=512,
                  img_size_is="crop size", load_hint=UPERNET_HINT),
    ConvertTarget("hf-mae", "transformers ViTMAEForPreTraining, the decoder included", "a folder",
                  "bridges.hf.export:convert_to_hf", "bridges.hf.export:save_hf", fixed=(("target", "hf-mae"),),
                  load_hint="load with: transformers.ViTMAEForPreTraining.from_pretrained('{path}'); block masks: "
                            "model(pixel_values, noise=pretrain.models.masking.block_mask_noise(...)) "
                            "(see its README.md)"),
    ConvertTarget("hf-vit", "transformers ViTModel, the encoder", "a folder", "bridges.hf.export:convert_to_hf",
                  "bridges.hf.export:save_hf", fixed=(("target", "hf-vit"),),
                  load_hint="load with: transformers.ViTModel.from_pretrained('{path}', add_pooling_layer=False)"),
    ConvertTarget("release", "the release format, {'model': state_dict}", "a .pth file",
                  "bridges.operations:to_release", "bridges.operations:save_release"),
)
NAMES = tuple(target.name for target in TARGETS)


def convert_target(name: str) -> ConvertTarget:
    """The row of ``name``; any other name is a one-line error listing the targets."""
    for target in TARGETS:
        if target.name == name:
            return target
    raise ConversionError(f"no conversion target {name!r}: choose one of {', '.join(NAMES)}")
