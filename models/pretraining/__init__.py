"""The inter-content encoder (stage 1) and its pretraining."""
