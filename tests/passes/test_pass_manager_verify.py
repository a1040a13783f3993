"""The pass manager verifies the IR after every pass and blames the right one, naming the
pipeline and what ran before it; the test suite's autouse fixture keeps that on."""
from __future__ import annotations

import contextlib

import pytest

import graphprune as gp
from graphprune.errors import PassError, VerificationError
from graphprune.passes import PASSES, Pass, PassContext, PassManager, register_pass
from graphprune.passes.cleanup.dce import DeadCodeElimination


@contextlib.contextmanager
def registered(*classes):
    for cls in classes:
        register_pass(cls)
    try:
        yield
    finally:
        for cls in classes:
            PASSES.pop(cls.name, None)


class Noop(Pass):
    name = "noop-test"

    def run(self, model, ctx):
        return False


class SilentBreaker(Pass):
    """Drops the first node but reports no change: the old manager verified only on change."""

    name = "silent-break-test"

    def run(self, model, ctx):
        model.graph.remove(next(iter(model.graph)), safe=False)
        return False


class Crasher(Pass):
    name = "crash-test"

    def run(self, model, ctx):
        raise KeyError("boom")


def test_a_pass_that_breaks_the_ir_but_reports_no_change_is_caught(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    first = next(iter(model.graph))
    with registered(Noop, SilentBreaker), pytest.raises(PassError) as info:
        PassManager.parse("noop-test,dce,silent-break-test,noop-test").run(model)
    err = info.value
    assert err.pass_name == "silent-break-test"
    assert err.pipeline == "noop-test,dce,silent-break-test,noop-test"
    assert err.ran_before == ("noop-test", "dce")
    assert err.violations and {v.kind for v in err.violations} == {"dangling-input"}
    assert err.node == err.violations[0].node
    msg = str(err)
    assert msg.startswith("pass silent-break-test left an invalid IR "
                          "(pipeline 'noop-test,dce,silent-break-test,noop-test'; ran before it: noop-test, dce)")
    assert first.outputs[0].name in msg  # the value left dangling


def test_a_crashing_pass_names_pipeline_and_predecessors(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    with registered(Noop, Crasher), pytest.raises(PassError) as info:
        PassManager.parse("noop-test,crash-test").run(model)
    err = info.value
    assert (err.pass_name, err.pipeline, err.ran_before) == ("crash-test", "noop-test,crash-test", ("noop-test",))
    assert str(err) == ("pass crash-test failed (pipeline 'noop-test,crash-test'; ran before it: noop-test): "
                        "KeyError: 'boom'")
    assert isinstance(err.__cause__, KeyError)


def test_an_invalid_input_is_not_blamed_on_the_first_pass(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    model.graph.remove(next(iter(model.graph)), safe=False)
    with registered(Noop), pytest.raises(VerificationError, match="input of pipeline 'noop-test'") as info:
        PassManager.parse("noop-test").run(model)
    assert not isinstance(info.value, PassError)


def test_a_clean_pipeline_runs_and_verifies(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    ctx = PassManager.parse("prune-channels{ratio=0.5},dce").run(model, PassContext())
    assert ctx.results["plan"].tensors


# -- the autouse fixture of tests/conftest.py --------------------------------------------


def test_fixture_verifies_even_when_a_manager_is_built_without_verification(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    with registered(SilentBreaker), pytest.raises(PassError, match="silent-break-test"):
        PassManager([SilentBreaker()], verify=False).run(model)


def test_fixture_verifies_a_pass_run_directly(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    nodes = list(model.graph)
    nodes[1].name = nodes[0].name  # a defect dce does not touch
    with pytest.raises(VerificationError, match="after pass dce .run directly") as info:
        DeadCodeElimination().run(model, PassContext())
    assert [v.kind for v in info.value.violations] == ["duplicate-node-name"]


@pytest.mark.no_ir_verify
def test_fixture_can_be_turned_off_for_a_test_that_breaks_the_ir_on_purpose(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    with registered(SilentBreaker):
        PassManager([SilentBreaker()], verify=False).run(model)
