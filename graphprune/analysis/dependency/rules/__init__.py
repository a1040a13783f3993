"""Per-op channel rules. Importing this package fills `registry.RULES`."""
from graphprune.analysis.dependency.rules import (  # noqa: F401  (registration side effects)
    attention,
    conv,
    einsum,
    elementwise,
    linear,
    moe,
    nbits,
    norm,
    ort_fused,
    pool,
    qlinear,
    quant,
    recurrent,
    reshape,
    shape_ops,
)
