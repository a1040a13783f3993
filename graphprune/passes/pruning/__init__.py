"""Structural pruning passes: channels (prune-channels), residual blocks (prune-blocks), whole
experts of MoE layers (prune-experts), the hidden size (slice-hidden), the vocabulary (slice-vocab)."""
