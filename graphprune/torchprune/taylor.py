"""First-order Taylor importance from the user's loss (Molchanov et al., 2019, group form).

Removing an atom zeroes every weight it holds, in every tensor of its group (the
producer's filters, the consumer's input slices, biases, norm parameters), so the
first-order change of the loss is the sum of w·dL/dw over all of them. We accumulate,
per batch, |Σ w·g| over each atom (signed sum inside, so a producer and a consumer that
pull in opposite directions can cancel) and sum over batches.

Gradients need the module, so the scores are computed by `prune_module` and reach the
CRITERIA table as data, under the name ``taylor_group`` (``taylor`` in the table is the
per-slot variant fed with a ``gradients`` dict; `prune_module(importance="taylor")`
means this group form). On the ONNX path it is a usage error with a hint; the other
criteria are untouched (they never see its keyword).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from graphprune.analysis.dependency.graph import DependencyGraph, Group
from graphprune.errors import UsageError


NAME = "taylor_group"


def taylor_criterion(dg: DependencyGraph, group: Group, taylor_group: dict | None = None, **_) -> np.ndarray:
    """CRITERIA entry: the precomputed per-atom scores of `group` (see `taylor_scores`)."""
    if not taylor_group or group.id not in taylor_group:
        raise UsageError(f"criterion {NAME!r} needs gradients of a loss",
                         hint="use graphprune.prune_module(module, inputs, importance='taylor', "
                              "loss_fn=..., data=...)")
    return taylor_group[group.id]


def _batches(data, max_batches: int | None):
    for k, batch in enumerate(data):
        if max_batches is not None and k >= max_batches:
            return
        yield batch


def taylor_scores(module, dg: DependencyGraph, loss_fn, data, *, groups=None,
                  max_batches: int | None = None) -> dict[int, np.ndarray]:
    """Per-atom Taylor scores of every group (default: the prunable ones).

    `data` yields `(inputs, target)` batches, `inputs` a tensor or a tuple of tensors;
    the loss is `loss_fn(module(*inputs), target)`. The module runs in inference mode
    (the function the plan preserves); `.grad` of its parameters is left untouched.
    """
    import torch

    from graphprune.frontends.torch import eval_mode

    if loss_fn is None or data is None:
        raise UsageError("importance='taylor' needs loss_fn and data")
    groups = dg.prunable_groups if groups is None else groups
    params = dict(module.named_parameters(remove_duplicate=False))
    # (tensor name, axis) slots each group reads, restricted to trainable parameters
    wanted: dict[str, set[int]] = defaultdict(set)
    for g in groups:
        for s in g.const_slots:
            if s.value in params and params[s.value].requires_grad:
                wanted[s.value].add(s.axis)
    if not wanted:
        raise UsageError("importance='taylor': no prunable group holds a trainable parameter")
    names = sorted(wanted)
    tensors = [params[n] for n in names]
    scores = {g.id: np.zeros(g.num_atoms) for g in groups}
    seen = 0
    with eval_mode(module):
        for batch in _batches(data, max_batches):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise UsageError("importance='taylor': data must yield (inputs, target) pairs")
            inputs, target = batch
            inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
            loss = loss_fn(module(*inputs), target)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            per_slot = {}
            for n, w, g in zip(names, tensors, grads, strict=True):
                if g is None:
                    continue
                wg = (w.detach() * g).double()
                for ax in wanted[n]:
                    dims = [d for d in range(wg.dim()) if d != ax]
                    per_slot[(n, ax)] = (wg.sum(dim=dims) if dims else wg).cpu().numpy()
            for grp in groups:
                acc = np.zeros(grp.num_atoms)
                for s in grp.const_slots:
                    v = per_slot.get((s.value, s.axis))
                    if v is not None:
                        acc += np.bincount(grp.labels[s], weights=v, minlength=grp.num_atoms)
                scores[grp.id] += np.abs(acc)
            seen += 1
    if not seen:
        raise UsageError("importance='taylor': data yielded no batch")
    return {gid: s / seen for gid, s in scores.items()}


def register() -> None:
    """Put the group Taylor criterion in the CRITERIA table (idempotent)."""
    from graphprune.importance import CRITERIA

    CRITERIA.setdefault(NAME, taylor_criterion)
