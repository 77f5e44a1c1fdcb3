"""The figure of ``lsmae plot``: one panel per curve kind, one colour per run, written as a PNG.

matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pretrain.atomic import atomic_write
from pretrain.errors import LsmaeError
from pretrain.optional import require

from .records import LR, METRICS, TRAIN_LOSS, Run

require("matplotlib", "lsmae plot")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PANEL_INCHES = (4.8, 3.4)
DPI = 100
COLUMNS = 3


@dataclass(frozen=True)
class Panel:
    """A panel: the series it shows (a key of :attr:`Run.series`), its axis title, the display factor."""

    key: str
    title: str
    scale: float = 1.0


PANELS = (Panel(TRAIN_LOSS, "training loss"), Panel(LR, "learning rate"),
          *(Panel(m.key, m.title, m.scale) for m in METRICS))


def draw(runs: list[Run], labels: list[str]) -> Figure:
    """The panels some run has points for, each with a line per such run labelled ``labels[i]`` in
    run ``i``'s colour; the x axis is the global step (optimizer updates)."""
    panels = [p for p in PANELS if any(run.series.get(p.key) for run in runs)]
    if not panels:
        raise LsmaeError("nothing to plot: no run has logged a training record or an evaluation yet")
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    for i, panel in enumerate(panels):
        ax = figure.add_subplot(rows, columns, i + 1)
        for colour, (run, label) in enumerate(zip(runs, labels)):
            points = run.series.get(panel.key)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, [v * panel.scale for v in values], color=f"C{colour % 10}", label=label,
                        marker="o" if len(points) <= 30 else None, markersize=3)
        ax.set_title(panel.title)
        ax.set_xlabel("global step (optimizer updates)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def write_png(figure: Figure, path: Path) -> None:
    """The PNG at ``path``, whole or not at all (a hidden temporary file beside it, then a rename)."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
