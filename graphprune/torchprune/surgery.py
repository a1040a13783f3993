"""Applying a plan to a module's state: slicing, masking, and the layer attributes.

The plan names tensors by their ONNX initializer name, which the torch frontend makes
equal to the parameter/buffer's fully qualified name, so a plan is applied to a module by
name alone. A parameter shared by several modules (tied weights) is one initializer, so
it is sliced once and every owner gets the same new Parameter.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from graphprune.errors import PlanError
from graphprune.plan import Plan

log = logging.getLogger(__name__)


def removals(plan: Plan) -> dict[str, dict[int, np.ndarray]]:
    """tensor name -> axis -> removed indices."""
    out: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for t in plan.tensors:
        if t["removed"]:
            out[t["name"]][int(t["axis"])] = np.asarray(sorted(set(t["removed"])), dtype=np.int64)
    return dict(out)


def _owners(module) -> dict[int, list[tuple[object, str, str]]]:
    """id(tensor) -> every (owning module, attribute, kind) holding it, so tied tensors
    are replaced everywhere at once."""
    owners: dict[int, list] = defaultdict(list)
    for _, m in module.named_modules(remove_duplicate=False):
        for attr, p in m._parameters.items():
            if p is not None:
                owners[id(p)].append((m, attr, "parameter"))
        for attr, b in m._buffers.items():
            if b is not None:
                owners[id(b)].append((m, attr, "buffer"))
    return owners


def _state_tensor(module, name: str):
    *path, attr = name.split(".")
    owner = module
    try:
        for part in path:
            owner = getattr(owner, part)
    except AttributeError:
        return None
    t = owner._parameters.get(attr) if attr in getattr(owner, "_parameters", {}) else \
        getattr(owner, "_buffers", {}).get(attr)
    return t


def _check_names(module, rem: dict) -> None:
    missing = [n for n in rem if _state_tensor(module, n) is None]
    if missing:
        raise PlanError(
            f"plan slices {', '.join(missing[:3])}, which {'is' if len(missing) == 1 else 'are'} not a parameter "
            f"or buffer of {type(module).__name__}",
            hint="constants created inside forward() cannot be pruned on the module; make them buffers")


def slice_state(module, plan: Plan) -> None:
    """Replace every tensor the plan slices by its kept part (new nn.Parameter objects that
    keep requires_grad, so an optimizer must be created after pruning)."""
    import torch

    rem = removals(plan)
    _check_names(module, rem)
    owners = _owners(module)
    for name, axes in rem.items():
        t = _state_tensor(module, name)
        new = t.detach()
        for ax, idx in axes.items():
            if ax >= new.dim() or (len(idx) and idx.max() >= new.shape[ax]):
                raise PlanError(f"plan removes indices beyond {name} axis {ax} (shape {tuple(t.shape)})")
            keep = np.setdiff1d(np.arange(new.shape[ax]), idx)
            new = new.index_select(ax, torch.as_tensor(keep, device=new.device))
        new = new.clone().contiguous()
        if isinstance(t, torch.nn.Parameter):
            new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
        for m, attr, kind in owners[id(t)]:
            (m._parameters if kind == "parameter" else m._buffers)[attr] = new


def mask_state(module, plan: Plan) -> None:
    """Zero the plan's slices in place: the masked original, torch side."""
    import torch

    rem = removals(plan)
    _check_names(module, rem)
    with torch.no_grad():
        for name, axes in rem.items():
            t = _state_tensor(module, name)
            for ax, idx in axes.items():
                t.index_fill_(ax, torch.as_tensor(idx, device=t.device), 0)


# ---- layer attributes -------------------------------------------------------------------

def _onnx_consumer(pruned: ir.Model | None, tensor_name: str, op_types: tuple[str, ...]):
    if pruned is None:
        return None
    v = pruned.graph.initializers.get(tensor_name)
    if v is None:
        return None
    for use in v.uses():
        if use.node.op_type in op_types:
            return use.node
    return None


def _attention_rows(name: str, m, rem: dict) -> dict | None:
    """The q, k and v rows a plan removed from attention `m` (indices before pruning), from
    its packed in_proj_weight or its separate q/k/v weights; None without a plan."""
    prefix = f"{name}." if name else ""
    if m.in_proj_weight is not None:
        rows = rem.get(f"{prefix}in_proj_weight", {}).get(0, np.zeros(0, np.int64))
        e = m.embed_dim  # before adopt: q, k and v had embed_dim rows each
        return {p: rows[(rows >= k * e) & (rows < (k + 1) * e)] - k * e for k, p in enumerate("qkv")}
    return {p: rem.get(f"{prefix}{p}_proj_weight", {}).get(0, np.zeros(0, np.int64)) for p in "qkv"}


