"""``lsmae pretrain``: the options of the pretraining engine's own command line (``python -m pretrain``,
:mod:`pretrain.main_pretrain`) under ``lsmae``."""
from __future__ import annotations

import argparse

from pretrain import main_pretrain

run_pretrain = main_pretrain.run


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Long-sequence MAE pretraining (same as `python -m pretrain`)."
    p.epilog = main_pretrain.EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    main_pretrain.add_arguments(p)
