"""Python API: analyse/prune/save/check, custom rules and custom passes, pipelines."""
from __future__ import annotations

import numpy as np
import pytest

import graphprune as gp
from graphprune.analysis.dependency import RuleRegistry
from graphprune.errors import UsageError
from graphprune.passes import PASSES, Pass, PassContext, PassManager, register_pass
from helpers import prune_and_check
from samples.api_example import shrink_rule
from samples.make_samples import Builder


def shrink_model():
    b = Builder(5)
    x = b.op("Relu", [b.conv("input", 3, 8)])
    y = b.op("Shrink", [x], lambd=0.1, bias=0.05)
    return b.model([1, 3, 8, 8], b.conv(y, 8, 4, k=1), [1, 4, 8, 8], "shrink")


def test_custom_rule_unfreezes_an_op_and_keeps_the_oracle():
    m = shrink_model()
    dg = gp.analyze(gp.load(m.SerializeToString()))
    assert not dg.prunable_groups and dg.diagnostics[0].op == "Shrink"
    gp.RULES.add("", "Shrink", shrink_rule, family="custom")
    try:
        prune_and_check(m, seed=3)
        with pytest.raises(ValueError, match="duplicate channel rule"):
            gp.RULES.add("", "Shrink", shrink_rule, since=13)
    finally:
        gp.RULES.remove("", "Shrink")


def test_registry_rejects_overlapping_opsets_but_allows_disjoint():
    reg = RuleRegistry()
    reg.add("", "Foo", shrink_rule, since=1, until=12)
    reg.add("", "Foo", shrink_rule, since=13)
    assert reg.lookup("", "Foo", 11).until == 12 and reg.lookup("", "Foo", 18).since == 13
    with pytest.raises(ValueError):
        reg.add("", "Foo", shrink_rule, since=10, until=14)


def test_custom_pass_in_textual_pipeline(samples_dir):
    calls = []

    @register_pass
    class CountNodes(Pass):
        name = "count-nodes-test"

        def run(self, model, ctx):
            calls.append((len(model.graph), self.options))
            return False

    try:
        model = gp.load(samples_dir / "tiny_resnet.onnx")
        n0 = len(model.graph)
        ctx = PassContext()
        pm = PassManager.parse("count-nodes-test{tag=a,xs=[1,2]},prune-channels{ratio=0.5},dce,count-nodes-test")
        pm.run(model, ctx)
        assert calls[0] == (n0, {"tag": "a", "xs": [1, 2]})
        assert ctx.results["plan"].tensors
        assert [t[0] for t in pm.timings] == ["count-nodes-test", "prune-channels", "dce", "count-nodes-test"]
    finally:
        PASSES.pop("count-nodes-test")


def test_pipeline_errors_are_usage_errors():
    with pytest.raises(UsageError, match="unknown pass"):
        PassManager.parse("no-such-pass")
    with pytest.raises(UsageError):
        PassManager.parse("prune-channels{ratio}")
    with pytest.raises(ValueError):
        register_pass(type("Bad", (Pass,), {"name": "Bad_Name"}))


def test_pass_that_breaks_the_graph_is_named(samples_dir):
    from graphprune.errors import PassError

    @register_pass
    class Breaker(Pass):
        name = "break-graph-test"

        def run(self, model, ctx):
            model.graph.remove(list(model.graph)[0], safe=False)
            return True

    try:
        with pytest.raises(PassError, match="break-graph-test"):
            PassManager.parse("break-graph-test").run(gp.load(samples_dir / "tiny_resnet.onnx"))
    finally:
        PASSES.pop("break-graph-test")


def test_prune_api_roundtrip(samples_dir, tmp_path):
    model = gp.load(samples_dir / "tiny_mobilenet.onnx")
    res = gp.prune(model, 0.5, round_to=4)
    assert res.changed
    gp.save(res.model, tmp_path / "s.onnx")
    res.plan.save(tmp_path / "s.plan.json")
    assert gp.check(samples_dir / "tiny_mobilenet.onnx", tmp_path / "s.onnx", tmp_path / "s.plan.json").ok


