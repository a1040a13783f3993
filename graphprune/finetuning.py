"""Fine-tune a pruned module, optionally distilling from the dense one.

Pruning removes the least important channels but still moves the function; a few epochs
recover most of it. Knowledge distillation (Hinton et al., 2015) helps because the dense
model's soft outputs carry more information per sample than the labels, which matters
for the small data sets fine-tuning usually gets:

    loss = (1 - kd_alpha) * task_loss(student, y)
         + kd_alpha * T² * KL(softmax(teacher / T) || softmax(student / T))

(T² keeps the soft term's gradient scale independent of T.) The task loss defaults to
cross entropy; pass `loss_fn(outputs, target)` for anything else. Batches are
`(inputs, target)` pairs, `inputs` a tensor or a tuple of tensors, as for Taylor importance.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def distillation_loss(student, teacher, temperature: float):
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


def _check_numbers(epochs, lr, kd_alpha, kd_temperature, max_batches) -> None:
    """Bad numbers as usage errors in words (a float or a string of epochs was a TypeError
    deep in the loop; max_batches=0 trained nothing and reported a loss of 0.0)."""
    from graphprune.errors import UsageError

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not is_int(epochs) or epochs < 0:
        raise UsageError(f"finetune: epochs must be an integer >= 0, got {epochs!r}")
    if not is_num(lr) or lr <= 0:
        raise UsageError(f"finetune: lr must be a number > 0, got {lr!r}")
    if not is_num(kd_alpha) or not 0.0 <= kd_alpha <= 1.0 or not is_num(kd_temperature) or kd_temperature <= 0:
        raise UsageError(f"finetune: kd_alpha must be in [0, 1] and kd_temperature > 0, got {kd_alpha!r}, "
                         f"{kd_temperature!r}")
    if max_batches is not None and (not is_int(max_batches) or max_batches < 1):
        raise UsageError(f"finetune: max_batches must be an integer >= 1 (or None: every batch), got {max_batches!r}")


def _pair(batch):
    """A batch as (inputs, target); a loader of inputs alone is said in words."""
    from graphprune.errors import UsageError

    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    raise UsageError("finetune: each batch must be an (inputs, target) pair, got "
                     + (f"a sequence of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__),
                     hint="yield (inputs, target); inputs may be a tensor or a tuple of tensors")


def finetune(pruned, train_loader, epochs: int = 1, lr: float = 1e-3, *, teacher=None, kd_alpha: float = 0.5,
             kd_temperature: float = 4.0, loss_fn=None, weight_decay: float = 0.0, optimizer: str = "adam",
             max_batches: int | None = None, device=None) -> list[float]:
    """Train `pruned` in place for `epochs` over `train_loader`; returns the mean loss of
    each epoch. With `teacher` (e.g. the dense module), mixes in distillation with weight
    `kd_alpha` at temperature `kd_temperature`. The optimizer (Adam or SGD with momentum
    0.9) is created here, after pruning, so it holds the pruned module's new Parameters."""
    import torch
    import torch.nn.functional as F

    from graphprune.errors import UsageError

    from graphprune.torchprune import TorchPruneResult

    if isinstance(pruned, TorchPruneResult):  # prune_module's result: its module is what trains
        pruned = pruned.module
    if isinstance(teacher, TorchPruneResult):  # the same for the teacher
        teacher = teacher.module
    _check_numbers(epochs, lr, kd_alpha, kd_temperature, max_batches)
    loss_fn = loss_fn or F.cross_entropy
    params = [p for p in pruned.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise UsageError(f"finetune: unknown optimizer {optimizer!r} (adam or sgd)")
    if teacher is not None:
        teacher_modes = [(m, m.training) for m in teacher.modules()]
        teacher.eval()
    history, was_training = [], pruned.training
    try:
        for epoch in range(epochs):
            pruned.train()
            total, count = 0.0, 0
            for k, batch in enumerate(train_loader):
                if max_batches is not None and k >= max_batches:
                    break
                inputs, target = _pair(batch)
                inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
                if device is not None:
                    inputs = tuple(x.to(device) for x in inputs)
                    target = target.to(device)
                out = pruned(*inputs)
                loss = loss_fn(out, target)
                if teacher is not None and kd_alpha > 0:
                    with torch.no_grad():
                        soft = teacher(*inputs)
                    loss = (1 - kd_alpha) * loss + kd_alpha * distillation_loss(out, soft, kd_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(target)
                count += len(target)
            history.append(total / max(count, 1))
            log.info("finetune epoch %d/%d: loss %.4f", epoch + 1, epochs, history[-1])
    finally:
        if teacher is not None:
            for m, training in teacher_modes:
                m.training = training
        pruned.train(was_training)
    return history
