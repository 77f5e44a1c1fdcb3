"""lsmae bench finetune, segment, zoo and cli: the fine-tuning commands' steps and input pipelines,
fetch/verify/convert throughput, and look-up commands vs import torch."""
