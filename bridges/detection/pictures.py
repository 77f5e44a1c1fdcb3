"""``lsmae detect --save-pictures N [--score-thresh S]``: the predictions on the first N validation images,
drawn by Detectron2's own ``Visualizer`` (boxes, masks, class names of the set's metadata), one PNG each
in ``OUTPUT/pictures``: to look at what a detector finds, which AP alone does not show. Images under
192 px are drawn larger by a whole factor (nearest), as every picture of this project is.

Drawn after the evaluation by the main process alone, with the unwrapped model (no collective: the other
processes wait at the barrier that follows in :mod:`bridges.detection.launch`). Each image goes through the
config's own test mapper, as the test loader feeds it, so the predictions come back at the image's size.
Standard library only, but :func:`save_pictures`.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.errors import OptionError
from pretrain.optional import installed, missing

if TYPE_CHECKING:
    import torch

PICTURES_DIR = "pictures"  # in train.output_dir


def check_pictures(count: int, score_thresh: float) -> None:
    if count < 0:
        raise OptionError(f"{{save_pictures}} {count}: the number of validation images to draw (0: none)")
    if not 0 <= score_thresh <= 1:
        raise OptionError(f"{{score_thresh}} {score_thresh:g}: a score between 0 and 1")


def check_visualizer(count: int) -> None:
    """Detectron2's Visualizer imports OpenCV, which detectron2 does not install: said before training, not after."""
    if count and not installed("cv2"):
        raise missing("cv2", "--save-pictures (Detectron2's Visualizer)")


def pictures_report(count: int, score_thresh: float, output_dir: str) -> dict[str, Any] | None:
    """The plan's ``pictures``: how many, from which score, where (None: no pictures)."""
    if not count:
        return None
    return {"images": count, "score_thresh": score_thresh, "dir": str(Path(output_dir) / PICTURES_DIR)}


def pictures_lines(report: dict[str, Any]) -> list[str]:
    pictures = report.get("pictures")
    if not pictures:
        return []
    return [f"  pictures: {pictures['images']} validation images with scores >= {pictures['score_thresh']:g} to "
            f"{pictures['dir']}"]


def save_pictures(cfg: Any, model: torch.nn.Module, count: int, score_thresh: float) -> None:
    """Draw ``model``'s predictions (unwrapped, not DDP) scoring at least ``score_thresh`` on the first ``count``
    images of the config's test set into ``OUTPUT/pictures/STEM.png``; call it in the main process only."""
    import torch
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.evaluation import inference_context
    from detectron2.utils.visualizer import Visualizer
    from omegaconf import OmegaConf
    from PIL import Image

    from pretrain.atomic import write_image
    from pretrain.panels import scale_factor

    names = OmegaConf.select(cfg, "dataloader.test.dataset.names")
    names = [names] if isinstance(names, str) else list(names)
    dicts = [d for name in names for d in DatasetCatalog.get(name)][:count]
    metadata = MetadataCatalog.get(names[0])
    mapper = instantiate(cfg.dataloader.test.mapper)
    folder = Path(cfg.train.output_dir) / PICTURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    nothing = f"nothing with score >= {score_thresh:g}"
    empty = []
    with inference_context(model), torch.no_grad():
        for d in dicts:
            instances = model([mapper(copy.deepcopy(d))])[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_thresh]
            image = read_image(d["file_name"], format="RGB")
            # a small image drawn larger (a whole factor, nearest), so its labels stay legible
            visualizer = Visualizer(image, metadata, scale=scale_factor(image.shape[1], image.shape[0]))
            path = folder / (Path(d["file_name"]).stem + ".png")
            if len(instances):
                picture = visualizer.draw_instance_predictions(instances)
            else:
                picture = visualizer.draw_text(nothing, (4, 4), horizontal_alignment="left")
                empty.append(path.name)
            write_image(path, Image.fromarray(picture.get_image()))

    logging.getLogger("detectron2").info(
        f"{len(dicts)} picture{'s' * (len(dicts) != 1)} (score >= {score_thresh:g}) in {folder}"
        + (f"; {nothing} in {', '.join(empty)}" if empty else ""))
