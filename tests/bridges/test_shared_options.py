"""The options the commands share (--precision, --device, --num-workers, --resume, --seed, --compile) are
declared once, in :mod:`pretrain.shared_options`, and mean the same in every command: the same choices,
default and help, with a command's own values (devices, workers, output folder) from its row of the table."""
from __future__ import annotations

import argparse
import ast
import os

import pytest

from bridges.cli import build_parser
from pretrain import main_pretrain
from pretrain.shared_options import TASKS
from tests.conftest import REPO

FLAGS = {"precision": "--precision", "device": "--device", "workers": "--num-workers", "resume": "--resume",
         "seed": "--seed", "compile": "--compile"}
ALL = set(FLAGS)
TAKES = {"pretrain": ALL, "finetune": ALL, "linprobe": ALL, "segment": ALL, "eval": {"precision", "device", "workers"},
         "detect": {"resume"}, "demo": {"device"}, "visualize": {"seed"}}
# how each shared help begins, whatever the command adds after it
SHARED_HELP = {
    "precision": "autocast dtype; auto = bf16 where supported (TPU, Ampere+ GPUs, AMX/AVX512-BF16 CPUs), else fp16 on "
                 "GPUs (with a grad scaler) and fp32 on CPUs",
    "device": "default: cuda when available, else cpu; ",
    "workers": "data loader processes per device (default: min(",
    "resume": "'auto' (the newest checkpoint of this run in the output folder, if there is one), a checkpoint path, "
              "or '' to start fresh (default auto)",
    "seed": "random seed (default 0)",
    "compile": "torch.compile for the training steps (compilation first: a minute or more before the first step, "
               "in every run; evaluation, where the command has one, runs uncompiled); a run resumes with or "
               "without it",
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _shared(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    actions = parser._option_string_actions
    return {name: actions[flag] for name, flag in FLAGS.items() if flag in actions}


def _help(action: argparse.Action) -> str:
    return action.help % {"default": action.default}


def test_each_command_takes_its_shared_options():
    found = {command: set(_shared(parser)) for command, parser in _commands().items()}
    assert {command: names for command, names in found.items() if names} == TAKES
    assert set(_shared(main_pretrain.build_parser())) == ALL  # python -m pretrain is lsmae pretrain


def test_every_shared_option_means_the_same_everywhere(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # workers default to min(the command's number, CPUs)
    for command, parser in _commands().items():
        for name, action in _shared(parser).items():
            if (command, name) == ("detect", "resume"):
                continue
            assert _help(action).startswith(SHARED_HELP[name]), (command, name)
            expected = {
                "precision": (("auto", "fp32", "bf16", "fp16"), "auto", None),
                "device": (("cuda", "cpu", "xla") if command == "pretrain" else ("cuda", "cpu"), None, None),
                "workers": (None, 8 if command == "segment" else 10, int),
                "resume": (None, "auto", None),
                "seed": (None, 0, int),
                "compile": (None, False, None),
            }[name]
            assert (action.choices and tuple(action.choices), action.default, action.type) == expected, (command, name)
    assert _help(_shared(_commands()["demo"])["device"]).endswith(". The fine-tuning steps' device: detection runs "
                                                                  "on the CPU")  # a command's own sentence
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert {command: _commands()[command].get_default("num_workers") for command in ("pretrain", "segment")} == {
        "pretrain": 3, "segment": 3}
    assert _commands()["finetune"].parse_args(["x", "--data-path", "d", "--device", "cpu"]).device == "cpu"
    with pytest.raises(SystemExit):  # only pretraining runs on XLA
        _commands()["finetune"].parse_args(["x", "--data-path", "d", "--device", "xla"])


def test_precision_choices_are_the_dtypes_the_engine_resolves():
    from pretrain.engine.run_plan import DTYPES

    action = _shared(_commands()["eval"])["precision"]
    assert tuple(action.choices) == ("auto", *DTYPES)


def test_detect_resume_is_detectron2s_switch():
    """``detect --resume`` takes no value (Detectron2's boolean), so an override after it stays an override."""
    args = _commands()["detect"].parse_args(["demo", "--config", "c", "--resume", "train.output_dir=out"])
    assert args.resume is True and args.overrides == ["train.output_dir=out"]
    assert _commands()["detect"].parse_args(["demo", "--config", "c"]).resume is False
    assert _help(_shared(_commands()["detect"])["resume"]).startswith("continue from the last checkpoint")


def test_output_folders_come_from_the_task_table(capsys):
    import json

    from bridges.cli import main

    commands = _commands()
    expected = {"pretrain": "runs/pretrain", "finetune": "runs/finetune", "linprobe": "runs/linprobe"}
    assert {command: commands[command].get_default("output_dir") for command in expected} == expected
    assert TASKS["segment"].output_dir == "runs/segment"
    # segment's default applies when it runs (--eval-only has another): the plan's pictures go under it
    assert main(["segment", "demo", "--dry-run", "--json", "--save-pictures", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["pictures"]["folder"] == "runs/segment/pictures"
    assert "(default runs/segment)" in commands["segment"]._option_string_actions["--output-dir"].help


def test_no_module_declares_a_shared_option_itself():
    """Outside :mod:`pretrain.shared_options` no ``add_argument`` names a shared flag (the benches keep their
    own option handling)."""
    declared = []
    for package in ("pretrain", "zoo", "bridges"):
        for path in (REPO / package).rglob("*.py"):
            if "bench" in path.relative_to(REPO).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                    flags = {a.value for a in node.args if isinstance(a, ast.Constant)} & set(FLAGS.values())
                    declared += [f"{path.relative_to(REPO)}: {flag}" for flag in flags]
    assert declared == []
