"""Tests of ``pretrain``: models and masking, the data, the engine (trainer, resume, backends, XLA), the pretraining
task, the bench, the errors."""
