"""The one prune/compile sequence (plan → apply → oracle → repair → sparsify → gate →
write) that the CLI verbs, the Python API, config dry runs and the Olive pass all call.
Verbs parse their arguments into an options dataclass, call the workflow and print
its outcome; nothing else.

    options.py   PruneOptions: every option of the sequence, defaults written once
    state.py     PipelineState: typed fields over the passes' context
    pipeline.py  which passes run: pruning, then (after the oracle) repair and sparsity
    prune.py     run_prune → PruneOutcome: the sequence itself (dry run too)
    progress.py  Progress: what a run reports on the way (verbs print it)
    files.py     writing the model + plan pair
    compile.py   compile_model: run_prune, backend phases, choice, report

Names are imported on first use, so `graphprune --help` (which reads PruneOptions'
defaults) imports nothing heavy.
"""
from __future__ import annotations

import importlib

_NAMES = {"PruneOptions": "options", "PipelineState": "state", "PruneOutcome": "prune", "run_prune": "prune",
          "Progress": "progress", "CompileOptions": "compile", "compile_model": "compile"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