def test_run_prune_is_the_prune_verb_from_python(samples_dir, tmp_path):
    """The README's gp.run_prune example: calibration data, a MAC target, the search, the
    oracle and the quality gate, and the model + plan written; and the hint a data-aware
    criterion gives a gp.prune caller points there."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    src = samples_dir / "tiny_resnet.onnx"
    with pytest.raises(UsageError) as err:
        gp.prune(gp.load(src), 0.3, criterion="wanda")
    assert "gp.run_prune" in (err.value.hint or "")
    out = gp.run_prune(src, gp.PruneOptions(calib=str(tmp_path / "calib.npz"), calib_batch=1, search_budget=2,
                                            allocation={"target_macs": 0.7}), out=tmp_path / "small.onnx")
    assert out.search["chosen"] in [c["name"] for c in out.search["candidates"]]
    assert out.oracle.ok and out.fidelity["mean_cosine"] > 0.9
    assert out.after.macs <= 0.7 * out.before.macs * 1.02
    assert (tmp_path / "small.plan.json").exists()
    # the oracle ran before the repair; the repaired file is not the masked original, and says why
    later = gp.check(src, tmp_path / "small.onnx")
    assert not later.ok and "repair" in later.changed_after_pruning


def test_round_to_keeps_multiples(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    dg = gp.analyze(model)
    widths = {g.id: g.num_atoms for g in dg.prunable_groups}
    res = gp.prune(model, 0.3, round_to=8)
    for g in res.plan.groups:
        kept = widths[g["id"]] - len(g["removed_atoms"])
        assert kept % 8 == 0 or widths[g["id"]] < 8, (g["name"], kept)


def test_ignore_list_protects_groups(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    dg = gp.analyze(model, ignore=["Gemm.*"])
    ignored = [g for g in dg.groups if g.ignored]
    assert ignored
    res = gp.prune(gp.load(samples_dir / "tiny_resnet.onnx"), 0.5, ignore=["Gemm.*"])
    assert all(g["name"] not in {i.name for i in ignored} for g in res.plan.groups)


def test_an_ignore_pattern_that_matches_nothing_is_refused(samples_dir, tmp_path, capsys):
    """A typo in --ignore pruned the layer it was meant to keep, in silence."""
    from graphprune.cli.main import main
    from graphprune.errors import UsageError

    src = samples_dir / "tiny_resnet.onnx"
    with pytest.raises(UsageError, match="'Gmm.*' matches no tensor or node"):
        gp.analyze(gp.load(src), ignore=["Gemm.*", "Gmm.*"])
    with pytest.raises(UsageError, match="matches no tensor or node"):
        gp.prune(gp.load(src), 0.5, ignore=["Gmm.*"])
    assert main(["prune", str(src), "--ignore", "Gmm", "-o", str(tmp_path / "p.onnx")]) == 2
    assert "matches no tensor or node" in capsys.readouterr().err and not (tmp_path / "p.onnx").exists()
    # a pattern that finds only a frozen group (the graph input's) keeps nothing new, but is no typo
    assert gp.analyze(gp.load(src), ignore=["^input$"]).groups
    # --protect and --layer-ratio patterns too (they were accepted and matched nothing, silently)
    for flag, value in (("--protect", "NoSuchLayer"), ("--layer-ratio", "NoSuch=0.1")):
        assert main(["prune", str(src), flag, value, "-o", str(tmp_path / "p.onnx"), "--no-bench"]) == 2
        assert "matches no tensor or node" in capsys.readouterr().err and not (tmp_path / "p.onnx").exists()
    assert main(["prune", str(src), "--protect", "Conv", "-o", str(tmp_path / "p.onnx"), "--no-bench"]) == 0


def test_never_prunes_a_group_to_zero(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    res = gp.prune(model, 0.99)
    for g in res.plan.groups:
        assert len(g["removed_atoms"]) < g["atoms"]


def test_ratio_out_of_range(samples_dir):
    with pytest.raises(UsageError):
        gp.prune(gp.load(samples_dir / "tiny_resnet.onnx"), 1.0)


def test_criteria_differ_and_random_is_seeded(samples_dir):
    plans = {}
    for crit in ("l1", "l2", "random"):
        plans[crit] = gp.prune(gp.load(samples_dir / "tiny_resnet.onnx"), 0.5, criterion=crit).plan.tensors
    assert plans["random"] != plans["l2"]
    again = gp.prune(gp.load(samples_dir / "tiny_resnet.onnx"), 0.5, criterion="random").plan.tensors
    assert again == plans["random"]
    with pytest.raises(UsageError):
        gp.prune(gp.load(samples_dir / "tiny_resnet.onnx"), 0.5, criterion="nope")


def test_magnitude_removes_the_smallest_channels():
    """Hand-computable: the two conv output channels with tiny weights are removed."""
    from samples.make_samples import Builder as B

    b = B(0)
    w1 = np.ones((4, 3, 1, 1), np.float32)
    w1[1] *= 0.01
    w1[3] *= 0.02
    h = b.op("Relu", [b.op("Conv", ["input", b.const(w1)], kernel_shape=[1, 1])])
    w2 = np.ones((2, 4, 1, 1), np.float32)
    out = b.op("Conv", [h, b.const(w2)], kernel_shape=[1, 1])
    m = b.model([1, 3, 4, 4], out, [1, 2, 4, 4], "mag")
    res = gp.prune(gp.load(m.SerializeToString()), 0.5)
    assert res.plan.groups[0]["removed_atoms"] == [1, 3]


def test_a_prune_result_saves_and_checks_as_its_model_and_plan(samples_dir, tmp_path):
    """gp.save(gp.prune(...)) and gp.check(path, result): what a user writes first; save
    refused a PruneResult ("must be an onnx_ir Model") and check failed looking for a plan
    file. Checking the model prune changed in place against itself is one clear error,
    not a PlanError about an index out of range."""
    src = samples_dir / "tiny_resnet.onnx"
    model = gp.load(src)
    res = gp.prune(model, 0.5, round_to=4)
    gp.save(res, tmp_path / "s.onnx")
    assert gp.load(tmp_path / "s.onnx").graph.num_nodes() == res.model.graph.num_nodes()
    assert gp.check(src, res).ok
    assert not gp.check(src, res, plan=gp.Plan.from_json({**res.plan.to_json(), "tensors": []})).ok
    with pytest.raises(UsageError, match="the original and the pruned model are the same object"):
        gp.check(model, res)


def test_a_saved_prune_result_checks_against_the_plan_written_beside_it(samples_dir, tmp_path):
    """gp.save(result, path) wrote the model only: gp.check(original, path) then said the
    file 'records no plan digest ... give --plan' (new-user probe). It writes the pair, as
    the CLI does, and never over someone else's file at the plan's name."""
    src = samples_dir / "tiny_resnet.onnx"
    res = gp.prune(gp.load(src), 0.5, round_to=4)
    gp.save(res, tmp_path / "s.onnx")
    assert gp.Plan.load(tmp_path / "s.plan.json").to_json() == res.plan.to_json()
    assert gp.check(src, tmp_path / "s.onnx").ok
    other = gp.prune(gp.load(src), 0.5, round_to=4, criterion="random", seed=1)
    assert not gp.check(src, tmp_path / "s.onnx", plan=other.plan).ok  # the digest pairs them
    (tmp_path / "t.plan.json").write_text("my notes")
    with pytest.raises(UsageError, match="was not written by graphprune"):
        gp.save(res, tmp_path / "t.onnx")
    assert not (tmp_path / "t.onnx").exists() and (tmp_path / "t.plan.json").read_text() == "my notes"


def test_api_model_arguments_say_what_is_wrong(samples_dir, tmp_path):
    """A path where a model is expected is loaded (the file is not changed); None or a
    folder is one clear error of graphprune's, not an AttributeError from deep inside."""
    from graphprune.errors import ArgumentTypeError

    src = samples_dir / "tiny_resnet.onnx"
    before = src.read_bytes()
    res = gp.prune(str(src), 0.5)
    assert res.changed and res.plan.tensors and src.read_bytes() == before
    assert gp.analyze(src).prunable_groups
    with pytest.raises(ArgumentTypeError, match="graphprune.analyze: model must be"):
        gp.analyze(None)
    with pytest.raises(TypeError, match="graphprune.prune: model must be"):
        gp.prune(None)

    class Module:  # what a torch user passes (named_modules): gp.load dumped its repr as a file name
        def named_modules(self):
            return iter(())

    with pytest.raises(ArgumentTypeError, match="got Module \\(an nn.Module: graphprune.prune_module prunes it\\)"):
        gp.load(Module())
    (tmp_path / "folder").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        gp.save(res.model, tmp_path / "folder")
    assert list((tmp_path / "folder").iterdir()) == [] and not list(tmp_path.glob(".*"))


