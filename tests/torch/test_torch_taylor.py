"""Group first-order Taylor importance on the torch path (importance="taylor")."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from scipy.stats import spearmanr  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.errors import UsageError  # noqa: E402
from graphprune.frontends.torch import capture  # noqa: E402
from graphprune.importance import CRITERIA, group_scores  # noqa: E402
from graphprune.plan import build_plan  # noqa: E402
from graphprune.torchprune.taylor import taylor_scores  # noqa: E402
from gp_torch_cases import check_result  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "samples"))
import finetune_digits as digits  # noqa: E402

pytestmark = pytest.mark.torch
CE = torch.nn.functional.cross_entropy


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    (xtr, ytr), _ = digits.load_data()
    model = digits.make_cnn(8)
    gp.finetune(model, digits.loader(xtr, ytr, 64, 0), epochs=2, lr=3e-3)
    yield model.eval(), xtr, ytr
    torch.set_num_threads(threads)


def test_taylor_ranks_atoms_like_the_real_loss_change(trained):
    """Removing one atom at a time: the first-order estimate must rank atoms like the
    actual loss increase (it sums w·dL/dw over every tensor of the group's slots)."""
    model, x, y = trained
    dg = gp.analyze(capture(model, x[:4]).model)
    scores = taylor_scores(model, dg, CE, [(x, y)])
    with torch.no_grad():
        base = CE(model(x), y).item()
    for g in dg.prunable_groups:
        actual = []
        for a in range(g.num_atoms):
            masked = gp.masked_module(model, build_plan(dg, {g.id: [a]}))
            with torch.no_grad():
                actual.append(abs(CE(masked(x), y).item() - base))
        rho = spearmanr(scores[g.id], actual).correlation
        assert rho > 0.5, (g.name, rho)


def test_prune_module_with_taylor(trained):
    model, x, y = trained
    for p in model.parameters():
        p.grad = None
    data = digits.loader(x, y, 128, 0)
    result = gp.prune_module(model, x[:4], ratio=0.5, importance="taylor", loss_fn=CE, data=data, max_batches=3)
    check_result(model, (x[:4],), result, min_removed_groups=4)
    assert result.plan.settings["criterion"] == "taylor"
    assert all("scores" in g for g in result.plan.groups)
    assert all(p.grad is None for p in model.parameters())  # Taylor used autograd.grad: .grad untouched


def test_criteria_table_stays_usable(trained):
    model, x, _ = trained
    dg = gp.analyze(capture(model, x[:4]).model)
    assert "taylor_group" in CRITERIA
    with pytest.raises(UsageError, match="needs gradients"):
        group_scores(dg, "taylor_group")  # the ONNX path has no loss: a clear error
    for name in ("l1", "l2", "random"):  # the others are untouched
        s = group_scores(dg, name)
        assert set(s) == {g.id for g in dg.prunable_groups}
    with pytest.raises(UsageError, match="loss_fn and data"):
        gp.prune_module(model, x[:4], importance="taylor")


def test_taylor_needs_pairs(trained):
    model, x, _ = trained
    with pytest.raises(UsageError, match=r"\(inputs, target\)"):
        gp.prune_module(model, x[:4], importance="taylor", loss_fn=CE, data=[x])
