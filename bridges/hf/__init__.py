"""Hugging Face transformers: ViTMAE / ViT export and the helpers the UperNet bridge shares."""
