"""What every training command shares (plain PyTorch, torchrun DDP, torch_xla SPMD): the loop, the backends,
checkpoints and resume, run logging."""
