"""Every converter is a function from an MAE state dict to a state dict plus a report: no source
resolution, no files read or written (those are the entry points' load and save steps)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from bridges.classification.convert import to_timm
from bridges.conversion import ConversionReport
from bridges.detection.convert import to_vitdet
from tests.conftest import perturbed_mae
from zoo.checkpoint import check_structure

pytestmark = pytest.mark.usefixtures("one_thread")


def _converters() -> list:
    converters = [(to_timm, {"img_size": 96}), (to_vitdet, {})]
    if importlib.util.find_spec("transformers") is None:
        return converters
    from bridges.hf.export import to_hf
    from bridges.segmentation.model import to_upernet

    return converters + [(to_upernet, {"img_size": 64, "num_labels": 4}), (to_hf, {"target": "hf-mae"}),
                         (to_hf, {"target": "hf-vit"})]


@pytest.mark.parametrize("convert, options", _converters(), ids=lambda c: getattr(c, "__name__", ""))
def test_converter_maps_a_state_dict_to_a_state_dict_and_a_report_without_files(
        convert, options, tmp_path, monkeypatch):
    sd = perturbed_mae(seed=21, img_size=64).state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: pytest.fail("a converter wrote a file"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a converter read a file"))

    out, report = convert(sd, check_structure(sd), **options)

    assert list(tmp_path.iterdir()) == []
    assert isinstance(report, ConversionReport) and report.text().splitlines() == report.lines()
    assert out and all(isinstance(v, torch.Tensor) for v in out.values())
    assert set(report.dropped) <= set(sd) and report.kept
    assert all(torch.equal(sd[k], v) for k, v in before.items())  # the source is left as it was
