"""``python -m pretrain.bench``: the pretraining benchmark (``lsmae bench pretrain``)."""
from pretrain.bench.runner import main
from pretrain.errors import report_errors

raise SystemExit(report_errors("lsmae bench pretrain", main))
