"""Fine-tuning with distillation recovers a pruned digits CNN to within 1 point of dense."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import graphprune as gp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "samples"))
import finetune_digits as digits  # noqa: E402

pytestmark = pytest.mark.torch


def test_pruned_and_finetuned_within_one_point_of_dense():
    # small budget: width 16, 8 dense epochs, 8 fine-tuning epochs; single thread, seeded
    r = digits.run(ratio=0.5, dense_epochs=8, ft_epochs=8, width=16, seed=0, verbose=False)
    assert r["dense_acc"] > 95
    assert r["pruned_params"] < 0.35 * r["dense_params"]  # half the channels: about a quarter of the weights
    assert r["pruned_acc"] < r["dense_acc"] - 5  # pruning alone costs accuracy ...
    assert r["finetuned_acc"] >= r["dense_acc"] - 1.0, r  # ... fine-tuning with KD wins it back
    assert sum(r["seconds"].values()) < 60


def test_finetune_options_and_errors():
    from graphprune.errors import UsageError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 3)).train()
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
    model.eval()
    hist = gp.finetune(model, data, epochs=3, lr=1e-2, teacher=teacher, kd_alpha=0.5, optimizer="sgd")
    assert len(hist) == 3 and hist[-1] < hist[0]
    assert not model.training and teacher.training  # modes given back
    with pytest.raises(UsageError):
        gp.finetune(model, data, lr=0)
    with pytest.raises(UsageError):
        gp.finetune(model, data, kd_alpha=2.0)
    # prune_module's result object trains its module (it was an AttributeError: no .parameters)
    result = gp.prune_module(model, torch.randn(2, 4), ratio=0.5)
    before = [p.detach().clone() for p in result.module.parameters()]
    assert len(gp.finetune(result, data, epochs=1, lr=1e-2)) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, result.module.parameters(), strict=True))
    # bad numbers and batches are said in words (TypeErrors and ValueErrors inside the loop, or a
    # reported loss of 0.0 for max_batches=0); a prune_module result is a teacher too
    for kw, said in (({"epochs": 1.5}, "epochs must be an integer"), ({"epochs": "2"}, "epochs must be an integer"),
                     ({"max_batches": 0}, "max_batches must be an integer >= 1")):
        with pytest.raises(UsageError, match=said):
            gp.finetune(model, data, **kw)
    with pytest.raises(UsageError, match=r"\(inputs, target\) pair"):
        gp.finetune(model, [torch.randn(16, 4)])
    assert len(gp.finetune(model, data, epochs=1, teacher=result)) == 1


@pytest.mark.slow
def test_sample_script_runs():
    out = subprocess.run([sys.executable, str(ROOT / "samples" / "finetune_digits.py"), "--epochs", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fine-tuned with KD" in out.stdout
