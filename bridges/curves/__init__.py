"""Training curves of run folders (``lsmae plot``): loss, learning rate and validation metrics against
the global step, several runs on the same axes.

:mod:`.records` reads the logs (standard library only), :mod:`.figure` draws them (matplotlib).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .records import Run, read_run, run_labels


@dataclass
class Plotted:
    """The PNG written and the runs it shows, each under its legend label."""

    path: Path
    runs: list[Run]
    labels: list[str]

    def lines(self) -> list[str]:
        return [str(self.path), *(run.summary(label) for run, label in zip(self.runs, self.labels))]


def plot_runs(run_dirs: list[str | Path], output: str | Path) -> Plotted:
    """Read each run folder's log, draw their curves on shared panels, write the PNG ``output``."""
    runs = [read_run(d) for d in run_dirs]
    labels = run_labels([run.path for run in runs])
    from .figure import draw, write_png  # matplotlib: only once the logs were found

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_png(draw(runs, labels), output)
    return Plotted(output, runs, labels)
