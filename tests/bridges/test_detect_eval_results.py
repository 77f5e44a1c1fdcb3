"""``lsmae detect`` writes ``eval_results.json`` through the one atomic writer: an evaluation whose write fails part-way
(a full disk) leaves the previous run's results whole. Detectron2's pieces are stood in for, so this runs without it."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from bridges.detection import launch

RESULTS = {"bbox": {"AP": 41.25, "AP50": np.float32(60.5)}, "segm": {"AP": 37.0}}  # detectron2 gives numpy floats too


@pytest.fixture
def fake_detectron2(monkeypatch):
    """Just what ``launch._evaluate`` imports: the evaluation returns ``RESULTS`` in the main process."""
    modules = {name: ModuleType(name) for name in ("detectron2", "detectron2.config", "detectron2.evaluation",
                                                    "detectron2.utils", "detectron2.utils.comm")}
    modules["detectron2.config"].instantiate = lambda node: node
    modules["detectron2.evaluation"].inference_on_dataset = lambda model, data, evaluator: RESULTS
    modules["detectron2.evaluation"].print_csv_format = lambda results: None
    modules["detectron2.utils.comm"].is_main_process = lambda: True
    modules["detectron2.utils"].comm = modules["detectron2.utils.comm"]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def _cfg(output_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(dataloader=SimpleNamespace(test="test", evaluator="evaluator"),
                           train=SimpleNamespace(output_dir=str(output_dir)))


def test_eval_results_are_written_whole_or_not_at_all(fake_detectron2, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert launch._evaluate(_cfg(out), model=None) == RESULTS
    written = (out / "eval_results.json").read_text()
    assert json.loads(written) == RESULTS and written == json.dumps(RESULTS, indent=1, default=float)

    real_write_text = Path.write_text

    def disk_full_half_way(path: Path, text: str, *args, **kwargs) -> int:
        real_write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full_half_way)
    with pytest.raises(OSError, match="No space left"):
        launch._evaluate(_cfg(out), model=None)
    monkeypatch.undo()
    assert (out / "eval_results.json").read_text() == written  # the previous results, whole
    assert sorted(p.name for p in out.iterdir()) == ["eval_results.json"]  # no temporary file left
