"""A checkpoint whose run identity has a field that this run's identity lacks belongs to another run
(:func:`pretrain.engine.resume.check_same_run`): refused like any other mismatch, whatever the field holds
(``None`` and an empty mapping included), on the toy run of :mod:`tests.pretrain.test_trainer`."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from pretrain.engine.resume import check_same_run, resume_run, run_identity
from pretrain.engine.trainer import Progress
from pretrain.errors import ResumeError
from pretrain.safe_load import load_checkpoint
from tests.pretrain.test_trainer import SAMPLES, TOY_IDENTITY, stopped_run, trainer_and_task

LOG = logging.getLogger("test_resume_identity")
WAY_OUT = "use another --output-dir, or --resume '' to start over there"


def test_a_checkpoint_with_a_field_this_run_lacks_is_refused_naming_it(tmp_path):
    newest_first = stopped_run(tmp_path)  # saved with TOY_IDENTITY: recipe {'lr': 0.05, 'seed': 7}
    trainer, task = trainer_and_task(tmp_path, 0)
    trainer.identity = run_identity("toy", model={"layers": [6, 16, 1]}, input_size=6, source=None,
                                    recipe={"lr": 0.05}, data={"images": SAMPLES})
    with pytest.raises(ResumeError) as e:
        resume_run(trainer, task.model, "auto", newest_first, load=load_checkpoint, log=LOG)
    assert str(e.value) == f"{newest_first[0]} belongs to another run: recipe.seed 7 -> (absent); {WAY_OUT}"
    assert trainer.progress == Progress(step=0, epoch=0, batch=0)  # nothing restored

    trainer.identity = TOY_IDENTITY  # the run's own identity resumes
    resume_run(trainer, task.model, "auto", newest_first, load=load_checkpoint, log=LOG)
    assert trainer.progress == Progress(step=6, epoch=1, batch=2)


@pytest.mark.parametrize("value", [None, {}, 0, ""], ids=["None", "empty mapping", "zero", "empty string"])
def test_a_field_only_one_identity_has_differs_whatever_it_holds(tmp_path, value):
    path = tmp_path / "last.pth"
    saved = {**TOY_IDENTITY, "recipe": {**TOY_IDENTITY["recipe"], "warmup": value}}
    torch.save({"run": saved}, path)
    with pytest.raises(ResumeError, match=re.escape(f"{path} belongs to another run: recipe.warmup {value!r} -> "
                                                    f"(absent); {WAY_OUT}")):
        check_same_run(path, load_checkpoint(path)["run"], TOY_IDENTITY, LOG)
    with pytest.raises(ResumeError, match=re.escape(f"{path} belongs to another run: recipe.warmup (absent) -> "
                                                    f"{value!r}; {WAY_OUT}")):
        check_same_run(path, TOY_IDENTITY, saved, LOG)  # and the other way round
    check_same_run(path, saved, saved, LOG)  # the same identity passes
