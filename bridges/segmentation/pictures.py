"""Segmentation pictures (``--save-pictures N``): for each of the first N validation images, one row
image | ground truth | prediction with a fixed colour per class and a legend of the classes in that
picture, and the prediction as a label PNG in the data's own mask values, to compare with the masks.

The prediction is the evaluation's (:func:`bridges.segmentation.evaluation.predict`: the test resize,
sliding windows, at the ground truth's resolution), so a picture shows what the metrics scored.
Colours: PASCAL VOC's colour map (the bits of an index interleaved into R, G, B), class k taking
entry k + 1, so black (entry 0) is left for ignored pixels; deterministic for any number of classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from bridges.segmentation.data import MaskFolder
from bridges.segmentation.data_spec import IGNORE_INDEX, LabelRule
from bridges.segmentation.evaluation import Logits, predict
from bridges.segmentation.recipes import SegRecipe
from pretrain.atomic import write_image
from pretrain.panels import Colour, labelled_grid

FOLDER = "pictures"  # under the run's output folder (--eval-only: under the model folder)
TITLES = ("image", "ground truth", "prediction")
IGNORED: Colour = (0, 0, 0)


def voc_colour(index: int) -> Colour:
    """Entry ``index`` (0..255) of PASCAL VOC's colour map: bits 0, 3, 6 of the index are red's bits 7, 6,
    5; bits 1, 4, 7 green's; bits 2, 5 blue's."""
    rgb = [0, 0, 0]
    for j in range(8):
        for channel in range(3):
            rgb[channel] |= ((index >> (3 * j + channel)) & 1) << (7 - j)
    return rgb[0], rgb[1], rgb[2]


def class_colour(k: int) -> Colour:
    """Class ``k``'s colour (VOC entry k + 1: never the black of ignored pixels)."""
    return voc_colour(k + 1)


def label_colours(num_labels: int) -> torch.Tensor:
    """uint8 [256, 3]: label (class index or :data:`IGNORE_INDEX`) -> colour; ignored and unused labels black."""
    return torch.tensor([class_colour(k) if k < num_labels else IGNORED for k in range(256)], dtype=torch.uint8)


def mask_palette(rule: LabelRule) -> list[int]:
    """A label PNG's palette in the data's mask values: each class's value (k + 1 with reduce-zero-label,
    else k) gets the class's colour, every other value black."""
    shift = 1 if rule.reduce_zero_label else 0
    colours = [class_colour(v - shift) if 0 <= v - shift < rule.num_labels else IGNORED for v in range(256)]
    return [c for colour in colours for c in colour]


def label_png(pred: torch.Tensor, rule: LabelRule) -> Image.Image:
    """The prediction [H, W] (class indices) as a palette PNG holding mask values, as the user's masks do."""
    values = pred + 1 if rule.reduce_zero_label else pred
    png = Image.frombytes("P", (pred.shape[1], pred.shape[0]), values.to(torch.uint8).numpy().tobytes())
    png.putpalette(mask_palette(rule))
    return png


def legend(label: torch.Tensor, pred: torch.Tensor, names: Sequence[str]) -> list[tuple[Colour, str]]:
    """The classes in the ground truth or the prediction, in class order, then "ignored" if the
    ground truth has ignored pixels."""
    present = torch.unique(torch.cat([label.flatten(), pred.flatten()])).tolist()
    entries = [(class_colour(k), names[k]) for k in present if k != IGNORE_INDEX]
    return entries + ([(IGNORED, "ignored")] if IGNORE_INDEX in present else [])


def picture(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, names: Sequence[str]) -> Image.Image:
    """One row image | ground truth | prediction (uint8 image [3, H, W], labels and prediction [H, W]),
    the pixel accuracy on the labelled pixels beside it, the legend below."""
    colours = label_colours(len(names))
    scored = label != IGNORE_INDEX
    accuracy = (pred[scored] == label[scored]).float().mean() if scored.any() else None
    row = [Image.fromarray(image.permute(1, 2, 0).numpy()),
           *(Image.fromarray(colours[x.long()].numpy()) for x in (label, pred))]
    note = f"pixel accuracy {accuracy:.0%}" if accuracy is not None else "no labelled pixels"
    page, _ = labelled_grid([row], TITLES, notes=[note], legend=legend(label, pred, names))
    return page


def write_pictures(logits_of: Logits, dataset: MaskFolder, recipe: SegRecipe, names: Sequence[str], count: int,
                   folder: Path, device: torch.device, aug_test: bool = False) -> list[Path]:
    """``folder/STEM.png`` (the picture) and ``folder/STEM_pred.png`` (the label PNG) for the first ``count``
    images of ``dataset``; returns the pictures' paths. No collective runs here: under several
    processes one process calls it, with the unwrapped model in eval mode."""
    if count <= 0:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            image, label = dataset[index]
            pred = predict(logits_of, image.to(device), recipe, label.shape, aug_test).cpu()
            stem = dataset.pairs[index][0].stem
            write_image(folder / f"{stem}.png", picture(image, label, pred, names))
            write_image(folder / f"{stem}_pred.png", label_png(pred, dataset.rule))
            written.append(folder / f"{stem}.png")
    return written


def pictures_line(pictures: Sequence[Path], folder: Path) -> str:
    """What a run says once its pictures are written."""
    return f"{len(pictures)} picture{'s' * (len(pictures) != 1)} in {folder}"