def test_compile_names_a_misspelt_option_and_writes_nothing(samples_dir, tmp_path):
    """gp.compile forwards **options to CompileOptions: a misspelt one is a UsageError (and a
    TypeError) naming it and the closest option, raised before anything runs or is written."""
    from graphprune.errors import ArgumentTypeError

    with pytest.raises(ArgumentTypeError, match="unknown option\\(s\\) 'calibb'") as err:
        gp.compile(samples_dir / "tiny_resnet.onnx", target="x86", out=tmp_path / "o", calibb="x.npz")
    assert err.value.hint == "'calibb': did you mean 'calib'?"
    assert isinstance(err.value, TypeError) and not list(tmp_path.iterdir())


def test_run_prune_never_writes_over_what_it_reads(samples_dir, tmp_path):
    """The CLI refused -o on an input; gp.run_prune wrote over the model itself, the --plan it
    replayed and the calibration file. It now refuses them before any work (UsageError), and
    a dict where PruneOptions belong is named (it was an AttributeError)."""
    import hashlib

    import numpy as np

    from graphprune.errors import ArgumentTypeError

    src = tmp_path / "m.onnx"
    src.write_bytes((samples_dir / "tiny_resnet.onnx").read_bytes())
    np.savez(tmp_path / "c.npz", input=np.zeros((2, 3, 16, 16), np.float32))
    gp.run_prune(str(src), gp.PruneOptions(ratio=0.3), out=str(tmp_path / "a.onnx"))
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    cases = [(gp.PruneOptions(ratio=0.3), src, "would overwrite the input model"),
             (gp.PruneOptions(plan=str(tmp_path / "a.plan.json")), tmp_path / "a.onnx", "would overwrite the plan"),
             (gp.PruneOptions(calib=str(tmp_path / "c.npz"), max_drop=None), tmp_path / "c.npz",
              "would overwrite the --calib data")]
    for opts, out, says in cases:
        with pytest.raises(UsageError, match=says):
            gp.run_prune(str(src), opts, out=str(out))
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == digest
    with pytest.raises(ArgumentTypeError, match="opts must be a PruneOptions, got dict"):
        gp.run_prune(str(src), {"ratio": 0.3})


