"""timm: MAE -> timm ViT classifiers, their recipes, fine-tuning, linear probing and evaluation."""
