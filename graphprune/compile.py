"""`compile`: prune for a target, lower with a backend, check, and write a deployable
folder. The implementation is graphprune.workflow.compile (the one path, shared with the
CLI and the Python API); this module keeps the names importable from here."""
from __future__ import annotations

from graphprune.workflow.compile import CompileOptions, compile_model, default_out_dir, prune_options

__all__ = ["CompileOptions", "compile_model", "default_out_dir", "prune_options"]
