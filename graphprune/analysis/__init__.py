"""Analyses of an IR model: cost (params/MACs) and channel dependencies."""
