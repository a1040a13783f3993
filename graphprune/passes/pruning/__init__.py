"""Structural pruning passes: channels (prune-channels) and residual blocks (prune-blocks)."""
