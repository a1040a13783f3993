"""Compatibility module: the oracle now lives in `graphprune.runtime`.

* `graphprune.runtime.oracle`: masking (`masked_original`, `masked_copy_on_disk`) and the
  comparison (`check`, `check_files`, `compare_outputs`, `OracleResult`, `OutputDiff`,
  `output_fidelity`).
* `graphprune.runtime.ort`: ONNX Runtime sessions and feeds (`session`, `input_session`,
  `random_inputs`, `representative_shapes`).

graphprune itself, its tests, benchmarks and samples import those modules; this one only
re-exports their public names for external code (plugins, scripts). Patch a function where
it is looked up now (e.g. `graphprune.runtime.oracle.random_inputs`), not here.
"""
from graphprune.runtime.oracle import (
    ATOL, OracleResult, OutputDiff, check, check_files, compare_outputs, masked_copy_on_disk, masked_original,
    output_fidelity)
from graphprune.runtime.ort import input_session, random_inputs, representative_shapes, session

__all__ = ["ATOL", "OracleResult", "OutputDiff", "check", "check_files", "compare_outputs", "input_session",
           "masked_copy_on_disk", "masked_original", "output_fidelity", "random_inputs", "representative_shapes",
           "session"]
