"""``python -m pretrain`` (also under torchrun): the pretraining engine."""
import sys

from .errors import LsmaeError
from .main_pretrain import main

try:
    main()
except LsmaeError as e:
    print(f"pretrain: error: {e}", file=sys.stderr)
    sys.exit(1)
