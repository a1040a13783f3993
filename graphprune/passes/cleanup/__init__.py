"""Cleanup passes run after rewrites (dead-code elimination)."""
