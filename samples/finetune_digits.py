"""Prune a small CNN on scikit-learn's digits (8x8 images), then recover with distillation.

    python samples/finetune_digits.py [--ratio 0.6] [--importance taylor] [--epochs 12]

Trains the dense CNN for a few epochs, prunes it with graphprune.prune_module (a
physically smaller nn.Module plus its plan), fine-tunes the pruned copy with knowledge
distillation from the dense one, and prints the three test accuracies and the sizes.
Needs torch and scikit-learn (`pip install scikit-learn`); runs in seconds on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import time


def load_data(seed: int = 0):
    """Digits as (N, 1, 8, 8) float tensors scaled to [0, 1], 80/20 stratified split."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=digits.target)
    return (x[tr], y[tr]), (x[te], y[te])


def make_cnn(width: int = 32):
    from torch import nn

    w = width
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        block(1, w), block(w, w), nn.MaxPool2d(2),  # 4x4
        block(w, 2 * w), nn.MaxPool2d(2),           # 2x2
        nn.Flatten(), nn.Linear(2 * w * 2 * 2, 2 * w), nn.ReLU(), nn.Linear(2 * w, 10),
    )


def loader(x, y, batch_size: int, seed: int, shuffle: bool = True):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=g)


def accuracy(model, x, y) -> float:
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item() * 100
    model.train(was)
    return acc


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run(ratio: float = 0.6, importance: str = "l2", dense_epochs: int = 12, ft_epochs: int = 12,
        kd_alpha: float = 0.7, kd_temperature: float = 4.0, seed: int = 0, width: int = 32,
        verbose: bool = True) -> dict:
    """The whole example; returns accuracies (percent), parameter counts and timings.
    Runs single-threaded: reproducible to the last digit, and on a busy machine faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(ratio, importance, dense_epochs, ft_epochs, kd_alpha, kd_temperature, seed, width, verbose)
    finally:
        torch.set_num_threads(threads)


def _run(ratio, importance, dense_epochs, ft_epochs, kd_alpha, kd_temperature, seed, width, verbose) -> dict:
    import torch

    import graphprune as gp

    torch.manual_seed(seed)
    (xtr, ytr), (xte, yte) = load_data(seed)
    t0 = time.perf_counter()
    dense = make_cnn(width)
    gp.finetune(dense, loader(xtr, ytr, 64, seed), epochs=dense_epochs, lr=3e-3)  # plain training: no teacher
    dense_acc = accuracy(dense, xte, yte)
    t1 = time.perf_counter()

    extra = {}
    if importance == "taylor":
        extra = dict(loss_fn=torch.nn.functional.cross_entropy, data=loader(xtr, ytr, 128, seed), max_batches=4)
    pruned, plan = gp.prune_module(dense, xtr[:8], ratio=ratio, importance=importance, **extra)
    pruned_acc = accuracy(pruned, xte, yte)
    t2 = time.perf_counter()

    torch.manual_seed(seed + 1)
    gp.finetune(pruned, loader(xtr, ytr, 64, seed + 1), epochs=ft_epochs, lr=2e-3, teacher=dense,
                kd_alpha=kd_alpha, kd_temperature=kd_temperature)
    ft_acc = accuracy(pruned, xte, yte)
    t3 = time.perf_counter()
    out = {"dense_acc": dense_acc, "pruned_acc": pruned_acc, "finetuned_acc": ft_acc,
           "dense_params": n_params(dense), "pruned_params": n_params(pruned), "groups": len(plan.groups),
           "seconds": {"train": t1 - t0, "prune": t2 - t1, "finetune": t3 - t2}}
    if verbose:
        print(f"dense:                {dense_acc:6.2f}%  {out['dense_params']:7d} params  ({t1 - t0:.1f}s)")
        print(f"pruned ({ratio:.0%}, {importance}): {pruned_acc:6.2f}%  {out['pruned_params']:7d} params  "
              f"({len(plan.groups)} groups, {t2 - t1:.1f}s)")
        print(f"fine-tuned with KD:   {ft_acc:6.2f}%  ({t3 - t2:.1f}s)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.6)
    p.add_argument("--importance", default="l2", help="l1, l2, random or taylor")
    p.add_argument("--epochs", type=int, default=12, help="dense training and fine-tuning epochs")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.ratio, a.importance, a.epochs, a.epochs, seed=a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
