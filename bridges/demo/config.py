"""``lsmae demo``'s options as the Python API's config, and what a run returns (standard library only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pretrain.configs import check_choices, shared

DEFAULT_WORKDIR = "lsmae-demo"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Where the demo writes, how long it fine-tunes, on which device, and whether it only writes its data."""

    workdir: str = DEFAULT_WORKDIR  # data, logs and artefacts (rewritten on each run)
    epochs: int = 4  # fine-tuning epochs, for the pretrained and the from-scratch model alike
    device: str | None = shared("demo", "device")  # the fine-tuning and segmentation steps' device
    data_only: bool = False  # only write the data sets into WORKDIR/data

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class DemoResult:
    """What a demo run made: the report page, the artefacts by what they are, each step's one-line result
    (by its number), the steps skipped (their ``[skip]`` lines), and the time it took."""

    report: Path | None  # None when only the data was written
    artefacts: dict[str, Path] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    seconds: float = 0.0
