"""``python -m pretrain`` (also under torchrun): the pretraining engine."""
import sys

from pretrain.main_pretrain import main

sys.exit(main())
