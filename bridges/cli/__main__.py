"""``python -m bridges.cli COMMAND`` is ``lsmae COMMAND`` (as is ``python -m bridges COMMAND``)."""
import sys

from bridges.cli import main

sys.exit(main())
