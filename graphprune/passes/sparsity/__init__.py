"""Sparsity passes: exact zeros inside the remaining weights, recorded per tensor in the
model metadata (`graphprune.sparsity_meta`). Formats and conventions: `masks`; layer
selection and the logical [out, in] view: `targets`; the pass: `sparsify`."""
from graphprune.passes.sparsity import sparsify  # noqa: F401  (registers the pass)
from graphprune.passes.sparsity.spec import CRITERIA, SparsitySpec, parse_spec

__all__ = ["CRITERIA", "SparsitySpec", "parse_spec"]
