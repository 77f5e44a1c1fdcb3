"""lsmae bench pretrain: step time, memory and FLOP/s of pretraining (PyTorch, torch_xla)."""
