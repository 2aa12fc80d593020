"""Training: interaction data and graphs, sparse ops, the shared trainer and the tuner."""
