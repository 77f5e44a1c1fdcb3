"""The README's Python API section: each command line beside its Python call. Both are run here, with the
library function that does the work replaced by a recorder of the config it receives: the command line
(``lsmae ...`` through the real parser and its CLI module) and the Python call must hand over equal
configs, and the Python block may read only fields its result object has."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shlex
from typing import Any

import pytest

from bridges.cli import main
from pretrain.configs import configure
from tests.conftest import REPO
from tests.test_readme import indented_commands

SECTION = re.search(r"^## Python API\n(.*?)^## ", (REPO / "README.md").read_text(), re.S | re.M).group(1)
PAIR = re.compile(r"^    (lsmae [^\n]+)\n\n```python\n(.*?)```", re.M | re.S)


def _api() -> dict[str, tuple[str, str, type, type | None]]:
    """Each function a README block calls: (its module, its name, its config, its result class)."""
    from bridges.classification import ClassificationResult, EvalConfig, EvalResult, FinetuneConfig, LinprobeConfig
    from bridges.demo import DemoConfig, DemoResult
    from bridges.detection import DetectConfig, DetectResult
    from bridges.operations import Conversion, ConvertConfig, ExportConfig, Exported, Reconstructions, VisualizeConfig
    from bridges.segmentation import SegmentConfig, SegmentEvalConfig, SegmentEvaluation, SegmentResult
    from pretrain import PretrainConfig, PretrainResult

    return {
        "pretrain": ("pretrain.pretraining", "pretrain", PretrainConfig, PretrainResult),
        "finetune": ("bridges.classification.training", "finetune", FinetuneConfig, ClassificationResult),
        "linprobe": ("bridges.classification.training", "linprobe", LinprobeConfig, ClassificationResult),
        "evaluate": ("bridges.classification.evaluation", "evaluate", EvalConfig, EvalResult),
        "segment": ("bridges.segmentation.command", "segment", SegmentConfig, SegmentResult),
        "segment_plan": ("bridges.segmentation.command", "segment_plan", SegmentConfig, None),
        "evaluate_segmentation": ("bridges.segmentation.eval_only", "evaluate_segmentation", SegmentEvalConfig,
                                  SegmentEvaluation),
        "detect": ("bridges.detection.launch", "detect", DetectConfig, DetectResult),
        "convert": ("bridges.operations", "convert", ConvertConfig, Conversion),
        "export": ("bridges.operations", "export", ExportConfig, Exported),
        "visualize": ("bridges.operations", "visualize", VisualizeConfig, Reconstructions),
        "demo": ("bridges.demo.chain", "demo", DemoConfig, DemoResult),
    }


class Called(Exception):
    """Raised by a recorder: the call is what is checked, not the run."""

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name)
        self.name, self.config = name, config


@pytest.fixture
def recorders(monkeypatch) -> dict[str, tuple[str, str, type, type | None]]:
    api = _api()
    for name, (module, attribute, config_class, _) in api.items():
        def record(config: Any = None, /, _name: str = name, _class: type = config_class, **options: Any):
            raise Called(_name, configure(_class, config, options))

        monkeypatch.setattr(importlib.import_module(module), attribute, record)
    return api


def _called(action) -> Called:
    with pytest.raises(Called) as caught:
        action()
    return caught.value


PAIRS = PAIR.findall(SECTION)


def test_the_section_pairs_every_command_with_its_python_call():
    commands = {shlex.split(line)[1] for line, _ in PAIRS}
    assert commands == {"pretrain", "finetune", "linprobe", "eval", "segment", "detect", "convert", "export",
                        "visualize", "demo"}
    assert len(PAIRS) == len(indented_commands(SECTION)) == 12  # segment: training, --dry-run, --eval-only


@pytest.mark.parametrize("line, code", PAIRS, ids=[shlex.split(line)[1] for line, _ in PAIRS])
def test_the_command_line_and_the_python_call_run_the_same_config(line, code, recorders, capsys):
    from_command_line = _called(lambda: main(shlex.split(line)[1:]))
    from_python = _called(lambda: exec(compile(code, "README.md", "exec"), {}))
    assert (from_python.name, from_python.config) == (from_command_line.name, from_command_line.config)
    result_class = recorders[from_python.name][3]
    result = _result_name(code)
    if result_class is not None and result is not None:  # what the block reads of the result exists
        fields = {f.name for f in dataclasses.fields(result_class)} | {
            name for name, value in vars(result_class).items() if isinstance(value, property)}
        read = set(re.findall(rf"\b{result}\.(\w+)", code))
        assert read <= fields, (read - fields, result_class)


def _result_name(code: str) -> str | None:
    """The variable the call's result is assigned to."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            return node.targets[0].id
    return None