def update_attributes(module, pruned: ir.Model | None = None, plan: Plan | None = None) -> list[str]:
    """Make each standard layer's size attributes agree with its (sliced) tensors, so the
    module's own forward and its repr see the new widths. `pruned` (the pruned ONNX,
    initializers still named by FQN) gives what the tensors cannot: a conv's new `groups`;
    `plan` which rows of an attention's q/k/v went (whole heads, or the same positions of
    every head). Returns the names of layers that cannot be expressed with their own class
    after pruning (the caller then falls back to a graph module)."""
    import torch
    from torch import nn

    rem = removals(plan) if plan is not None else None
    inexpressible = []
    for name, m in module.named_modules():
        w = getattr(m, "weight", None)
        w = w if isinstance(w, torch.Tensor) else None
        if isinstance(m, nn.modules.conv._ConvNd):
            node = _onnx_consumer(pruned, f"{name}.weight" if name else "weight", ("Conv", "ConvTranspose"))
            if node is not None and "group" in node.attributes:
                m.groups = int(node.attributes["group"].value)
            if m.transposed:
                m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
            else:
                m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.running_mean if m.running_mean is not None else w
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.Bilinear):
            m.out_features, m.in1_features, m.in2_features = m.weight.shape
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif isinstance(m, nn.LayerNorm) and w is not None:
            m.normalized_shape = tuple(w.shape)
        elif isinstance(m, nn.GroupNorm) and w is not None:
            # whole groups are removed (the analysis couples a group's channels): the group
            # count shrinks with the channels; it was kept, and the forward normalised over
            # the wrong groups or raised
            m.num_groups = m.num_groups * w.shape[0] // m.num_channels
            m.num_channels = w.shape[0]
        elif isinstance(m, (nn.MultiheadAttention, nn.RNNBase)) and not _adopt(name, m, rem):
            inexpressible.append(name or type(m).__name__)
        elif isinstance(m, nn.PReLU) and w is not None:
            m.num_parameters = w.numel()  # (its repr showed the old count)
        elif _is_hf_conv1d(m, w):
            m.nf = w.shape[1]  # its forward shapes the output as (..., nf): a stale nf raised
    _classifier_width(module)
    return inexpressible


def _classifier_width(module) -> None:
    """A model that says its classifier's input width (timm's `num_features`, and
    `head_hidden_size` where it is the same number) and hands out its classifier
    (`get_classifier`): the width follows the classifier's pruned input, or
    `reset_classifier(n)` built a head for the old width (resnet10t: Linear(512, 10) reading
    359 features)."""
    from torch import nn

    get = getattr(module, "get_classifier", None)
    old = getattr(module, "num_features", None)
    if not callable(get) or not isinstance(old, int):
        return
    try:
        head = get()
    except Exception:  # noqa: BLE001 - a model's own accessor; nothing to update then
        return
    if isinstance(head, nn.Linear) and head.in_features != old:
        module.num_features = head.in_features
        if getattr(module, "head_hidden_size", None) == old:
            module.head_hidden_size = head.in_features


def _is_hf_conv1d(m, w) -> bool:
    """transformers' Conv1D (GPT-2's linear layers): weight [nx, nf], y = x @ weight + bias,
    viewed to (..., nf) by an `nf` attribute."""
    return type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int) and w is not None and w.dim() == 2


def _adopt(name: str, m, rem: dict | None) -> bool:
    """A layer whose sizes are more than its tensors' shapes: whether it can express them."""
    from torch import nn

    if isinstance(m, nn.RNNBase):
        return _adopt_recurrent(m)
    from graphprune.torchprune.mha import adopt

    return adopt(m, _attention_rows(name, m, rem) if rem is not None else None)


def _adopt_recurrent(m) -> bool:
    """An nn.LSTM/GRU/RNN's sizes from its sliced tensors: hidden units (rows of every gate,
    columns of weight_hh) and input features (columns of weight_ih_l0). The class has one
    hidden_size for all layers and directions: False when the result is not uniform."""
    dirs = 2 if m.bidirectional else 1
    sfx = [f"_l{k}{s}" for k in range(m.num_layers) for s in ([""] if dirs == 1 else ["", "_reverse"])]
    hidden = {getattr(m, "weight_hh" + s).shape[1] for s in sfx}
    inputs = {getattr(m, "weight_ih" + s).shape[1] for s in sfx if s.startswith("_l0")}
    later = {getattr(m, "weight_ih" + s).shape[1] for s in sfx if not s.startswith("_l0")}
    if m.proj_size or len(hidden) != 1 or len(inputs) != 1 or later - {next(iter(hidden)) * dirs}:
        return False
    m.hidden_size, m.input_size = hidden.pop(), inputs.pop()
    return True
