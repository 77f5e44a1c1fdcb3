"""Long-seq MAE architectures: the variant table, the MAE model, block masking, position embeddings, FLOP counts."""
