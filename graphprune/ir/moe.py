"""ONNX Runtime's mixture-of-experts op (com.microsoft MoE) as the rest of graphprune reads it:
which node is one, which inputs hold per-expert tensors (experts on axis 0), and its active
MACs. The channel rule is analysis/dependency/rules/moe.py; whole experts go by
passes/pruning/prune_experts.py."""
from __future__ import annotations

from typing import Sequence

import onnx_ir as ir

MS = "com.microsoft"
# fc1, fc1 bias, fc2, fc2 bias, fc3, fc3 bias: one slice per expert on axis 0
EXPERT_INPUTS = (2, 3, 4, 5, 6, 7)


def is_moe(node: ir.Node) -> bool:
    return node.op_type == "MoE" and node.domain == MS


def top_k(node: ir.Node) -> int:
    a = node.attributes.get("k")
    return 1 if a is None else int(a.value)


def expert_values(node: ir.Node) -> list[ir.Value]:
    return [node.inputs[i] for i in EXPERT_INPUTS if i < len(node.inputs) and node.inputs[i] is not None]


def active_macs(x: Sequence, fc1: Sequence, fc2: Sequence, fc3: Sequence | None, k: int) -> float:
    """Each token runs k experts, each one fc1 ([rows, H]), fc2 ([H, I]) and fc3 when gated:
    tokens x k x their sizes per expert (dims as numbers; symbolic ones count as 1)."""
    def size(d):
        n = 1
        for v in d:
            n *= v if isinstance(v, int) else 1
        return n

    per_expert = size(fc1[1:]) + size(fc2[1:]) + (size(fc3[1:]) if fc3 is not None else 0)
    return float(size(x[:-1]) * k * per_expert)
