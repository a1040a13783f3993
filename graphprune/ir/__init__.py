"""graphprune's thin layer over `onnx_ir`: constants, verification, printing.

The in-memory model is an `onnx_ir.Model`; we do not wrap it. This package adds what
pruning needs on top: uniform access to constant tensors whether they are initializers
or `Constant` node outputs, a verifier, and a readable printer.
"""
from graphprune.ir.constants import const_array, is_constant, set_const_array, const_producer
from graphprune.ir.shapes import dims_of, rank_of
from graphprune.ir.verifier import Violation, find_violations, verify_model
from graphprune.ir.printer import format_graph, format_node

__all__ = [
    "const_array",
    "const_producer",
    "dims_of",
    "find_violations",
    "format_graph",
    "format_node",
    "is_constant",
    "rank_of",
    "set_const_array",
    "verify_model",
    "Violation",
]
