"""The conversion targets as one table (:mod:`bridges.convert_targets`): the API, the command's choices and
its ``--help`` read it, its converters and savers are dotted names that resolve and take the row's
options, and the command line parses without importing torch."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import subprocess
import sys

import pytest

from bridges import convert_targets, operations
from bridges.cli.weights import add_convert_arguments
from bridges.errors import ConversionError
from tests.conftest import REPO


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsmae convert")
    add_convert_arguments(parser)
    return parser


@pytest.mark.parametrize("target", convert_targets.TARGETS, ids=lambda t: t.name)
def test_each_row_names_a_converter_and_saver_that_take_its_options(target):
    converter, saver = target.function("converter"), target.function("saver")
    inspect.signature(converter).bind("SOURCE", **{k: None for k in target.options}, **dict(target.fixed))
    inspect.signature(saver).bind("CONVERTED", "OUTPUT")
    assert set(target.options) <= set(convert_targets.OPTIONS) and (target.img_size is None) == (not target.img_size_is)


def test_the_command_line_offers_and_explains_the_table(capsys):
    parser = _parser()
    to = next(a for a in parser._actions if a.dest == "to")
    assert tuple(to.choices) == convert_targets.NAMES == ("timm", "vitdet", "upernet", "hf-mae", "hf-vit", "release")
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--to", "onnx", "-o", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for target in convert_targets.TARGETS:
        assert f"--to {target.name} ({target.output}): {target.summary}" in text
    assert "timm: fine-tuning resolution (default 224); upernet: crop size (default 512)" in text


def test_the_command_line_parses_without_torch():
    code = ("import sys; from bridges.cli import build_parser; "
            "build_parser().parse_args(['convert', 'demo', '--to', 'upernet', '-o', 'x']); "
            "print(sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_convert_reads_the_default_size_from_the_table(lsmae_home, tmp_path, monkeypatch):
    timm_row = convert_targets.convert_target("timm")
    monkeypatch.setattr(convert_targets, "TARGETS", tuple(dataclasses.replace(t, img_size=32) if t is timm_row else t
                                                          for t in convert_targets.TARGETS))
    result = operations.convert("demo", "timm", tmp_path / "w.safetensors")
    assert "img_size=32," in result.load_hint and "resampled" in result.report
    assert result.lines()[-1] == str(tmp_path / "w.safetensors") and result.path.is_file()


def test_an_unknown_target_is_one_line():
    with pytest.raises(ConversionError, match=r"^no conversion target 'onnx': choose one of timm, vitdet, upernet, "
                                              r"hf-mae, hf-vit, release$"):
        operations.convert("demo", "onnx", "x")


def test_the_upernet_hint_names_both_ways_to_load_and_both_work(lsmae_home, tmp_path):
    pytest.importorskip("transformers")
    import torch
    import transformers

    import bridges.segmentation.model

    folder = tmp_path / "upernet"
    result = operations.convert("demo", "upernet", folder, img_size=64, num_labels=4)
    assert result.lines()[-2:] == [result.load_hint, str(folder)]
    auto, ours = result.load_hint.removeprefix("load with: ").split(", or ")
    assert auto == f"transformers.AutoModelForSemanticSegmentation.from_pretrained('{folder}', trust_remote_code=True)"
    assert ours == f"bridges.segmentation.model.model_class().from_pretrained('{folder}')"
    models = [eval(expr, {"transformers": transformers, "bridges": bridges}).eval() for expr in (auto, ours)]
    assert [type(m).__name__ for m in models] == [bridges.segmentation.model.model_class().__name__] * 2
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(models[0](x).logits, models[1](x).logits) and models[0].config.num_labels == 4
