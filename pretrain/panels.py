"""Labelled picture grids: rows of equal-sized panels under column titles, a note beside each row and
an optional colour legend below, on a white page.

Small pictures (the demo's 64-px photographs, a 32-px crop) are scaled up by a whole factor with
nearest-neighbour, so pixels stay square and sharp and a 64-px picture is as legible as a 448-px one.
Pillow only, with its bundled scalable font: the pictures need no plotting library.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

MIN_PANEL = 192  # px: the shorter side of a panel after scaling up
GAP = 6  # px between panels and around the page: the page's white shows between panels
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
FONT_SIZE = 14
SWATCH = 12  # px: a legend entry's colour square

Colour = tuple[int, int, int]


def scale_factor(width: int, height: int, minimum: int = MIN_PANEL) -> int:
    """The whole factor that brings the shorter side to at least ``minimum`` (1 for large pictures)."""
    return max(1, math.ceil(minimum / min(width, height)))


def scaled_up(image: Image.Image, factor: int) -> Image.Image:
    """``image`` enlarged ``factor`` times with nearest-neighbour (each pixel becomes a square)."""
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    return math.ceil(draw.textlength(text, font=font)) if text else 0


@dataclass(frozen=True)
class Layout:
    """Where a grid's parts lie on its page: panel ``(column, row)`` at :meth:`panel_box`."""

    panel: tuple[int, int]  # width, height of a panel after scaling up
    columns: int
    rows: int
    note_width: int
    legend_height: int
    title_height: int = FONT_SIZE + 2 * GAP

    def panel_box(self, column: int, row: int) -> tuple[int, int, int, int]:
        w, h = self.panel
        left, top = GAP + column * (w + GAP), self.title_height + row * (h + GAP)
        return left, top, left + w, top + h

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.panel
        width = GAP + self.columns * (w + GAP) + (self.note_width + GAP if self.note_width else 0)
        return width, self.title_height + self.rows * (h + GAP) + self.legend_height


def labelled_grid(rows: Sequence[Sequence[Image.Image]], titles: Sequence[str], notes: Sequence[str] = (),
                  legend: Sequence[tuple[Colour, str]] = (), minimum: int = MIN_PANEL) -> tuple[Image.Image, Layout]:
    """A page of ``rows`` (each as many panels as ``titles``, all of one size) scaled up to ``minimum``,
    with ``titles`` above the columns, ``notes[i]`` right of row ``i`` and ``legend`` (colour, name)
    entries below. Returns the page and its layout."""
    sizes = {p.size for row in rows for p in row}
    if len(sizes) != 1 or any(len(row) != len(titles) for row in rows):
        raise ValueError(f"a grid needs {len(titles)} panels of one size in every row, got sizes {sorted(sizes)}")
    (width, height), = sizes
    factor = scale_factor(width, height, minimum)
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    note_width = max((_text_width(measure, n, font) for n in notes), default=0)
    panel = (width * factor, height * factor)
    page_width = GAP + len(titles) * (panel[0] + GAP) + (note_width + GAP if note_width else 0)
    legend_lines = _legend_lines(measure, legend, font, page_width - 2 * GAP)
    layout = Layout(panel, len(titles), len(rows), note_width,
                    len(legend_lines) * (FONT_SIZE + GAP) + (GAP if legend_lines else 0))
    page = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(page)
    for c, title in enumerate(titles):
        left, _, right, _ = layout.panel_box(c, 0)
        draw.text(((left + right) / 2, GAP), title, fill=INK, font=font, anchor="mt")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            page.paste(scaled_up(picture.convert("RGB"), factor), layout.panel_box(c, r)[:2])
        if r < len(notes):
            _, top, right, bottom = layout.panel_box(len(titles) - 1, r)
            draw.text((right + GAP, (top + bottom) / 2), notes[r], fill=INK, font=font, anchor="lm")
    top = layout.title_height + len(rows) * (panel[1] + GAP)
    for line in legend_lines:
        x = GAP
        for colour, name in line:
            draw.rectangle((x, top + 1, x + SWATCH - 1, top + SWATCH), fill=colour, outline=INK)
            draw.text((x + SWATCH + 4, top), name, fill=INK, font=font, anchor="lt")
            x += _entry_width(measure, name, font)
        top += FONT_SIZE + GAP
    return page, layout


def _entry_width(draw: ImageDraw.ImageDraw, name: str, font) -> int:
    return SWATCH + 4 + _text_width(draw, name, font) + 3 * GAP


def _legend_lines(draw: ImageDraw.ImageDraw, legend: Sequence[tuple[Colour, str]], font,
                  width: int) -> list[list[tuple[Colour, str]]]:
    """The legend's entries wrapped into lines no wider than ``width`` (an entry too wide alone gets a line)."""
    lines: list[list[tuple[Colour, str]]] = []
    used = width
    for entry in legend:
        w = _entry_width(draw, entry[1], font)
        if used + w > width:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += w
    return lines
