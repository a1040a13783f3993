"""plan-channels decides and never changes the model; apply-plan applies and never
decides; prune-channels is the two in one pass. The analysis cache is per model and
refreshed after a change, and a dependency graph of a changed model is refused."""
from __future__ import annotations

import onnx_ir as ir
import pytest

import graphprune as gp
from graphprune.analysis.dependency import DependencyGraph
from graphprune.errors import PlanError, StaleAnalysisError, UsageError
from graphprune.ir.serialize import to_proto
from graphprune.passes import Pass, PassContext, PassManager
from graphprune.plan import build_plan, removed_by_slot
from graphprune.surgery import apply_removal


def _bytes(model: ir.Model) -> bytes:
    return to_proto(model).SerializeToString()


def _some_selection(dg: DependencyGraph) -> dict:
    g = next(g for g in dg.prunable_groups if g.num_atoms >= 2)
    return {g.id: [0]}


class _Touch(Pass):
    """Not registered: a pass that changes the model (renames a node)."""

    name = "touch"

    def run(self, model, ctx):
        node = next(iter(model.graph))
        node.name = (node.name or "n") + "_touched"
        return True


@pytest.fixture()
def resnet(samples_dir):
    return gp.load(samples_dir / "tiny_resnet.onnx")


# ---- the dependency graph refuses a changed model ---------------------------------------------

def test_stale_dependency_graph_is_refused_after_surgery(resnet):
    dg = DependencyGraph(resnet)
    sel = _some_selection(dg)
    apply_removal(resnet, dg, removed_by_slot(dg, sel))
    with pytest.raises(StaleAnalysisError, match="stale"):
        build_plan(dg, sel)
    with pytest.raises(StaleAnalysisError):
        apply_removal(resnet, dg, {})
    assert issubclass(StaleAnalysisError, PlanError)  # the CLI reports it as a plan problem
    DependencyGraph(resnet).check_current(resnet)  # a fresh analysis is fine


def test_stale_dependency_graph_is_refused_after_a_changing_pass(resnet):
    dg = DependencyGraph(resnet)
    PassManager([_Touch()]).run(resnet)
    with pytest.raises(StaleAnalysisError):
        removed_by_slot(dg, _some_selection(dg))


def test_dependency_graph_of_another_model_is_refused(resnet, samples_dir):
    dg = DependencyGraph(resnet)
    other = gp.load(samples_dir / "tiny_resnet.onnx")
    with pytest.raises(StaleAnalysisError, match="another model"):
        apply_removal(other, dg, removed_by_slot(dg, _some_selection(dg)))


# ---- the analysis cache -------------------------------------------------------------------------

def test_analysis_cache_is_per_model_and_refreshed_after_a_change(resnet, samples_dir):
    ctx = PassContext()
    calls = []

    def compute(model):
        calls.append(model)
        return DependencyGraph(model)

    a = ctx.analysis("dependency", resnet, lambda: compute(resnet))
    assert ctx.analysis("dependency", resnet, lambda: compute(resnet)) is a  # unchanged: same object
    other = gp.load(samples_dir / "tiny_resnet.onnx")
    b = ctx.analysis("dependency", other, lambda: compute(other))
    assert b is not a and b.model is other  # keyed by the model, not only the name
    PassManager([_Touch()]).run(resnet, ctx)
    c = ctx.analysis("dependency", resnet, lambda: compute(resnet))
    assert c is not a and c.model is resnet
    c.check_current(resnet)
    assert ctx.analysis("dependency", other, lambda: compute(other)) is b  # the other model did not change
    assert len(calls) == 3


def test_analysis_cache_sees_surgery_outside_a_pass_manager(resnet):
    ctx = PassContext()
    dg = ctx.analysis("dependency", resnet, lambda: DependencyGraph(resnet))
    apply_removal(resnet, dg, removed_by_slot(dg, _some_selection(dg)))
    assert ctx.analysis("dependency", resnet, lambda: DependencyGraph(resnet)) is not dg


# ---- plan-channels / apply-plan -----------------------------------------------------------------

def test_plan_channels_decides_without_changing_the_model(resnet):
    before = _bytes(resnet)
    ctx = PassManager.parse("plan-channels{ratio=0.5,round_to=2}").run(resnet)
    assert _bytes(resnet) == before  # bit-identical
    r = ctx.results
    assert r["selection"] and any(len(a) for a in r["selection"].values())
    assert set(r["scores"]) >= set(r["selection"])
    assert r["planned_options"] == {"ratio": 0.5, "round_to": 2}
    assert "allocation" in r and "plan" not in r


def test_apply_plan_without_a_plan_fails_clearly(resnet):
    with pytest.raises(UsageError, match="apply-plan: nothing to apply") as exc:
        PassManager.parse("apply-plan").run(resnet)
    assert "plan-channels" in exc.value.hint


def test_apply_plan_refuses_a_selection_planned_on_an_older_model(resnet):
    with pytest.raises(StaleAnalysisError):
        PassManager([*PassManager.parse("plan-channels").passes, _Touch(),
                     *PassManager.parse("apply-plan").passes]).run(resnet)


def test_apply_plan_takes_no_options():
    with pytest.raises(UsageError, match="pass apply-plan: unknown option ratio"):
        PassManager.parse("apply-plan{ratio=0.3}")


def test_prune_channels_keeps_its_own_name_in_option_errors():
    with pytest.raises(UsageError, match="pass prune-channels: unknown option"):
        PassManager.parse("prune-channels{ratoi=0.3}")
    with pytest.raises(UsageError, match="plan-channels: ratio must be"):
        PassManager.parse("plan-channels{ratio=1.5}")


def test_the_passes_are_listed():
    from graphprune.passes import PASSES

    assert {"plan-channels", "apply-plan", "prune-channels"} <= set(PASSES)
    specs, open_ = PASSES["plan-channels"].option_specs()
    assert not open_ and specs.keys() == PASSES["prune-channels"].option_specs()[0].keys()
    assert PASSES["apply-plan"].option_specs() == ({}, False)


def _same_result(load, options: str) -> None:
    one, two = load(), load()
    ctx1 = PassManager.parse(f"prune-channels{{{options}}},dce").run(one)
    ctx2 = PassManager.parse(f"plan-channels{{{options}}},apply-plan,dce").run(two)
    p1, p2 = ctx1.results["plan"], ctx2.results["plan"]
    assert p1.tensors, "nothing was pruned: the comparison would be vacuous"
    assert p1.to_json() == p2.to_json()  # same groups, scores, settings (allocation report included)
    assert _bytes(one) == _bytes(two)


@pytest.mark.parametrize("options", ["ratio=0.5", "ratio=0.4,round_to=2,criterion=l1,allocation=global"])
def test_prune_channels_is_plan_then_apply_on_tiny_resnet(samples_dir, options):
    _same_result(lambda: gp.load(samples_dir / "tiny_resnet.onnx"), options)


@pytest.mark.torch
def test_prune_channels_is_plan_then_apply_on_bert(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from zoo.hf_models import export_hf

    src = export_hf("bert", str(tmp_path / "bert.onnx"), dynamo=False)
    _same_result(lambda: gp.load(src), "ratio=0.5")


def test_iterative_prune_channels_decides_anew_on_the_pruned_model(resnet):
    ctx = PassManager.parse("prune-channels{ratio=0.3},prune-channels{ratio=0.3}").run(resnet)
    assert "selection" not in ctx.results and ctx.results["plan"].tensors