def test_one_ignore_pattern_given_as_a_string_is_one_pattern(samples_dir):
    """ignore="Gemm137" was split into seven one-character patterns: everything protected,
    nothing pruned, no word (or "'*' is not a valid regular expression" for "Conv.*")."""
    src = samples_dir / "tiny_resnet.onnx"
    as_list = gp.prune(src, ratio=0.5, round_to=1, ignore=["Gemm137"])
    as_str = gp.prune(src, ratio=0.5, round_to=1, ignore="Gemm137")
    assert as_str.plan.tensors == as_list.plan.tensors and as_str.plan.tensors
    assert gp.prune(src, ratio=0.5, round_to=1, ignore="Conv.*").changed is not None  # a valid regex, not '*'
    assert gp.PruneOptions(ignore="Gemm137", blocks="Add1").ignore == ["Gemm137"]
    sp = gp.sparsify(src, 0.5, ignore="Conv4")
    assert sp.overall > 0 and sp.tensors  # only the layers matching Conv4 protected


def test_gp_compile_returns_its_report_and_records_the_call(samples_dir, tmp_path):
    """gp.compile's report said `graphprune compile m.onnx` (which builds for x86 at the
    default ratio, elsewhere) and the dict it returned lacked the file's schema and listing;
    an in-memory model was a bare TypeError."""
    import json

    from graphprune.errors import ArgumentTypeError

    rep = gp.compile(samples_dir / "tiny_resnet.onnx", target="arm", out=tmp_path / "c", ratio=0.4)
    written = json.loads((tmp_path / "c" / "report.json").read_text())
    assert rep["command"] == written["command"] == [
        f"gp.compile({str(samples_dir / 'tiny_resnet.onnx')!r}, target='arm', out={str(tmp_path / 'c')!r}, ratio=0.4)"]
    assert rep["schema"] == written["schema"] and rep["outputs"] == written["outputs"]
    with pytest.raises(ArgumentTypeError, match="model_path must be a path"):
        gp.compile(gp.load(samples_dir / "tiny_resnet.onnx"), target="x86")


def test_check_refuses_a_tolerance_that_judges_nothing_and_takes_inputs_as_given(samples_dir):
    """gp.check(..., rtol=inf) passed a model against another run's plan (its worst error
    0.93 of the output scale); NaN and negative tolerances were taken silently. An input
    array given alone failed with numpy's 'truth value ... ambiguous'."""
    src = samples_dir / "tiny_resnet.onnx"
    a = gp.prune(gp.load(src), 0.3, round_to=4, criterion="l2")
    b = gp.prune(gp.load(src), 0.3, round_to=4, criterion="random", seed=3)
    assert not gp.check(src, a.model, b.plan).ok
    for rtol in (float("inf"), float("nan"), -1.0, "0.1"):
        with pytest.raises(UsageError, match="rtol must be a finite number >= 0"):
            gp.check(src, a.model, b.plan, rtol=rtol)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    for given in (x, {"input": x}, [x], [{"input": x}]):
        res = gp.check(src, a, inputs=given, n_random=0)
        assert res.ok and "1 input set(s)" in res.summary()
    with pytest.raises(UsageError, match="expected a list of feed dicts"):
        gp.check(src, a, inputs="x.npz")


def test_the_api_checks_what_the_cli_checks_before_any_work(samples_dir, tmp_path):
    """gp.run_prune(out='out/m') wrote an extensionless model file, and gp.compile(
    min_speedup=-1) compiled and wrote a folder; the CLI refuses both (new-user probe)."""
    src = samples_dir / "tiny_resnet.onnx"
    with pytest.raises(UsageError, match="should end in .onnx"):
        gp.run_prune(src, gp.PruneOptions(ratio=0.3), out=tmp_path / "m")
    for bad in (-1, 0, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="min_speedup must be a finite number > 0"):
            gp.compile(src, target="x86", out=tmp_path / "c", min_speedup=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
