"""The contract between kernel generators and the Relax rewriter (no TVM import here).

A generator looks at one layer (a constant weight with exact zeros and the static shapes
around it) and returns the kernels that can compute it. The rewriter measures each on the
target against the dense layer and keeps the fastest.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class KernelCandidate:
    """One way of computing one layer with a generated kernel.

    ``prim_func`` is a ``tvm.tir.PrimFunc`` whose parameters are, in order: the
    activation input, then one buffer per array in ``constants`` (packed nonzero values,
    index arrays, bias ...), then the output buffer of ``out_shape`` / ``out_dtype``.
    The rewriter passes ``constants`` as Relax constants, so the structure is fixed at
    compile time.
    """

    name: str                      # e.g. "bsr8x1", "csr", "nm2:4", "pattern4"
    prim_func: Any
    constants: list[np.ndarray]
    out_shape: tuple[int, ...]
    out_dtype: str = "float32"
    info: dict = dataclasses.field(default_factory=dict)  # nnz, block, sparsity, fused ops ...
