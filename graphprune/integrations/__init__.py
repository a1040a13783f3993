"""Adapters that run graphprune inside other toolchains (each imports its host lazily)."""
