"""``python -m bridges COMMAND`` is ``lsmae COMMAND`` (same parser, same ``usage: lsmae COMMAND``): the
form to hand torchrun, ``torchrun --nproc_per_node 8 -m bridges segment ...``."""
import sys

from bridges.cli import main

sys.exit(main())
