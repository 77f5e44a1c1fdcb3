"""UperNet on transformers' BEiT pieces: model, recipes, ADE20K data, evaluation and training."""
